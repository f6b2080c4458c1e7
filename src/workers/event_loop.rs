//! A worker's event loop: its tasks, its run queue and its epoll set, on one
//! thread. The loop polls the tasks that are due, then waits in `epoll_wait`
//! and marks the sockets it reports ready, waking the tasks that wait on them.
//!
//! Wake-ups from the worker's own thread (nearly all: a socket event, a
//! session waking itself) go on a thread-local queue without a lock or a
//! system call. Another thread's wake-up (a server released on another worker,
//! a timer, a new client) goes on a locked queue, and writes the worker's
//! eventfd only if the worker is asleep in `epoll_wait`.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;
use rustix::event::{EventfdFlags, epoll};
use rustix::io::Errno;

use super::WorkerId;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A worker's state that other threads reach: its epoll set and the queues
/// they hand it work through.
pub(super) struct Shared {
    pub(super) id: WorkerId,
    epoll: OwnedFd,
    /// Written to wake the worker from `epoll_wait`.
    eventfd: OwnedFd,
    /// In (or about to enter) `epoll_wait`: other threads' wake-ups must
    /// write the eventfd.
    sleeping: AtomicBool,
    /// Tasks woken or spawned by other threads; `None` once the worker has
    /// stopped and dropped what was there.
    injected: Mutex<Option<Vec<Arc<Task>>>>,
    has_injected: AtomicBool,
    /// Socket slots given up (from any thread), to be reused.
    freed: Mutex<Vec<u32>>,
    has_freed: AtomicBool,
    stop: AtomicBool,
}

/// Token of the eventfd in the epoll set (sockets use their slot).
const WAKE: u64 = u64::MAX;

impl Shared {
    pub(super) fn new(id: WorkerId) -> std::io::Result<Arc<Shared>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let eventfd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &eventfd,
            epoll::EventData::new_u64(WAKE),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok(Arc::new(Shared {
            id,
            epoll,
            eventfd,
            sleeping: AtomicBool::new(false),
            injected: Mutex::new(Some(Vec::new())),
            has_injected: AtomicBool::new(false),
            freed: Mutex::default(),
            has_freed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }))
    }

    /// Hands `task` to the worker from another thread.
    pub(super) fn inject(&self, task: Arc<Task>) {
        let mut injected = lock(&self.injected);
        let Some(queue) = injected.as_mut() else {
            drop(injected);
            // The worker is gone: nothing would run the task, and queueing it
            // would keep it (and this, its home) alive for good.
            let future = lock(&task.future).take();
            drop(future);
            return;
        };
        queue.push(task);
        drop(injected);
        self.has_injected.store(true, Ordering::SeqCst);
        // SeqCst on both sides: either the worker sees `has_injected` before
        // it sleeps, or this sees `sleeping` and wakes it.
        if self.sleeping.load(Ordering::SeqCst) {
            self.notify();
        }
    }

    /// Ends the worker's loop; its tasks are dropped on its thread.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.notify();
    }

    fn notify(&self) {
        // A full counter (never, in practice) still leaves the fd readable.
        let _ = rustix::io::write(&self.eventfd, &1u64.to_ne_bytes());
    }

    /// Gives back a socket's slot: the socket is out of the epoll set
    /// (closed, or removed), so no later `epoll_wait` reports it.
    pub(super) fn free(&self, slot: u32) {
        lock(&self.freed).push(slot);
        self.has_freed.store(true, Ordering::Release);
    }

    /// Takes `fd` out of the epoll set without closing it.
    pub(super) fn remove(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        Ok(epoll::delete(&self.epoll, fd)?)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a socket's task waits on: which ways the socket was last seen ready,
/// and who to wake when that changes.
pub(super) struct Source {
    ready: AtomicU8,
    pub(super) reader: AtomicWaker,
    pub(super) writer: AtomicWaker,
}

pub(super) const READABLE: u8 = 1;
pub(super) const WRITABLE: u8 = 2;

impl Source {
    pub(super) fn is(&self, way: u8) -> bool {
        self.ready.load(Ordering::Acquire) & way != 0
    }

    /// The socket would block that way: wait for the next event.
    pub(super) fn clear(&self, way: u8) {
        self.ready.fetch_and(!way, Ordering::AcqRel);
    }

    /// Only a way that was not ready has a waiter to wake: a task waits
    /// only after it saw the way not ready (and looks again once it has
    /// registered). Every read event also reports the socket writable, which
    /// it nearly always still is: no wake-up for that.
    fn mark(&self, ways: u8) {
        let new = ways & !self.ready.fetch_or(ways, Ordering::AcqRel);
        if new & READABLE != 0 {
            self.reader.wake();
        }
        if new & WRITABLE != 0 {
            self.writer.wake();
        }
    }
}

/// A socket's slot in a worker's epoll set, given back when dropped.
pub(super) struct Place {
    pub(super) home: Arc<Shared>,
    slot: u32,
    pub(super) source: Arc<Source>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.home.free(self.slot);
    }
}

