//! Connection statuses waiting to be written, one per connection (the latest), and the few
//! permits their writers share.
//!
//! Why a queue: in a burst of new connections the API server's CPU is the limit, and the
//! status write of a custom resource is its most expensive request (server-side apply,
//! schema coercion and managed fields; BENCHMARKS.md has the profile). A reconcile hands
//! its status over and ends, so the writes between an apply and the workload's token (claim,
//! chain, workload Secret) do not wait behind other connections' statuses; those follow,
//! a few at a time. A newer status replaces a pending one: it is written once.

use crate::crd::{ExactConnection, ExactConnectionStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Status writes in flight at once. Enough for steady refreshing (10,000 connections make
/// ~17 status writes a second, each a few ms), few beside the 32 reconciles of a burst
/// (4 -> 2, together with the first Event in the background: a burst of 1,000 measured
/// p99 apply -> Secret 4.7-5.2 s -> 3.6-4.2 s, Ready 1 s later).
pub const STATUS_WRITERS: usize = 2;

/// A status to write.
#[derive(Clone, Debug)]
pub struct PendingStatus {
    /// The connection as the reconcile that projected it saw it.
    pub conn: Arc<ExactConnection>,
    /// The status before the first of the statuses this one replaced (what the API server
    /// holds, as far as this process knows).
    pub before: ExactConnectionStatus,
    /// The status to write.
    pub status: ExactConnectionStatus,
}

/// The pending statuses, by connection uid.
pub struct StatusQueue {
    pending: Mutex<HashMap<String, PendingStatus>>,
    permits: Semaphore,
}

impl Default for StatusQueue {
    fn default() -> Self {
        StatusQueue {
            pending: Mutex::new(HashMap::new()),
            permits: Semaphore::new(STATUS_WRITERS),
        }
    }
}

impl StatusQueue {
    /// Queues `status` for the connection `uid`, replacing a pending one (whose `before`
    /// stays). True when none was pending: the caller starts its writer (one per uid).
    pub fn queue(
        &self,
        uid: &str,
        conn: Arc<ExactConnection>,
        before: ExactConnectionStatus,
        status: ExactConnectionStatus,
    ) -> bool {
        let Ok(mut pending) = self.pending.lock() else {
            return false;
        };
        match pending.get_mut(uid) {
            Some(p) => {
                p.conn = conn;
                p.status = status;
                false
            }
            None => {
                let entry = PendingStatus {
                    conn,
                    before,
                    status,
                };
                pending.insert(uid.to_string(), entry);
                true
            }
        }
    }

    /// The pending status of `uid`, if any.
    pub fn get(&self, uid: &str) -> Option<PendingStatus> {
        self.pending.lock().ok()?.get(uid).cloned()
    }

    /// `status` was written for `uid`: its entry goes unless a newer status replaced it
    /// meanwhile (then false: the writer writes that one next, from `status` as before).
    pub fn written(&self, uid: &str, status: &ExactConnectionStatus) -> bool {
        let Ok(mut pending) = self.pending.lock() else {
            return true;
        };
        match pending.get_mut(uid) {
            Some(p) if &p.status != status => {
                p.before = status.clone();
                false
            }
            _ => {
                pending.remove(uid);
                true
            }
        }
    }

    /// Gives up the pending status of `uid` (the connection is gone).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(uid);
        }
    }

    /// How many statuses wait.
    pub fn len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A writer's turn (held for one write).
    pub async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        self.permits.acquire().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(calls: u32) -> ExactConnectionStatus {
        ExactConnectionStatus {
            token_calls24h: Some(calls),
            ..Default::default()
        }
    }

    fn conn() -> Arc<ExactConnection> {
        Arc::new(ExactConnection::new(
            "c",
            serde_json::from_value(serde_json::json!({"clientRef": {"name": "x"}})).expect("spec"),
        ))
    }

    #[test]
    fn one_writer_per_connection_writes_the_latest_status_once() {
        let q = StatusQueue::default();
        assert!(
            q.queue("u", conn(), status(0), status(1)),
            "a writer starts"
        );
        assert!(
            !q.queue("u", conn(), status(1), status(2)),
            "the same writer"
        );
        assert!(
            q.queue("v", conn(), status(0), status(9)),
            "another connection"
        );
        let p = q.get("u").expect("pending");
        assert_eq!((p.before, p.status), (status(0), status(2)));
        assert_eq!(q.len(), 2);

        // Written while a newer one came: it stays, measured from the written one.
        let taken = q.get("u").expect("pending").status;
        assert!(!q.queue("u", conn(), status(2), status(3)));
        assert!(!q.written("u", &taken), "status 3 is still to write");
        let p = q.get("u").expect("pending");
        assert_eq!((p.before, p.status), (status(2), status(3)));
        assert!(q.written("u", &status(3)));
        assert!(q.get("u").is_none());
        assert!(q.queue("u", conn(), status(3), status(4)), "a new writer");

        q.forget("v");
        assert!(q.get("v").is_none());
        assert_eq!(q.len(), 1);
    }
}
