//! Failed logins per source address. After `max` failures within `window`, the
//! address's logins are refused, before any password exchange, until the window
//! that began with its first failure ends: passwords cannot be guessed at speed.
//! IPv6 addresses count per /64, which one host usually owns whole. Memory is
//! bounded: entries expire with their window and at most [`MAX_ADDRESSES`] are kept.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_ADDRESSES: usize = 100_000;

#[derive(Default)]
pub struct Throttle {
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

struct Entry {
    failures: u32,
    since: Instant,
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

impl Throttle {
    /// `Err(time left)` when `ip` has used up its failures; `max == 0` never throttles.
    pub fn check(&self, ip: IpAddr, max: u32, window: Duration) -> Result<(), Duration> {
        if max == 0 {
            return Ok(());
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&key(ip)) {
            Some(e) if e.failures >= max => {
                let left = window.saturating_sub(e.since.elapsed());
                if left.is_zero() { Ok(()) } else { Err(left) }
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, ip: IpAddr, max: u32, window: Duration) {
        if max == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ADDRESSES {
            entries.retain(|_, e| e.since.elapsed() < window);
            if entries.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let entry = entries.entry(key(ip)).or_insert(Entry {
            failures: 0,
            since: Instant::now(),
        });
        if entry.since.elapsed() >= window {
            *entry = Entry {
                failures: 0,
                since: Instant::now(),
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    /// Drops entries whose window is over.
    pub fn sweep(&self, window: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, e| e.since.elapsed() < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_max_failures_until_its_window_ends() {
        let t = Throttle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let window = Duration::from_millis(200);
        for _ in 0..3 {
            assert!(t.check(a, 3, window).is_ok());
            t.failed(a, 3, window);
        }
        assert!(t.check(a, 3, window).is_err());
        assert!(
            t.check(b, 3, window).is_ok(),
            "other addresses are not affected"
        );
        assert!(t.check(a, 0, window).is_ok(), "0 turns it off");
        std::thread::sleep(window);
        assert!(t.check(a, 3, window).is_ok(), "the window ended");
        t.sweep(window);
        assert!(t.entries.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let t = Throttle::default();
        let w = Duration::from_secs(60);
        t.failed("2001:db8::1".parse().unwrap(), 2, w);
        t.failed("2001:db8::ffff:2".parse().unwrap(), 2, w);
        assert!(t.check("2001:db8::3".parse().unwrap(), 2, w).is_err());
        assert!(t.check("2001:db8:0:1::3".parse().unwrap(), 2, w).is_ok());
        t.failed("::ffff:10.0.0.9".parse().unwrap(), 1, w);
        assert!(t.check("10.0.0.9".parse().unwrap(), 1, w).is_err());
    }
}
