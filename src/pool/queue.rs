//! The wait queue of one pool: round-robin between the tenants that have
//! waiters, so one tenant's burst cannot starve another tenant.
//!
//! Worker locality (see [`crate::workers`]) only chooses between waiters that
//! fairness ranks (nearly) equal: a server released on a worker goes to a
//! waiter on that worker when one is close enough to its turn, and spares
//! both the wake-up of another thread and the move of the server's socket.
//! - Between tenants: the tenant first in turn is served unless it has no
//!   waiter on the releasing worker and one of the next [`LOOK_AHEAD`]
//!   tenants has, and has been served no more often than it; then that
//!   tenant goes first, and the skipped one keeps the front place (at most
//!   [`MAX_SKIPS`] times in a row). A tenant that joins the queue counts as
//!   served as often as the one first in turn. So a noisy tenant is never
//!   served twice while a quiet one waits for its turn, and with many small
//!   tenants (one waiter each or none, where strict turns would pick a
//!   waiter on a random worker for every release) most releases still find
//!   a waiter on their own worker.
//! - Within a tenant: a waiter on the releasing worker first; the tenant's
//!   oldest waiter, on another worker, is passed over at most [`MAX_PASSED`]
//!   times, then served.

use std::collections::VecDeque;
use std::hash::Hash;
use std::time::Instant;

use crate::workers::WorkerId;

/// How many tenants past the one first in turn a release looks at for a
/// waiter on its own worker.
pub const LOOK_AHEAD: usize = 8;

/// How many releases in a row may skip the tenant first in turn.
pub const MAX_SKIPS: u32 = 1;

/// How many releases in a row may serve a tenant's waiters on their own
/// worker while its oldest waiter waits on another. At 256 clients of one
/// tenant on two workers this moves a server on about one hand-off in 65.
pub const MAX_PASSED: u32 = 64;

/// A queued checkout: `id` lets a waiter that gives up remove itself (and,
/// increasing, orders waiters by age).
pub struct Waiter<T> {
    pub id: u64,
    pub tx: T,
    pub since: Instant,
    /// When it gives up: [`FairQueue::expire`] drops it then.
    pub deadline: Instant,
    /// The worker the waiting session runs on.
    pub worker: WorkerId,
}

/// Waiters `T` of tenants `K` (the pool's are its [`super::TenantRef`]s).
///
/// Each queued tenant has a slot in `queues`; the turn order holds slots, so
/// serving a waiter looks nothing up by key. A slot whose tenant has no
/// waiters left keeps its lanes for the next tenant to queue: with few
/// waiters a tenant's queue empties and fills again on most transactions.
pub struct FairQueue<K, T> {
    slots: foldhash::HashMap<K, usize>,
    queues: Vec<TenantQueue<K, T>>,
    /// Slots without a tenant.
    free: Vec<usize>,
    /// Slots of tenants with waiters, in the order they will next be served.
    order: VecDeque<usize>,
    len: usize,
}

/// One tenant's waiters, FIFO per worker.
struct TenantQueue<K, T> {
    /// `None`: a free slot.
    tenant: Option<K>,
    /// Indexed by worker id; `0` holds waiters off any worker.
    by_worker: Vec<VecDeque<Waiter<T>>>,
    len: usize,
    /// Turns this tenant had since it joined the queue (counted from the
    /// count of the tenant first in turn then).
    served: u64,
    /// Releases that skipped this tenant while it was first in turn.
    skips: u32,
    /// Releases that served a younger waiter while the oldest waited on
    /// another worker.
    passed: u32,
}

/// Waiters a free slot's lanes keep room for (a burst's room is given back).
const KEEP_ROOM: usize = 64;

impl<K, T> Default for FairQueue<K, T> {
    fn default() -> Self {
        FairQueue {
            slots: Default::default(),
            queues: Vec::new(),
            free: Vec::new(),
            order: VecDeque::new(),
            len: 0,
        }
    }
}

