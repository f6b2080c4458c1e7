//! The wait queue of one pool: round-robin between tenants that have waiters,
//! FIFO within a tenant, so one tenant's burst cannot starve another tenant.

use std::collections::VecDeque;
use std::sync::Arc;

/// A queued checkout: `id` lets a waiter that gives up remove itself.
pub struct Waiter<T> {
    pub id: u64,
    pub tx: T,
    pub since: std::time::Instant,
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

    /// Takes the oldest waiter of the next tenant in turn for which `eligible` holds
    /// (a tenant at its share of the pool is passed over, keeping its turn).
    pub fn pop(&mut self, eligible: impl Fn(&str) -> bool) -> Option<(Arc<str>, Waiter<T>)> {
        for _ in 0..self.order.len() {
            let tenant = self.order.pop_front()?;
            if !eligible(&tenant) {
                self.order.push_back(tenant);
                continue;
            }
            let queue = self.by_tenant.get_mut(&tenant)?;
            let waiter = queue.pop_front()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(id: u64) -> Waiter<()> {
        Waiter {
            id,
            tx: (),
            since: std::time::Instant::now(),
        }
    }

    fn drain(q: &mut FairQueue<()>) -> Vec<(String, u64)> {
        std::iter::from_fn(|| q.pop(|_| true))
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
        let (t, w) = q.pop(|t| t != "a").unwrap();
        assert_eq!((&*t, w.id), ("b", 2));
        assert!(q.pop(|t| t != "a").is_none());
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
        assert!(q.pop(|_| true).is_none());
    }
}
