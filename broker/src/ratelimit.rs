//! Token buckets in memory (per replica), refilled at `rate` per second up to `burst`:
//! - [`RateLimiter`], one bucket per agent: over the limit a tool call or task opening
//!   is refused with 429 `budget_exhausted` and a `Retry-After`, before any work is done;
//! - [`AuthFailureLimiter`], one bucket per client address, drained by failed
//!   authentications: once empty, that address's requests with a credential are refused
//!   with 429 before any signature is checked, so guessing costs the guesser, not us;
//! - [`RegistrationLimiter`], one bucket per address, for OAuth client registration;
//! - [`SignInThrottle`], drained by failed password sign-ins, one bucket per account and
//!   one per address: a password guesser gets a handful of tries per account, however
//!   many addresses it uses, and per address, however many accounts it tries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::error::ApiError;

/// One key's bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated_ms: i64,
}

/// Buckets by key. A rate of 0 turns them off (every take succeeds).
struct Buckets {
    rate: f64,
    burst: f64,
    clock: Clock,
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
}

impl Buckets {
    fn new(rate: u32, burst: u32, clock: Clock) -> Self {
        Self::per_second(f64::from(rate), burst.max(rate), clock)
    }

    fn per_second(rate: f64, burst: u32, clock: Clock) -> Self {
        Buckets {
            rate,
            burst: f64::from(burst.max(1)),
            clock,
            buckets: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }

    /// Refills `key`'s bucket, then takes one token if `take` (else only looks).
    /// `Err(seconds)` says how long until a token is there.
    fn refill_and(&self, key: &str, take: bool) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let bucket = self.buckets.get_with(key.to_string(), || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                updated_ms: now,
            }))
        });
        // A poisoned bucket fails closed: no token.
        let Ok(mut bucket) = bucket.lock() else {
            return Err(1);
        };
        let elapsed = (now - bucket.updated_ms).max(0) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated_ms = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            return Ok(());
        }
        Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
    }

    /// Returns one token to `key`'s bucket (never above the burst).
    fn give_back(&self, key: &str) {
        if let Some(bucket) = self.buckets.get(key)
            && let Ok(mut bucket) = bucket.lock()
        {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }
}

/// The per-agent limiter.
pub struct RateLimiter {
    buckets: Buckets,
}

impl RateLimiter {
    /// `rate` requests per second with bursts of `burst`; a rate of 0 turns it off.
    pub fn new(rate: u32, burst: u32, clock: Clock) -> Self {
        RateLimiter {
            buckets: Buckets::new(rate, burst, clock),
        }
    }

    /// Takes one request from `agent`'s bucket, or refuses with 429.
    pub fn check(&self, agent: &str) -> Result<(), ApiError> {
        self.buckets
            .refill_and(agent, true)
            .map_err(|retry_after_secs| ApiError::RateLimited {
                message: format!(
                    "agent {agent:?} is over its rate limit of {} requests per second",
                    self.buckets.rate
                ),
                retry_after_secs,
            })
    }
}

/// The per-address limiter of failed authentications.
pub struct AuthFailureLimiter {
    buckets: Buckets,
}

impl AuthFailureLimiter {
    /// `rate` failures per second with bursts of 10×; a rate of 0 turns it off.
    pub fn new(rate: u32, clock: Clock) -> Self {
        AuthFailureLimiter {
            buckets: Buckets::new(rate, rate.saturating_mul(10), clock),
        }
    }

    /// Refuses with 429 while `address` has no failures left; takes nothing.
    pub fn admit(&self, address: &str) -> Result<(), ApiError> {
        self.buckets
            .refill_and(address, false)
            .map_err(|retry_after_secs| ApiError::RateLimited {
                message: "too many failed authentications from this address".into(),
                retry_after_secs,
            })
    }

    /// Counts one failed authentication from `address`.
    pub fn record_failure(&self, address: &str) {
        let _ = self.buckets.refill_and(address, true);
    }
}