const QUEUED: u8 = 1;
const ABORTED: u8 = 2;
/// No place in its worker's task list yet (spawned, not yet run).
const UNPLACED: u32 = u32::MAX;

/// A spawned future and its scheduling state. Its waker is the task itself.
pub(super) struct Task {
    future: Mutex<Option<BoxFuture>>,
    state: AtomicU8,
    place: AtomicU32,
    home: Arc<Shared>,
}

impl Task {
    pub(super) fn new(future: BoxFuture, home: Arc<Shared>) -> Arc<Task> {
        Arc::new(Task {
            future: Mutex::new(Some(future)),
            state: AtomicU8::new(QUEUED),
            place: AtomicU32::new(UNPLACED),
            home,
        })
    }

    /// Drops the future on its worker, unless it has finished.
    pub(super) fn abort(self: &Arc<Self>) {
        self.state.fetch_or(ABORTED, Ordering::AcqRel);
        self.wake_by_ref();
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        if self.state.fetch_or(QUEUED, Ordering::AcqRel) & QUEUED != 0 {
            return;
        }
        // On its own worker (nearly always), onto the thread-local queue.
        let mut task = Some(self);
        let _ = LOCAL.try_with(|l| {
            if let (Some(here), Some(t)) = (l.shared.get(), &task)
                && Arc::ptr_eq(here, &t.home)
            {
                l.run.borrow_mut().extend(task.take());
            }
        });
        if let Some(task) = task {
            let home = Arc::clone(&task.home);
            home.inject(task);
        }
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.load(Ordering::Acquire) & QUEUED == 0 {
            Arc::clone(self).wake();
        }
    }
}

/// A growable table with reusable slots.
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    const fn new() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, item: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = Some(item);
                i
            }
            None => {
                self.items.push(Some(item));
                u32::try_from(self.items.len() - 1).expect("fewer than 2^32 slots")
            }
        }
    }

    fn remove(&mut self, i: u32) -> Option<T> {
        let item = self.items.get_mut(i as usize)?.take();
        if item.is_some() {
            self.free.push(i);
        }
        item
    }
}

/// The loop's thread-local part.
struct Local {
    shared: OnceCell<Arc<Shared>>,
    run: RefCell<VecDeque<Arc<Task>>>,
    /// Every task not yet finished, so that stopping drops them all.
    tasks: RefCell<Slab<Arc<Task>>>,
    /// The sockets in the epoll set, by slot (the epoll token).
    sources: RefCell<Slab<Arc<Source>>>,
    /// Reads and writes left before the polled task must yield.
    budget: Cell<u16>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            shared: OnceCell::new(),
            run: RefCell::new(VecDeque::new()),
            tasks: RefCell::new(Slab::new()),
            sources: RefCell::new(Slab::new()),
            budget: Cell::new(BUDGET),
        }
    };
}

/// Socket operations one poll of a task may complete before it yields, so
/// that a session streaming a large result leaves room for the others.
const BUDGET: u16 = 128;

