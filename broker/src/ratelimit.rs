//! Per-agent rate limit: a token bucket per agent, refilled at `rate` requests per second
//! up to `burst`. Over the limit a request is refused with 429 `budget_exhausted` and a
//! `Retry-After`, before any work is done for it. Buckets live in memory (per replica).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::error::ApiError;

/// One agent's bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated_ms: i64,
}

/// The limiter. A `rate` of 0 turns it off.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    clock: Clock,
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
}

impl RateLimiter {
    /// `rate` requests per second per agent, bursts up to `burst`.
    pub fn new(rate: u32, burst: u32, clock: Clock) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(rate).max(1)),
            clock,
            buckets: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }

    /// Takes one request from `agent`'s bucket, or refuses with the time to wait.
    pub fn check(&self, agent: &str) -> Result<(), ApiError> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let bucket = self.buckets.get_with(agent.to_string(), || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                updated_ms: now,
            }))
        });
        let Ok(mut bucket) = bucket.lock() else {
            return Err(ApiError::Unavailable("rate limiter unavailable".into()));
        };
        let elapsed = (now - bucket.updated_ms).max(0) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated_ms = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64;
        Err(ApiError::RateLimited {
            message: format!(
                "agent {agent:?} is over its rate limit of {} requests per second",
                self.rate
            ),
            retry_after_secs: wait,
        })
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
}
