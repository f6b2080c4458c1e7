//! Worker threads, one event loop each (thread per core, as PgBouncer is one
//! event loop): a client's session lives on one worker for its life, and so
//! do the servers it uses, whenever the pool has one there.
//!
//! Why not tokio's multi-threaded scheduler: its workers share one reactor,
//! and every event it hands out wakes an idle worker to steal it. On the
//! 2-core machines we measure on that cost about one context switch per
//! transaction (1.04 against PgBouncer's 0.47) and most of the CPU by which
//! pgtenant trailed PgBouncer. Each worker has its own epoll set: a
//! transaction whose client and server sit on the same worker is served
//! without waking another thread.
//!
//! Why not a tokio current-thread runtime per worker (as before): for the
//! two sockets of a transaction it spent about 2,400 instructions a
//! transaction (callgrind, 4 clients) on readiness bookkeeping, wake-ups and
//! its scheduler's clock reads. The loop here ([`event_loop`]) does only
//! what a session needs: futures woken by socket events, thread-local run
//! queue, direct system calls ([`Socket`]).
//!
//! Everything else a session uses of tokio (its sync types, I/O traits,
//! TLS) is runtime-agnostic. What needs tokio's runtime (timers, opening a
//! server connection, blocking work) runs on the runtime that started the
//! workers, which the workers enter: a server opened on a worker joins the
//! worker's epoll set once connected ([`Socket::from_tcp`]), and one that a
//! session gets from another worker moves to its own first
//! ([`crate::server::Server::adopt`]).

mod event_loop;
mod socket;

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::runtime::Handle;

use event_loop::{Shared, Task};
pub use socket::{CHUNK, Socket};

/// Which worker a thread is: `0` for any thread that is not a worker (the
/// control thread that accepts clients and keeps pools, a test's runtime).
pub type WorkerId = u16;

thread_local! {
    static CURRENT: Cell<WorkerId> = const { Cell::new(0) };
    /// When this worker's loop last woke; `None` off the workers.
    static WOKE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The worker this code runs on (`0`: not a worker).
pub fn current() -> WorkerId {
    CURRENT.get()
}

/// The time, as a session on a worker sees it: when the worker's loop last
/// woke (from `epoll_wait`, or for work from other threads), which is when
/// the bytes that now run arrived. One clock read per wake-up serves every
/// transaction boundary met before the next one, as PgBouncer's cached time
/// does; a loop that keeps running looks (and reads the clock) every few
/// dozen polls. Off the workers: the clock.
pub fn now() -> Instant {
    WOKE.get().unwrap_or_else(Instant::now)
}

/// Called by a worker's loop each time it wakes.
fn woke() {
    WOKE.set(Some(Instant::now()));
}

/// Running worker threads. Dropping this stops them: their sessions end.
pub struct Workers {
    workers: Vec<Arc<Shared>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers (`0`: one per core) that use `runtime` for
    /// their timers, connects and blocking work.
    pub fn start(count: u16, runtime: &Handle) -> std::io::Result<Workers> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => usize::from(n),
        };
        let mut workers = Workers {
            workers: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
        };
        for i in 0..count {
            let id = WorkerId::try_from(i + 1).expect("config caps workers");
            let shared = Shared::new(id)?;
            let runtime = runtime.clone();
            let looped = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("pgtenant-worker-{id}"))
                .spawn(move || {
                    CURRENT.set(id);
                    let _entered = runtime.enter();
                    event_loop::run(looped);
                })?;
            workers.workers.push(shared);
        }
        Ok(workers)
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs `future` on the next worker, round-robin.
    pub fn spawn<F>(&self, future: F) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let home = &self.workers[i];
        let task = Task::new(Box::pin(future), Arc::clone(home));
        home.inject(Arc::clone(&task));
        AbortHandle(task)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.stop();
        }
    }
}

/// Ends a spawned task: its future is dropped on its worker (nothing
/// happens if it has finished).
#[derive(Clone)]
pub struct AbortHandle(Arc<Task>);

