//! Live lists: a listener gets a query's new result whenever it changes,
//! after a local edit or a change synced from the server.
//!
//! An observer waits on the client's change revision (bumped after every
//! persisted change), recomputes its query, and calls the listener only if
//! the result differs from the last one sent; the first result is always
//! sent. The returned [`Observation`] stops it when dropped or cancelled.
//!
//! The `observe_*` calls spawn onto the current Tokio runtime, so they must
//! be made from inside one (as every other call of the SDK is). Listeners
//! run on the runtime's threads: they should hand the list to the UI and
//! return, not block.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use doorstep_protocol::Date;
use doorstep_protocol::schema::RecordId;
use doorstep_protocol::schema::log::Visit;
use doorstep_protocol::schema::roster::Member;

use crate::client::Client;
use crate::error::ClientError;
use crate::queries::{MemberFilter, VisitDays};

/// Called with the whole new list each time it changes.
pub type Listener<T> = Arc<dyn Fn(Vec<T>) + Send + Sync>;

/// Whether the observation still runs, and which thread is inside its
/// listener: dropping the handle waits for a call in progress (so nothing
/// arrives after the drop returns) unless it is that call dropping it.
#[derive(Default)]
struct Gate {
    cancelled: bool,
    in_listener: Option<ThreadId>,
}

/// A running observation. Dropping it (or [`Observation::cancel`]) stops
/// it: the listener is not called again once that returns.
#[must_use = "dropping the handle stops the observation"]
pub struct Observation {
    task: tokio::task::JoinHandle<()>,
    gate: Arc<(Mutex<Gate>, std::sync::Condvar)>,
}

impl std::fmt::Debug for Observation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observation").finish_non_exhaustive()
    }
}

impl Observation {
    /// Stops the observation now.
    pub fn cancel(self) {
        drop(self)
    }

    fn stop(&self) {
        let (lock, idle) = &*self.gate;
        // A poisoned gate means a listener panicked: stopping still works.
        let mut gate = lock.lock().unwrap_or_else(|e| e.into_inner());
        gate.cancelled = true;
        let me = std::thread::current().id();
        while gate.in_listener.is_some_and(|t| t != me) {
            gate = idle.wait(gate).unwrap_or_else(|e| e.into_inner());
        }
        drop(gate);
        self.task.abort();
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Client {
    /// Runs `query` now and after every persisted change, sending each
    /// result that differs from the last one sent.
    fn observe<T, F, Fut>(&self, query: F, listener: Listener<T>) -> Observation
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<T>, ClientError>> + Send,
    {
        let gate: Arc<(Mutex<Gate>, std::sync::Condvar)> = Arc::default();
        let mut changes = self.inner.changed.subscribe();
        let client = self.clone();
        let task_gate = gate.clone();
        let task = tokio::spawn(async move {
            let mut last: Option<Vec<T>> = None;
            loop {
                // Mark the revision seen before reading, so a change that
                // lands during the query wakes the next round.
                changes.borrow_and_update();
                match query(client.clone()).await {
                    Ok(result) if last.as_ref() != Some(&result) => {
                        if !call(&task_gate, &listener, result.clone()) {
                            return;
                        }
                        last = Some(result);
                    }
                    Ok(_) => {}
                    // The next change may fix it (a device being enrolled);
                    // a listener wants lists, not errors.
                    Err(e) => tracing::warn!(error = %e, "an observed query failed"),
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        Observation { task, gate }
    }

    /// Members matching `filter`, whenever the list changes.
    pub fn observe_members(
        &self,
        filter: MemberFilter,
        listener: Listener<(RecordId, Member)>,
    ) -> Observation {
        self.observe(
            move |client| {
                let filter = filter.clone();
                async move { client.members(&filter).await }
            },
            listener,
        )
    }

    /// Visits of a day ("today's visits") or month, whenever they change.
    pub fn observe_visits(
        &self,
        days: VisitDays,
        listener: Listener<(RecordId, Visit)>,
    ) -> Observation {
        self.observe(
            move |client| async move { client.visits_on(days).await },
            listener,
        )
    }

    /// Follow-ups not done and due on or before `on`, whenever they change.
    pub fn observe_follow_ups_due(
        &self,
        on: Date,
        listener: Listener<(RecordId, Visit)>,
    ) -> Observation {
        self.observe(
            move |client| async move { client.follow_ups_due(on).await },
            listener,
        )
    }
}

/// Calls the listener unless the observation was cancelled; false if it was.
fn call<T>(
    gate: &(Mutex<Gate>, std::sync::Condvar),
    listener: &Listener<T>,
    value: Vec<T>,
) -> bool {
    let (lock, idle) = gate;
    {
        let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
        if g.cancelled {
            return false;
        }
        g.in_listener = Some(std::thread::current().id());
    }
    // Not under the lock: the listener may cancel its own observation.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| listener(value)));
    let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
    g.in_listener = None;
    idle.notify_all();
    if outcome.is_err() {
        tracing::error!("an observation's listener panicked");
    }
    !g.cancelled
}
