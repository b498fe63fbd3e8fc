//! The node's background tasks and their one owner, [`Background`] (after garage's background runner and
//! mini-redis's `Shutdown`): it starts them (heartbeats, the scrubber, the appender sweeper, the replication
//! engine's supervisor, catch-up, reporter and per-peer workers, the FastDFS door), and at shutdown tells them
//! to stop and waits for them within a deadline. Aborting a task is the fallback for one that has not ended by
//! then, not the plan.
//!
//! A task started with [`Background::spawn`] stops at the next point it waits once it is told to: at the node's
//! shutdown, or alone through its [`Task`] (a sync worker whose peer left the group).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// A stop signal, as a task sees it.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Whether the stop was signalled.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the stop is signalled (never when the signal's owner is gone without signalling).
    pub async fn wait(mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A task started by [`Background::spawn`]: stop it alone, see whether it ended. Dropping it changes nothing.
pub struct Task {
    stop: watch::Sender<bool>,
    handle: AbortHandle,
}

impl Task {
    /// Tell the task to stop (it ends at the next point it waits).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether the task ended (finished, stopped or panicked).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

struct Running {
    name: &'static str,
    handle: JoinHandle<()>,
}

struct Inner {
    /// The node's stop signal, sent by [`Background::shutdown`].
    stop: watch::Sender<bool>,
    /// Tasks started and not yet seen ended.
    running: Mutex<Vec<Running>>,
}

/// The owner of the node's background tasks; cheap to clone.
#[derive(Clone)]
pub struct Background(Arc<Inner>);

impl Default for Background {
    fn default() -> Self {
        Background(Arc::new(Inner {
            stop: watch::channel(false).0,
            running: Mutex::new(Vec::new()),
        }))
    }
}

impl Background {
    fn lock(&self) -> MutexGuard<'_, Vec<Running>> {
        self.0.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self, name: &'static str, handle: JoinHandle<()>) {
        let mut running = self.lock();
        running.retain(|r| !r.handle.is_finished());
        running.push(Running { name, handle });
    }

    /// The node's stop signal, for a task that watches it itself.
    pub fn shutdown_signal(&self) -> Shutdown {
        Shutdown(self.0.stop.subscribe())
    }

    /// Start `task`; it stops at the node's shutdown or when its [`Task`] says so, whichever comes first.
    pub fn spawn(
        &self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Task {
        let (stop, alone) = watch::channel(false);
        let node = self.shutdown_signal();
        let handle = tokio::spawn(async move {
            tokio::select! {
                () = task => {}
                () = node.wait() => tracing::debug!(task = name, "background task stopped"),
                () = Shutdown(alone).wait() => tracing::debug!(task = name, "background task stopped alone"),
            }
        });
        let abort = handle.abort_handle();
        self.keep(name, handle);
        Task {
            stop,
            handle: abort,
        }
    }

    /// Start `task`, which has a stop signal of its own and drains what it serves when told (the FastDFS door):
    /// [`Background::shutdown`] only waits for it.
    pub fn spawn_draining(
        &self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.keep(name, tokio::spawn(task));
    }

    /// Tell every task to stop and wait for them (those they start meanwhile too) until `deadline` has passed;
    /// a task still running then is aborted.
    pub async fn shutdown(&self, deadline: Duration) {
        self.0.stop.send_replace(true);
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let running = std::mem::take(&mut *self.lock());
            if running.is_empty() {
                return;
            }
            for Running { name, mut handle } in running {
                if tokio::time::timeout_at(until, &mut handle).await.is_err() {
                    tracing::warn!(
                        task = name,
                        ?deadline,
                        "background task still running after the deadline: aborted"
                    );
                    handle.abort();
                    let _ = handle.await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn shutdown_stops_every_task_and_waits_for_it() {
        let bg = Background::default();
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        // A task that never ends by itself; its end is observed through a value it drops.
        struct OnDrop(Arc<AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        // Made outside the future (moved into it): a task stopped before its first poll drops it too.
        let guard = OnDrop(flag);
        let task = bg.spawn("forever", async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        let watcher = bg.shutdown_signal();
        let drained = Arc::new(AtomicBool::new(false));
        let seen = drained.clone();
        bg.spawn_draining("draining", async move {
            watcher.wait().await;
            seen.store(true, Ordering::SeqCst);
        });
        bg.shutdown(Duration::from_secs(5)).await;
        assert!(ended.load(Ordering::SeqCst) && task.is_finished());
        assert!(
            drained.load(Ordering::SeqCst),
            "a draining task ends on its own"
        );
    }

    #[tokio::test]
    async fn a_task_stops_alone_and_one_past_the_deadline_is_aborted() {
        let bg = Background::default();
        let one = bg.spawn("one", std::future::pending());
        let other = bg.spawn("other", std::future::pending());
        one.stop();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !one.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("stopped alone");
        assert!(!other.is_finished());
        drop(other);
        bg.spawn_draining("stuck", std::future::pending());
        bg.shutdown(Duration::from_millis(50)).await;
        assert!(bg.lock().is_empty());
    }
}
