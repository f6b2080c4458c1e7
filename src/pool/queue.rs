//! The wait queue of one pool: round-robin between tenants that have waiters,
//! FIFO within a tenant, so one tenant's burst cannot starve another tenant.
//!
//! One exception to FIFO: a server released on a worker goes to a waiter on
//! that same worker if one is near the front of its tenant's queue (no thread
//! to wake, no socket to move; see [`crate::workers`]). The oldest waiter can
//! be passed over this way only [`MAX_PASSED`] times.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::workers::WorkerId;

/// How often the oldest waiter of a tenant may be passed over for a waiter
/// on the releasing worker.
pub const MAX_PASSED: u8 = 16;
/// How far behind the oldest waiter a waiter on the releasing worker is looked for.
const LOOK_AHEAD: usize = 64;

/// A queued checkout: `id` lets a waiter that gives up remove itself.
pub struct Waiter<T> {
    pub id: u64,
    pub tx: T,
    pub since: std::time::Instant,
    /// The worker the waiting session runs on.
    pub worker: WorkerId,
    /// Times a waiter behind it was served first.
    pub passed: u8,
}

pub struct FairQueue<T> {
    by_tenant: foldhash::HashMap<Arc<str>, VecDeque<Waiter<T>>>,
    /// Tenants with waiters, in the order they will next be served.
    order: VecDeque<Arc<str>>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            by_tenant: Default::default(),
            order: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When the longest-waiting waiter started waiting.
    pub fn oldest(&self) -> Option<std::time::Instant> {
        self.by_tenant
            .values()
            .filter_map(|q| q.front().map(|w| w.since))
            .min()
    }

    pub fn push(&mut self, tenant: &Arc<str>, waiter: Waiter<T>) {
        let queue = self.by_tenant.entry(Arc::clone(tenant)).or_default();
        if queue.is_empty() {
            self.order.push_back(Arc::clone(tenant));
        }
        queue.push_back(waiter);
        self.len += 1;
    }

    /// Takes a waiter of the next tenant in turn for which `eligible` holds
    /// (a tenant at its share of the pool is passed over, keeping its turn):
    /// its oldest, or one on worker `here` close behind it (see the module doc).
    pub fn pop(
        &mut self,
        eligible: impl Fn(&str) -> bool,
        here: WorkerId,
    ) -> Option<(Arc<str>, Waiter<T>)> {
        for _ in 0..self.order.len() {
            let tenant = self.order.pop_front()?;
            if !eligible(&tenant) {
                self.order.push_back(tenant);
                continue;
            }
            let queue = self.by_tenant.get_mut(&tenant)?;
            let waiter = take(queue, here)?;
            if queue.is_empty() {
                self.by_tenant.remove(&tenant);
            } else {
                self.order.push_back(Arc::clone(&tenant));
            }
            self.len -= 1;
            return Some((tenant, waiter));
        }
        None
    }

    /// Removes a waiter that gave up (timeout or client gone).
    pub fn remove(&mut self, tenant: &str, id: u64) {
        let Some(queue) = self.by_tenant.get_mut(tenant) else {
            return;
        };
        let before = queue.len();
        queue.retain(|w| w.id != id);
        self.len -= before - queue.len();
        if queue.is_empty() {
            self.by_tenant.remove(tenant);
            self.order.retain(|t| &**t != tenant);
        }
    }
}

/// The oldest waiter, unless a waiter on `here` is close behind and the
/// oldest has not been passed over too often.
fn take<T>(queue: &mut VecDeque<Waiter<T>>, here: WorkerId) -> Option<Waiter<T>> {
    let oldest = queue.front_mut()?;
    if oldest.worker != here && here != 0 && oldest.passed < MAX_PASSED {
        let local = queue.iter().take(LOOK_AHEAD).position(|w| w.worker == here);
        if let Some(i) = local {
            queue[0].passed += 1;
            return queue.remove(i);
        }
    }
    queue.pop_front()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(id: u64) -> Waiter<()> {
        on(id, 1)
    }

    fn on(id: u64, worker: WorkerId) -> Waiter<()> {
        Waiter {
            id,
            tx: (),
            since: std::time::Instant::now(),
            worker,
            passed: 0,
        }
    }

    fn drain(q: &mut FairQueue<()>) -> Vec<(String, u64)> {
        std::iter::from_fn(|| q.pop(|_| true, 1))
            .map(|(t, w)| (t.to_string(), w.id))
            .collect()
    }

    #[test]
    fn round_robin_between_tenants_fifo_within() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut q = FairQueue::default();
        for id in 0..3 {
            q.push(&a, waiter(id));
        }
        q.push(&b, waiter(10));
        let order = drain(&mut q);
        assert_eq!(
            order,
            vec![
                ("a".into(), 0),
                ("b".into(), 10),
                ("a".into(), 1),
                ("a".into(), 2)
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn ineligible_tenant_is_skipped_but_keeps_its_waiters() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut q = FairQueue::default();
        q.push(&a, waiter(1));
        q.push(&b, waiter(2));
        let (t, w) = q.pop(|t| t != "a", 1).unwrap();
        assert_eq!((&*t, w.id), ("b", 2));
        assert!(q.pop(|t| t != "a", 1).is_none());
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn removed_waiters_leave_nothing_behind() {
        let a: Arc<str> = "a".into();
        let mut q = FairQueue::default();
        q.push(&a, waiter(1));
        q.push(&a, waiter(2));
        q.remove("a", 1);
        q.remove("a", 2);
        q.remove("a", 3);
        assert!(q.is_empty());
        assert!(q.pop(|_| true, 1).is_none());
    }

    #[test]
    fn a_waiter_on_the_releasing_worker_goes_first_but_not_forever() {
        let a: Arc<str> = "a".into();
        let mut q = FairQueue::default();
        let passes = u64::from(MAX_PASSED);
        q.push(&a, on(0, 2));
        for id in 1..=passes + 2 {
            q.push(&a, on(id, 1));
        }
        let served: Vec<u64> = std::iter::from_fn(|| q.pop(|_| true, 1))
            .map(|(_, w)| w.id)
            .collect();
        // Waiter 0 (on worker 2) is passed over MAX_PASSED times, then served.
        let mut expected: Vec<u64> = (1..=passes).collect();
        expected.extend([0, passes + 1, passes + 2]);
        assert_eq!(served, expected);
    }

    #[test]
    fn no_preference_off_the_workers_or_beyond_the_look_ahead() {
        let a: Arc<str> = "a".into();
        let mut q = FairQueue::default();
        q.push(&a, on(1, 2));
        q.push(&a, on(2, 1));
        // Released off any worker (maintenance, a reload): strict FIFO.
        assert_eq!(q.pop(|_| true, 0).unwrap().1.id, 1);
        let mut q = FairQueue::default();
        for id in 0..LOOK_AHEAD as u64 {
            q.push(&a, on(id, 2));
        }
        q.push(&a, on(99, 1));
        assert_eq!(q.pop(|_| true, 1).unwrap().1.id, 0);
    }
}