/// Failed sign-ins per account (5, then one more a minute) and per address (20, then one
/// more every 6 seconds). Per replica, like the other limiters.
pub struct SignInThrottle {
    accounts: Buckets,
    addresses: Buckets,
}

impl SignInThrottle {
    /// The throttle at `clock`'s time.
    pub fn new(clock: Clock) -> Self {
        SignInThrottle {
            accounts: Buckets::per_second(1.0 / 60.0, 5, clock.clone()),
            addresses: Buckets::per_second(1.0 / 6.0, 20, clock),
        }
    }

    /// Takes one try of `account` and one of `address` before the password is checked
    /// (so concurrent attempts cannot all slip past the count), or `Err(seconds to
    /// wait)` while either has none left (then nothing is taken).
    pub fn take(&self, account: &str, address: &str) -> Result<(), u64> {
        self.accounts.refill_and(account, false)?;
        self.addresses.refill_and(address, false)?;
        self.accounts.refill_and(account, true)?;
        if let Err(wait) = self.addresses.refill_and(address, true) {
            self.accounts.give_back(account);
            return Err(wait);
        }
        Ok(())
    }

    /// Returns the tries a successful sign-in took: only failures count.
    pub fn give_back(&self, account: &str, address: &str) {
        self.accounts.give_back(account);
        self.addresses.give_back(address);
    }
}

/// OAuth client registrations per address (20, then one a minute): registering costs
/// storage, and anyone may do it.
pub struct RegistrationLimiter {
    buckets: Buckets,
}

impl RegistrationLimiter {
    /// The limiter at `clock`'s time.
    pub fn new(clock: Clock) -> Self {
        RegistrationLimiter {
            buckets: Buckets::per_second(1.0 / 60.0, 20, clock),
        }
    }

    /// Takes one registration of `address`, or `Err(seconds to wait)`.
    pub fn take(&self, address: &str) -> Result<(), u64> {
        self.buckets.refill_and(address, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let clock = Clock::default();
        let limiter = RateLimiter::new(2, 3, clock.clone());
        for _ in 0..3 {
            limiter.check("a").unwrap();
        }
        let Err(ApiError::RateLimited {
            retry_after_secs, ..
        }) = limiter.check("a")
        else {
            panic!()
        };
        assert_eq!(retry_after_secs, 1);
        limiter.check("b").unwrap();
        clock.advance(Duration::from_millis(600));
        limiter.check("a").unwrap();
        assert!(
            RateLimiter::new(0, 0, clock).check("a").is_ok(),
            "0 turns it off"
        );
    }

    #[test]
    fn sign_in_failures_close_the_account_from_every_address() {
        let clock = Clock::default();
        let throttle = SignInThrottle::new(clock.clone());
        for i in 0..5 {
            throttle.take("alice", &format!("10.0.0.{i}")).unwrap();
        }
        assert!(throttle.take("alice", "10.9.9.9").is_err());
        throttle.take("bob", "10.9.9.9").unwrap();
        throttle.give_back("bob", "10.9.9.9");
        clock.advance(Duration::from_secs(60));
        throttle.take("alice", "10.9.9.9").unwrap();
        // A success gives its try back: signing in often never locks anyone out.
        for _ in 0..10 {
            throttle.take("carol", "10.1.1.1").unwrap();
            throttle.give_back("carol", "10.1.1.1");
        }
    }

    #[test]
    fn failures_close_an_address_and_time_reopens_it() {
        let clock = Clock::default();
        let limiter = AuthFailureLimiter::new(1, clock.clone());
        for _ in 0..10 {
            limiter.admit("10.0.0.1").unwrap();
            limiter.record_failure("10.0.0.1");
        }
        assert!(matches!(
            limiter.admit("10.0.0.1"),
            Err(ApiError::RateLimited { .. })
        ));
        limiter.admit("10.0.0.2").unwrap();
        clock.advance(Duration::from_millis(1000));
        limiter.admit("10.0.0.1").unwrap();
        assert!(AuthFailureLimiter::new(0, clock).admit("x").is_ok());
    }
}
