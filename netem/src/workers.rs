//! The tokio tasks and sender threads a running link owns, and how a
//! shutdown waits for them: tasks are awaited, threads joined off the async
//! threads (they notice the stop within one wait; joining blocks).

use std::sync::Mutex;
use std::thread::JoinHandle as ThreadHandle;

use tokio::task::JoinHandle;

/// A link's workers, taken once by [`Workers::join`].
#[derive(Debug, Default)]
pub(crate) struct Workers {
    tasks: Mutex<Vec<JoinHandle<()>>>,
    threads: Mutex<Vec<ThreadHandle<()>>>,
}

impl Workers {
    pub(crate) fn new(tasks: Vec<JoinHandle<()>>, threads: Vec<ThreadHandle<()>>) -> Self {
        Workers {
            tasks: Mutex::new(tasks),
            threads: Mutex::new(threads),
        }
    }

    /// Waits for every task and thread to end (call after signalling stop).
    pub(crate) async fn join(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
