//! Concurrency caps: how many connections, and how many long-held requests (long-polls,
//! event streams), one client address — and all of them together — may hold at once.
//! A slot is given back when its guard drops, so nothing can leak one.
//!
//! Why: a connection cap alone lets anyone who can reach the broker fill it with
//! `?wait=30` long-polls and shut out health checks and revokes. Per-address caps keep
//! one client from taking everything; the overall long-poll cap keeps a reserve of
//! connections for short requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts held slots per address, up to `per_address`, and overall, up to `overall`.
pub struct Slots {
    per_address: usize,
    overall: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_address: HashMap<IpAddr, usize>,
    total: usize,
}

/// One held slot; dropping it gives it back.
pub struct Slot {
    slots: Arc<Slots>,
    address: IpAddr,
}

impl Slots {
    /// Caps of `per_address` per client address and `overall` in all (0: no cap).
    pub fn new(per_address: usize, overall: usize) -> Arc<Slots> {
        Arc::new(Slots {
            per_address: if per_address == 0 {
                usize::MAX
            } else {
                per_address
            },
            overall: if overall == 0 { usize::MAX } else { overall },
            held: Mutex::new(Held::default()),
        })
    }

    /// Takes a slot for `address`, or `None` when it (or everyone) holds the maximum.
    /// IPv6 addresses count per /64: one host usually has a whole /64 to pick from.
    pub fn try_take(self: &Arc<Self>, address: IpAddr) -> Option<Slot> {
        let address = client_of(address);
        let mut held = self.held.lock().ok()?;
        let mine = held.by_address.get(&address).copied().unwrap_or(0);
        if mine >= self.per_address || held.total >= self.overall {
            return None;
        }
        held.by_address.insert(address, mine + 1);
        held.total += 1;
        Some(Slot {
            slots: self.clone(),
            address,
        })
    }

    /// How many slots are held now.
    pub fn held(&self) -> usize {
        self.held.lock().map(|h| h.total).unwrap_or(0)
    }
}

/// The client an address stands for: itself for IPv4, its /64 for IPv6.
fn client_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.slots.held.lock() {
            held.total = held.total.saturating_sub(1);
            if let Some(mine) = held.by_address.get_mut(&self.address) {
                *mine -= 1;
                if *mine == 0 {
                    held.by_address.remove(&self.address);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_address_and_overall_and_slots_come_back() {
        let slots = Slots::new(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = slots.try_take(a).unwrap();
        let _a2 = slots.try_take(a).unwrap();
        assert!(slots.try_take(a).is_none(), "per address");
        let _b1 = slots.try_take(b).unwrap();
        assert!(slots.try_take(b).is_none(), "overall");
        drop(a1);
        assert!(slots.try_take(b).is_some(), "given back");
        assert!(Slots::new(0, 0).try_take(a).is_some(), "0 means no cap");
        // One IPv6 /64 is one client.
        let v6 = Slots::new(1, 0);
        let _first = v6.try_take("2001:db8::1".parse().unwrap()).unwrap();
        assert!(v6.try_take("2001:db8::ffff:1".parse().unwrap()).is_none());
        assert!(v6.try_take("2001:db8:0:1::1".parse().unwrap()).is_some());
    }
}