impl AbortHandle {
    pub fn abort(&self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    use tokio::time::{sleep_until, timeout};

    /// A runtime to keep the workers' timers, driven by a thread of its own.
    fn timers() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// `future`'s output, run on a worker.
    fn on<T: Send + 'static>(
        workers: &Workers,
        future: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        workers.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn tasks_run_on_numbered_workers_in_turn() {
        let timers = timers();
        let workers = Workers::start(2, timers.handle()).unwrap();
        assert_eq!(workers.len(), 2);
        let ids: Vec<WorkerId> = (0..4).map(|_| on(&workers, async { current() })).collect();
        assert_eq!(ids, vec![1, 2, 1, 2]);
        assert_eq!(current(), 0);
    }

    #[test]
    fn a_workers_time_is_when_its_loop_last_woke() {
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let (first, busy, later) = on(&workers, async {
            let first = now();
            // Work within one wake-up does not move the time on...
            std::thread::sleep(Duration::from_millis(20));
            let busy = now();
            // ...a wake-up does (a timer's wake comes from another thread).
            tokio::time::sleep(Duration::from_millis(20)).await;
            (first, busy, now())
        });
        assert_eq!(first, busy);
        assert!(
            later - first >= Duration::from_millis(40),
            "{:?}",
            later - first
        );
        // Off the workers it is the clock.
        let before = now();
        std::thread::sleep(Duration::from_millis(5));
        assert!(now() - before >= Duration::from_millis(5));
    }

    #[test]
    fn dropping_the_workers_ends_their_tasks() {
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        let _task = workers.spawn(async move {
            let _alive = tx;
            std::future::pending::<()>().await
        });
        drop(workers);
        // The sender drops with the task when its worker stops.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn a_task_woken_after_its_worker_stopped_is_not_kept() {
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let home = Arc::downgrade(&workers.workers[0]);
        let (tx, rx) = mpsc::channel::<std::task::Waker>();
        let task = workers.spawn(std::future::poll_fn(move |cx| {
            let _ = tx.send(cx.waker().clone());
            std::task::Poll::<()>::Pending
        }));
        let waker = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(workers);
        // The worker's thread lets go of its state once it has stopped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&home.upgrade().unwrap()) > 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        waker.wake();
        drop(task);
        assert!(
            home.upgrade().is_none(),
            "the stopped worker's state is kept"
        );
    }

    #[test]
    fn an_aborted_task_is_dropped_on_its_worker() {
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let (tx, rx) = mpsc::channel::<WorkerId>();
        struct Dropped(mpsc::Sender<WorkerId>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(current());
            }
        }
        let task = workers.spawn(async move {
            let _dropped = Dropped(tx);
            std::future::pending::<()>().await
        });
        // It has started (and is pending) before the abort.
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx.try_recv().is_err());
        task.abort();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
    }

    #[test]
    fn a_panicking_task_ends_alone() {
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let (tx, rx) = mpsc::channel::<&str>();
        let survivor = tx.clone();
        // Pending first, so it is polled again after the other one panics.
        workers.spawn(async move {
            let mut once = false;
            std::future::poll_fn(|cx| {
                if std::mem::replace(&mut once, true) {
                    std::task::Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
            })
            .await;
            let _ = survivor.send("survived");
        });
        workers.spawn(async move {
            let _dropped = tx;
            panic!("a session's bug");
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("survived"));
        // The worker still takes new work.
        assert_eq!(on(&workers, async { current() }), 1);
    }

    #[test]
    fn a_socket_wakes_its_task_and_a_reader_that_never_waits_yields() {
        use tokio::io::AsyncReadExt;
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let (mut near, far) = tcp_pair();
        // All in the socket before the reader starts: no read of it waits.
        const LEN: usize = 32 * 1024;
        std::io::Write::write_all(&mut near, &[7u8; LEN]).unwrap();
        let (tx, rx) = mpsc::channel::<&str>();
        let ticks = tx.clone();
        workers.spawn(async move {
            let mut socket = Socket::from_std(far).unwrap();
            let mut byte = [0u8; 1];
            for _ in 0..LEN {
                socket.read_exact(&mut byte).await.unwrap();
            }
            let _ = tx.send("read all");
            // Now it waits, until the socket's event wakes it.
            let n = socket.read(&mut byte).await.unwrap();
            let _ = tx.send(if n == 0 { "eof" } else { "more" });
        });
        workers.spawn(async move {
            let _ = ticks.send("ticked");
        });
        let next = || rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(next(), Ok("ticked"));
        assert_eq!(next(), Ok("read all"));
        std::thread::sleep(Duration::from_millis(50));
        drop(near);
        assert_eq!(next(), Ok("eof"));
    }

    /// A connected loopback pair: (far end, the worker's end).
    fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let near = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (near, listener.accept().unwrap().0)
    }

    #[test]
    fn a_read_into_a_buffer_without_room_gets_bytes_not_eof() {
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let (mut near, far) = tcp_pair();
        std::io::Write::write_all(&mut near, b"hello").unwrap();
        let (socket, now) = on(&workers, async move {
            let mut socket = Socket::from_std(far).unwrap();
            let mut none = bytes::BytesMut::new();
            socket.read_now(&mut none).unwrap();
            (socket, none)
        });
        assert_eq!(&now[..], b"hello");
        std::io::Write::write_all(&mut near, b"world").unwrap();
        let polled = on(&workers, async move {
            let mut socket = socket;
            let mut none = bytes::BytesMut::new();
            std::future::poll_fn(|cx| socket.poll_read_into(cx, &mut none))
                .await
                .unwrap();
            none
        });
        assert_eq!(&polled[..], b"world");
    }

    #[test]
    fn a_write_to_a_full_socket_waits_for_room_and_loses_nothing() {
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let (mut near, far) = tcp_pair();
        // More than the socket buffers hold: the worker's write must wait
        // for the reader's progress (an EPOLLOUT event) and go on.
        let bytes: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        let sent = bytes.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut near, &mut got).unwrap();
            got
        });
        let wrote = on(&workers, async move {
            let mut socket = Socket::from_std(far).unwrap();
            let took = socket.write_now(&sent).unwrap();
            crate::net::send_now(&mut socket, &sent[took..])
                .await
                .map(|()| took)
        });
        assert!(wrote.is_ok(), "{wrote:?}");
        assert_eq!(reader.join().unwrap(), bytes);
    }

    #[test]
    fn timers_on_a_worker_fire_on_the_runtime_it_entered() {
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let (late, early, slept) = on(&workers, async {
            let late = timeout(Duration::from_millis(10), std::future::pending::<()>()).await;
            // Pending once, so its timer is set before it finishes.
            let mut polled = false;
            let work = std::future::poll_fn(|cx: &mut std::task::Context<'_>| {
                if std::mem::replace(&mut polled, true) {
                    std::task::Poll::Ready(7)
                } else {
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
            });
            let early = timeout(Duration::from_secs(3600), work).await;
            let started = Instant::now();
            sleep_until((started + Duration::from_millis(30)).into()).await;
            (late, early, started.elapsed())
        });
        assert!(late.is_err(), "the 10 ms timeout fired");
        assert_eq!(early.ok(), Some(7));
        assert!(slept >= Duration::from_millis(30), "{slept:?}");
    }
}