impl<K: Clone + Eq + Hash, T> FairQueue<K, T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When the longest-waiting waiter started waiting.
    pub fn oldest(&self) -> Option<Instant> {
        (self.queues.iter())
            .flat_map(|q| q.by_worker.iter().filter_map(|l| l.front()))
            .map(|w| w.since)
            .min()
    }

    pub fn push(&mut self, tenant: &K, waiter: Waiter<T>) {
        let slot = match self.slots.get(tenant) {
            Some(&slot) => slot,
            None => self.join(tenant),
        };
        let queue = &mut self.queues[slot];
        let lane = usize::from(waiter.worker);
        if queue.by_worker.len() <= lane {
            queue.by_worker.resize_with(lane + 1, VecDeque::new);
        }
        queue.by_worker[lane].push_back(waiter);
        queue.len += 1;
        self.len += 1;
    }

    /// Gives `tenant` a slot, last in turn, counted as served as often as
    /// the tenant first in turn.
    fn join(&mut self, tenant: &K) -> usize {
        let served = (self.order.front()).map_or(0, |&first| self.queues[first].served);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.queues.push(TenantQueue {
                tenant: None,
                by_worker: Vec::new(),
                len: 0,
                served: 0,
                skips: 0,
                passed: 0,
            });
            self.queues.len() - 1
        });
        let queue = &mut self.queues[slot];
        queue.tenant = Some(tenant.clone());
        queue.served = served;
        queue.skips = 0;
        queue.passed = 0;
        self.slots.insert(tenant.clone(), slot);
        self.order.push_back(slot);
        slot
    }

    /// Frees the slot of a tenant whose last waiter left (the caller takes
    /// it out of the turn order); returns the tenant.
    fn leave(&mut self, slot: usize) -> K {
        let queue = &mut self.queues[slot];
        let tenant = queue.tenant.take().expect("a queued tenant");
        for lane in &mut queue.by_worker {
            lane.shrink_to(KEEP_ROOM);
        }
        self.slots.remove(&tenant);
        self.free.push(slot);
        tenant
    }

    fn tenant(&self, slot: usize) -> &K {
        self.queues[slot].tenant.as_ref().expect("a queued tenant")
    }

    /// Takes a waiter for a server released on worker `here` (`0`: off any
    /// worker): the next tenant in turn for which `eligible` holds (a tenant
    /// at its share of the pool is passed over, keeping its place), or a
    /// tenant shortly behind it with a waiter on `here` (see the module doc).
    pub fn pop(&mut self, eligible: impl Fn(&K) -> bool, here: WorkerId) -> Option<(K, Waiter<T>)> {
        let window = self.order.len().min(LOOK_AHEAD + 1);
        // The first eligible tenant: its place and its turns.
        let mut first: Option<(usize, u64)> = None;
        for i in 0..window {
            let slot = self.order[i];
            if !eligible(self.tenant(slot)) {
                continue;
            }
            let queue = &self.queues[slot];
            let local = queue.has_waiter_on(here);
            match first {
                None if local || here == 0 || queue.skips >= MAX_SKIPS => {
                    return Some(self.serve(i, here));
                }
                None => first = Some((i, queue.served)),
                Some((skipped, turns)) if local && queue.served <= turns => {
                    let skipped = self.order[skipped];
                    self.queues[skipped].skips += 1;
                    return Some(self.serve(i, here));
                }
                Some(_) => {}
            }
        }
        let i = (first.map(|(i, _)| i)).or_else(|| {
            (window..self.order.len()).find(|&i| eligible(self.tenant(self.order[i])))
        })?;
        Some(self.serve(i, here))
    }

    /// Serves the tenant at place `i` in turn; it goes to the back of the
    /// turn order if it has waiters left.
    fn serve(&mut self, i: usize, here: WorkerId) -> (K, Waiter<T>) {
        // Mostly the first in turn: `pop_front` is cheaper than a general remove.
        let slot = if i == 0 {
            self.order.pop_front()
        } else {
            self.order.remove(i)
        };
        let slot = slot.expect("index within the order");
        let queue = &mut self.queues[slot];
        let waiter = queue.take(here);
        queue.served += 1;
        queue.skips = 0;
        self.len -= 1;
        let tenant = if queue.len == 0 {
            self.leave(slot)
        } else {
            self.order.push_back(slot);
            self.tenant(slot).clone()
        };
        (tenant, waiter)
    }

    /// Drops the waiters whose deadline has passed (dropping a waiter is what
    /// tells it, through its channel); returns how many. The others keep their
    /// places and their tenants' turns.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        for slot in 0..self.queues.len() {
            let queue = &mut self.queues[slot];
            if queue.tenant.is_none() {
                continue;
            }
            for lane in &mut queue.by_worker {
                let before = lane.len();
                lane.retain(|w| w.deadline > now);
                queue.len -= before - lane.len();
                expired += before - lane.len();
            }
            if queue.len == 0 {
                self.leave(slot);
            }
        }
        if expired > 0 {
            self.len -= expired;
            let queues = &self.queues;
            self.order.retain(|&slot| queues[slot].len > 0);
        }
        expired
    }

    /// Removes a waiter that gave up (client gone).
    pub fn remove(&mut self, tenant: &K, worker: WorkerId, id: u64) {
        let Some(&slot) = self.slots.get(tenant) else {
            return;
        };
        let queue = &mut self.queues[slot];
        let Some(lane) = queue.by_worker.get_mut(usize::from(worker)) else {
            return;
        };
        if let Some(at) = lane.iter().position(|w| w.id == id) {
            lane.remove(at);
            queue.len -= 1;
            self.len -= 1;
        }
        if queue.len == 0 {
            self.leave(slot);
            self.order.retain(|&s| s != slot);
        }
    }
}