/// Tasks polled between two looks at the sockets while tasks stay due.
const TASKS_PER_LOOK: u32 = 61;

/// Whether the polled task may complete one more socket operation; when not,
/// it is woken again and must return `Pending`.
pub(super) fn proceed(cx: &Context<'_>) -> bool {
    LOCAL.with(|l| match l.budget.get() {
        0 => {
            cx.waker().wake_by_ref();
            false
        }
        n => {
            l.budget.set(n - 1);
            true
        }
    })
}

/// Adds `fd` to this worker's epoll set (edge-triggered, both ways). `None`
/// off a worker.
pub(super) fn register(fd: BorrowedFd<'_>) -> Option<std::io::Result<Place>> {
    LOCAL.with(|l| {
        let shared = l.shared.get()?;
        let source = Arc::new(Source {
            // Assumed ready until a call would block: no wait for a first event.
            ready: AtomicU8::new(READABLE | WRITABLE),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        });
        let slot = l.sources.borrow_mut().insert(Arc::clone(&source));
        let flags = epoll::EventFlags::IN
            | epoll::EventFlags::OUT
            | epoll::EventFlags::RDHUP
            | epoll::EventFlags::ET;
        Some(
            match epoll::add(
                &shared.epoll,
                fd,
                epoll::EventData::new_u64(slot.into()),
                flags,
            ) {
                Ok(()) => Ok(Place {
                    home: Arc::clone(shared),
                    slot,
                    source,
                }),
                Err(e) => {
                    l.sources.borrow_mut().remove(slot);
                    Err(e.into())
                }
            },
        )
    })
}

