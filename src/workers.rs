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

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which worker a thread is: `0` for any thread that is not a worker (the
/// control thread that accepts clients and keeps pools, a test's runtime).
pub type WorkerId = u16;

thread_local! {
    static CURRENT: Cell<WorkerId> = const { Cell::new(0) };
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
    /// Starts `count` workers; `0` means one per core.
    pub fn start(count: u16) -> std::io::Result<Workers> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => usize::from(n),
        };
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for i in 0..count {
            let id = WorkerId::try_from(i + 1).expect("config caps workers");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("pgtenant-worker-{id}"))
                .spawn(move || {
                    CURRENT.set(id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_numbered_workers_in_turn() {
        let workers = Workers::start(2).unwrap();
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
        let workers = Workers::start(1).unwrap();
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
}