impl<K, T> TenantQueue<K, T> {
    fn has_waiter_on(&self, worker: WorkerId) -> bool {
        worker != 0 && (self.by_worker.get(usize::from(worker))).is_some_and(|l| !l.is_empty())
    }

    /// The waiter to serve from a release on `here` (the queue is not empty).
    fn take(&mut self, here: WorkerId) -> Waiter<T> {
        let oldest = (self.by_worker.iter().enumerate())
            .filter_map(|(i, l)| l.front().map(|w| (w.id, i)))
            .min()
            .map(|(_, i)| i)
            .expect("a served tenant has waiters");
        let local = usize::from(here);
        let lane = if self.has_waiter_on(here) && local != oldest && self.passed < MAX_PASSED {
            self.passed += 1;
            local
        } else {
            self.passed = 0;
            oldest
        };
        self.len -= 1;
        self.by_worker[lane].pop_front().expect("lane has a waiter")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Tenants are plain ids here; the pool's are its tenant handles.
    fn queue() -> FairQueue<Arc<str>, ()> {
        FairQueue::default()
    }

    fn on(id: u64, worker: WorkerId) -> Waiter<()> {
        Waiter {
            id,
            tx: (),
            since: Instant::now(),
            deadline: Instant::now() + std::time::Duration::from_secs(60),
            worker,
        }
    }

    fn drain(q: &mut FairQueue<Arc<str>, ()>, here: WorkerId) -> Vec<(String, u64)> {
        std::iter::from_fn(|| q.pop(|_| true, here))
            .map(|(t, w)| (t.to_string(), w.id))
            .collect()
    }

    fn ids(served: Vec<(String, u64)>) -> Vec<u64> {
        served.into_iter().map(|(_, id)| id).collect()
    }

    #[test]
    fn round_robin_between_tenants_fifo_within() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut q = queue();
        for id in 0..3 {
            q.push(&a, on(id, 1));
        }
        q.push(&b, on(10, 1));
        let order = drain(&mut q, 1);
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
    fn an_ineligible_tenant_is_passed_over_and_keeps_its_place() {
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let mut q = queue();
        q.push(&a, on(1, 1));
        q.push(&b, on(2, 2));
        q.push(&c, on(3, 2));
        let (t, _) = q.pop(|t| &**t != "a", 1).unwrap();
        assert_eq!(&*t, "b");
        assert!(q.pop(|t| &**t == "b", 1).is_none());
        // Eligible again, `a` is still first in turn.
        assert_eq!(ids(drain(&mut q, 1)), [1, 3]);
    }

    #[test]
    fn beyond_the_look_ahead_the_first_eligible_tenant_is_served() {
        let mut q = queue();
        for id in 0..LOOK_AHEAD as u64 + 3 {
            q.push(&format!("t{id}").into(), on(id, 2));
        }
        let last = LOOK_AHEAD as u64 + 2;
        let (t, w) = q.pop(|t| **t == *format!("t{last}"), 1).unwrap();
        assert_eq!((&*t, w.id), (&*format!("t{last}"), last));
    }

    #[test]
    fn removed_waiters_leave_nothing_behind() {
        let a: Arc<str> = "a".into();
        let mut q = queue();
        q.push(&a, on(1, 1));
        q.push(&a, on(2, 2));
        q.remove(&a, 1, 1);
        q.remove(&a, 1, 2); // on worker 2, not 1: stays
        assert_eq!(q.len(), 1);
        q.remove(&a, 2, 2);
        q.remove(&a, 5, 3);
        assert!(q.is_empty());
        assert!(q.oldest().is_none());
        assert!(q.pop(|_| true, 1).is_none());
    }

    #[test]
    fn a_tenant_that_leaves_gives_its_slot_to_the_next_and_keeps_nothing() {
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let mut q = queue();
        for round in 0..100 {
            q.push(&a, on(3 * round, 1));
            q.push(&b, on(3 * round + 1, 1));
            assert_eq!(q.pop(|_| true, 1).unwrap().0, a);
            // Served its last waiter: a's slot is free, and c takes it.
            q.push(&c, on(3 * round + 2, 2));
            assert_eq!(ids(drain(&mut q, 1)), vec![3 * round + 1, 3 * round + 2]);
        }
        assert_eq!(q.queues.len(), 2, "slots are reused, not added");
        assert!(q.slots.is_empty() && q.order.is_empty() && q.is_empty());
        assert!(q.queues.iter().all(|s| s.tenant.is_none() && s.len == 0));
        // Back again, a tenant counts its turns from the one first in turn.
        q.push(&a, on(1000, 1));
        q.push(&a, on(1001, 1));
        q.push(&b, on(1002, 1));
        assert_eq!(ids(drain(&mut q, 0)), vec![1000, 1002, 1001]);
    }

    #[test]
    fn a_freed_slot_gives_back_the_room_of_a_burst() {
        let a: Arc<str> = "a".into();
        let mut q = queue();
        for id in 0..1000 {
            q.push(&a, on(id, 1));
        }
        assert_eq!(drain(&mut q, 1).len(), 1000);
        let lanes = &q.queues[0].by_worker;
        assert!(
            lanes.iter().all(|l| l.capacity() <= 2 * KEEP_ROOM),
            "kept a burst's room"
        );
    }

    #[test]
    fn a_release_looks_a_few_tenants_ahead_for_its_own_worker() {
        // One waiter per tenant, alternating workers, all released on worker
        // 1: a tenant first in turn without a waiter there is skipped once
        // for one a place behind that has, then served.
        let mut q = queue();
        for id in 0..6u64 {
            q.push(&format!("t{id}").into(), on(id, 1 + (id % 2) as WorkerId));
        }
        assert_eq!(ids(drain(&mut q, 1)), [0, 2, 1, 4, 3, 5]);
    }

    #[test]
    fn a_noisy_tenant_never_goes_twice_while_a_quiet_one_waits() {
        // The noisy tenant has waiters on both workers; every server comes back
        // on worker 1; the quiet tenant's one waiter is on worker 2.
        let (noisy, quiet): (Arc<str>, Arc<str>) = ("noisy".into(), "quiet".into());
        let mut q = queue();
        for id in 0..20 {
            q.push(&noisy, on(id, 1 + (id % 2) as WorkerId));
        }
        q.push(&quiet, on(100, 2));
        let served = drain(&mut q, 1);
        let at = served.iter().position(|(t, _)| t == "quiet").unwrap();
        assert!(at <= 1, "quiet served after {at} noisy waiters: {served:?}");
    }

    #[test]
    fn within_a_tenant_the_releasing_workers_waiter_goes_first() {
        let a: Arc<str> = "a".into();
        let mut q = queue();
        q.push(&a, on(0, 2));
        q.push(&a, on(1, 1));
        q.push(&a, on(2, 1));
        assert_eq!(ids(drain(&mut q, 1)), [1, 2, 0]);
    }

    #[test]
    fn a_tenants_oldest_waiter_is_passed_over_only_so_often() {
        let a: Arc<str> = "a".into();
        let mut q = queue();
        let passes = u64::from(MAX_PASSED);
        q.push(&a, on(0, 2));
        for id in 1..=passes + 2 {
            q.push(&a, on(id, 1));
        }
        // Waiter 0 (on worker 2) is passed over MAX_PASSED times, then served.
        let mut expected: Vec<u64> = (1..=passes).collect();
        expected.extend([0, passes + 1, passes + 2]);
        assert_eq!(ids(drain(&mut q, 1)), expected);
    }

    #[test]
    fn off_the_workers_strict_turns_and_oldest_first() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut q = queue();
        q.push(&a, on(1, 2));
        q.push(&b, on(2, 1));
        q.push(&a, on(3, 1));
        q.push(&a, on(4, 0));
        // Released off any worker (maintenance, a reload).
        assert_eq!(ids(drain(&mut q, 0)), [1, 2, 3, 4]);
    }

    #[test]
    fn expired_waiters_leave_and_the_rest_keep_their_turns() {
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let mut q = queue();
        let now = Instant::now();
        let due = |id, worker, late: bool| Waiter {
            deadline: if late {
                now
            } else {
                now + std::time::Duration::from_secs(60)
            },
            ..on(id, worker)
        };
        q.push(&a, due(1, 1, true));
        q.push(&b, due(2, 1, true));
        q.push(&a, due(3, 2, false));
        q.push(&c, due(4, 1, false));
        q.push(&b, due(5, 2, true));
        assert_eq!(q.expire(now), 3);
        assert_eq!(q.len(), 2);
        assert_eq!(q.expire(now), 0, "nothing is expired twice");
        // b had only expired waiters and is gone; a and c keep their order.
        assert_eq!(drain(&mut q, 0), [("a".into(), 3), ("c".into(), 4)]);
        assert!(q.is_empty());
    }
}