/// Runs the worker's loop on this thread until [`Shared::stop`]; then drops
/// every task left.
pub(super) fn run(shared: Arc<Shared>) {
    LOCAL.with(|l| {
        let _ = l.shared.set(Arc::clone(&shared));
    });
    let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Polls since the loop last slept, and whether it has yielded since the
    // last poll (see below).
    let (mut since_sleep, mut yielded) = (0u32, false);
    loop {
        let mut polled = 0;
        while let Some(task) = LOCAL.with(|l| l.run.borrow_mut().pop_front()) {
            poll(task);
            (since_sleep, yielded) = (since_sleep.saturating_add(1), false);
            polled += 1;
            if polled == TASKS_PER_LOOK {
                polled = 0;
                look(&shared, &mut events, Some(&zero));
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if take_injected(&shared) {
            super::woke();
            continue;
        }
        // A busy worker (more than one poll since it last slept) lets the
        // processes it waits for run first and looks again before it sleeps:
        // on these small machines PostgreSQL's answer often comes in that
        // time, and a sleep and the wake-up after it cost the kernel more
        // than the two calls. A worker serving one client sleeps at once (the
        // calls would only add to its latency).
        if !yielded && since_sleep > 1 {
            yielded = true;
            std::thread::yield_now();
            look(&shared, &mut events, Some(&zero));
            continue;
        }
        (since_sleep, yielded) = (0, false);
        shared.sleeping.store(true, Ordering::SeqCst);
        if shared.has_injected.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            shared.sleeping.store(false, Ordering::Relaxed);
            continue;
        }
        look(&shared, &mut events, None);
        shared.sleeping.store(false, Ordering::Relaxed);
    }
    // Dropped outside the borrow: a future's drop may wake or spawn tasks.
    let mut tasks: Vec<Arc<Task>> = LOCAL.with(|l| {
        let mut tasks = l.tasks.borrow_mut();
        tasks.free.clear();
        tasks.items.drain(..).flatten().collect()
    });
    // Spawned but never run, too.
    tasks.extend(lock(&shared.injected).take().into_iter().flatten());
    for task in tasks {
        let future = lock(&task.future).take();
        drop(future);
    }
    LOCAL.with(|l| l.run.borrow_mut().clear());
}

/// Moves other threads' tasks to the run queue; whether there were any.
/// Mostly there are none: one relaxed load, inlined.
#[inline(always)]
fn take_injected(shared: &Shared) -> bool {
    shared.has_injected.load(Ordering::Relaxed) && take_injected_now(shared)
}

fn take_injected_now(shared: &Shared) -> bool {
    if !shared.has_injected.swap(false, Ordering::SeqCst) {
        return false;
    }
    let tasks = lock(&shared.injected)
        .as_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    LOCAL.with(|l| {
        let mut run = l.run.borrow_mut();
        for task in tasks {
            if task.place.load(Ordering::Relaxed) == UNPLACED {
                let place = l.tasks.borrow_mut().insert(Arc::clone(&task));
                task.place.store(place, Ordering::Relaxed);
            }
            run.push_back(task);
        }
        !run.is_empty()
    })
}

/// Polls `task` once, or drops its future if it was aborted.
fn poll(task: Arc<Task>) {
    let state = task.state.fetch_and(!QUEUED, Ordering::AcqRel);
    let mut future = lock(&task.future);
    let Some(running) = future.as_mut() else {
        return;
    };
    let done = state & ABORTED != 0 || {
        LOCAL.with(|l| l.budget.set(BUDGET));
        let waker = Waker::from(Arc::clone(&task));
        // A panicking session ends alone, as a tokio task would: the worker
        // and its other sessions go on.
        catch_unwind(AssertUnwindSafe(|| {
            running.as_mut().poll(&mut Context::from_waker(&waker))
        }))
        .map_or_else(
            |_| {
                tracing::error!(worker = task.home.id, "a session panicked; it is closed");
                true
            },
            |polled| polled.is_ready(),
        )
    };
    if done {
        let finished = future.take();
        drop(future);
        // Its drop may panic too, after a panic in its poll.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(finished)));
        LOCAL.with(|l| {
            l.tasks
                .borrow_mut()
                .remove(task.place.load(Ordering::Relaxed))
        });
    }
}

/// One `epoll_wait` (`None`: until something happens), then the wake-ups
/// of what it reported.
fn look(
    shared: &Shared,
    events: &mut Vec<epoll::Event>,
    timeout: Option<&rustix::event::Timespec>,
) {
    if shared.has_freed.swap(false, Ordering::Acquire) {
        let freed = std::mem::take(&mut *lock(&shared.freed));
        LOCAL.with(|l| {
            let mut sources = l.sources.borrow_mut();
            for slot in freed {
                sources.remove(slot);
            }
        });
    }
    events.clear();
    match epoll::wait(
        &shared.epoll,
        rustix::buffer::spare_capacity(events),
        timeout,
    ) {
        Ok(_) | Err(Errno::INTR) => {}
        Err(e) => {
            // Only a bug or a broken kernel gets here (the epoll fd is ours).
            // A pause keeps a lasting failure from spinning a core and
            // flooding the log; injected work still runs in between.
            tracing::error!(error = %e, worker = shared.id, "epoll_wait failed");
            std::thread::sleep(std::time::Duration::from_millis(100));
            return;
        }
    }
    super::woke();
    LOCAL.with(|l| {
        let sources = l.sources.borrow();
        for event in events.iter() {
            let token = event.data.u64();
            if token == WAKE {
                let mut count = [0u8; 8];
                let _ = rustix::io::read(&shared.eventfd, &mut count);
                continue;
            }
            let Some(Some(source)) = sources.items.get(token as usize) else {
                continue;
            };
            let flags = event.flags;
            let mut ways = 0;
            if flags.intersects(
                epoll::EventFlags::IN
                    | epoll::EventFlags::PRI
                    | epoll::EventFlags::RDHUP
                    | epoll::EventFlags::HUP
                    | epoll::EventFlags::ERR,
            ) {
                ways |= READABLE;
            }
            if flags.intersects(
                epoll::EventFlags::OUT | epoll::EventFlags::HUP | epoll::EventFlags::ERR,
            ) {
                ways |= WRITABLE;
            }
            source.mark(ways);
        }
    });
    // New work from other threads rides on the same look.
    take_injected(shared);
}
