//! Worker threads, one event loop each (thread per core, as PgBouncer is one
//! event loop): a client's session lives on one worker for its life, and so
//! do the servers it uses, whenever the pool has one there.
//!
//! Why not tokio's multi-threaded scheduler: its workers share one reactor,
//! and every event it hands out wakes an idle worker to steal it. On the
//! 2-core machines we measure on that cost about one context switch per
//! transaction (1.04 against PgBouncer's 0.47) and most of the CPU by which
//! pgtenant trailed PgBouncer. Each worker here is a current-thread runtime with
//! its own epoll set: a transaction whose client and server sit on the same
//! worker is served without waking another thread.
//!
//! A server socket is registered with the reactor of the worker that opened
//! it; a session that gets a server from another worker moves the socket to
//! its own reactor first ([`crate::server::Server::adopt`]).
//!
//! Workers have no time driver: tokio's takes a lock and walks its timer
//! wheel on every park, even with no timer set, about 500–700 instructions
//! per transaction (callgrind, 4 clients) for timers that a session sets only
//! while it logs in or connects. Those few timers ([`sleep_until`],
//! [`timeout`]) run on the runtime that started the workers, and queue
//! timeouts are swept from there too ([`crate::pool::expire_waits`]).

use std::cell::{Cell, OnceCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which worker a thread is: `0` for any thread that is not a worker (the
/// control thread that accepts clients and keeps pools, a test's runtime).
pub type WorkerId = u16;

thread_local! {
    static CURRENT: Cell<WorkerId> = const { Cell::new(0) };
    /// Set on workers: the runtime that keeps their timers.
    static TIMERS: OnceCell<Handle> = const { OnceCell::new() };
}

/// The worker this code runs on (`0`: not a worker).
pub fn current() -> WorkerId {
    CURRENT.get()
}

/// Running worker threads. Dropping this stops them: their sessions end.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped to stop the workers.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` workers (`0`: one per core) whose timers run on
    /// `timers`, a runtime with a time driver.
    pub fn start(count: u16, timers: &Handle) -> std::io::Result<Workers> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => usize::from(n),
        };
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for i in 0..count {
            let id = WorkerId::try_from(i + 1).expect("config caps workers");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            let timers = timers.clone();
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("pgtenant-worker-{id}"))
                .spawn(move || {
                    CURRENT.set(id);
                    TIMERS.with(|t| t.set(timers)).expect("a new thread");
                    let _ = runtime.block_on(stopped);
                    // Dropping the runtime here ends the sessions still on it.
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `future` on the next worker, round-robin.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(future)
    }
}

/// A deadline passed before the work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Waits until `deadline`, on any thread: on a worker the timer is set on
/// the runtime that keeps the workers' timers, elsewhere on the current one.
pub async fn sleep_until(deadline: Instant) {
    match TIMERS.with(|t| t.get().cloned()) {
        None => tokio::time::sleep_until(deadline.into()).await,
        Some(timers) => {
            // Made inside the task: a Sleep binds to the runtime it is made on.
            let timer =
                timers.spawn(async move { tokio::time::sleep_until(deadline.into()).await });
            let _ = Remote(timer).await;
        }
    }
}

/// Runs `work` until `deadline`: `Err(Elapsed)` if it has not finished by
/// then (the work is dropped). No timer is set for work that is ready at once.
pub async fn timeout_at<F: Future>(deadline: Instant, work: F) -> Result<F::Output, Elapsed> {
    tokio::select! {
        biased;
        out = work => Ok(out),
        () = sleep_until(deadline) => Err(Elapsed),
    }
}

/// [`timeout_at`] `limit` from now.
pub async fn timeout<F: Future>(limit: Duration, work: F) -> Result<F::Output, Elapsed> {
    timeout_at(Instant::now() + limit, work).await
}

/// A timer task on another runtime, cancelled when its waiter goes.
struct Remote(JoinHandle<()>);

impl Future for Remote {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime to keep the workers' timers, driven by a thread of its own.
    fn timers() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn tasks_run_on_numbered_workers_in_turn() {
        let timers = timers();
        let workers = Workers::start(2, timers.handle()).unwrap();
        assert_eq!(workers.len(), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ids: Vec<WorkerId> = rt.block_on(async {
            let mut ids = Vec::new();
            for _ in 0..4 {
                ids.push(workers.spawn(async { current() }).await.unwrap());
            }
            ids
        });
        assert_eq!(ids, vec![1, 2, 1, 2]);
        assert_eq!(current(), 0);
    }

    #[test]
    fn dropping_the_workers_ends_their_tasks() {
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let task = workers.spawn(async move {
            let _alive = tx;
            std::future::pending::<()>().await
        });
        drop(workers);
        // The sender drops with the task when the worker's runtime goes.
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
        drop(task);
    }

    #[test]
    fn timers_on_a_worker_fire_and_are_cancelled_with_their_waiter() {
        let timers = timers();
        let workers = Workers::start(1, timers.handle()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (late, early, slept) = rt
            .block_on(workers.spawn(async {
                let late = timeout(Duration::from_millis(10), std::future::pending::<()>()).await;
                // Pending once, so its timer is set before it finishes.
                let mut polled = false;
                let work = std::future::poll_fn(|cx| {
                    if std::mem::replace(&mut polled, true) {
                        Poll::Ready(7)
                    } else {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                });
                let early = timeout(Duration::from_secs(3600), work).await;
                let started = Instant::now();
                sleep_until(started + Duration::from_millis(30)).await;
                (late, early, started.elapsed())
            }))
            .unwrap();
        assert_eq!(late, Err(Elapsed));
        assert_eq!(early, Ok(7));
        assert!(slept >= Duration::from_millis(30), "{slept:?}");
        // The hour-long timer went with the work that finished first.
        let metrics = timers.handle().metrics();
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.num_alive_tasks() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(metrics.num_alive_tasks(), 0);
    }
}
