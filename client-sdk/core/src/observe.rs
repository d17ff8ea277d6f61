//! Live lists: a listener gets a query's new result whenever it changes,
//! after a local edit or a change synced from the server.
//!
//! An observer waits on the client's change revision (bumped after every
//! persisted change), recomputes its query, and calls the listener only if
//! the result differs from the last one sent; the first result is always
//! sent. The returned [`Observation`] stops it when dropped or cancelled.
//!
//! Queries run on the current Tokio runtime (the `observe_*` calls spawn
//! onto it, so they must be made from inside one, as every other call of
//! the SDK is). Listeners do not: each observation has its own thread,
//! which calls the listener with the latest result. A listener that is
//! slow or blocks delays only its own later calls, which coalesce into the
//! newest list meanwhile; it never holds a runtime worker, an edit or
//! another observation. Dropping the observation never waits for a call in
//! progress (the listener may drop it itself, or block on the thread that
//! drops it): no call starts after the drop returns.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};

use doorstep_protocol::Date;
use doorstep_protocol::schema::RecordId;
use doorstep_protocol::schema::log::Visit;
use doorstep_protocol::schema::roster::Member;

use crate::client::Client;
use crate::error::ClientError;
use crate::queries::{MemberFilter, VisitDays};

/// Called with the whole new list each time it changes.
pub type Listener<T> = Arc<dyn Fn(Vec<T>) + Send + Sync>;

/// What the query hands the listener's thread: the newest list not yet
/// delivered (a newer one replaces it), and whether the observation ended.
struct Mailbox<T> {
    slot: Mutex<Slot<T>>,
    ready: Condvar,
}

struct Slot<T> {
    latest: Option<Vec<T>>,
    cancelled: bool,
}

impl<T> Mailbox<T> {
    fn new() -> Self {
        Mailbox {
            slot: Mutex::new(Slot {
                latest: None,
                cancelled: false,
            }),
            ready: Condvar::new(),
        }
    }

    // A poisoned lock means a panic between two plain assignments: the
    // slot is still consistent, so it is used as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves `value` for the listener; false once the observation ended.
    fn post(&self, value: Vec<T>) -> bool {
        let mut slot = self.lock();
        if slot.cancelled {
            return false;
        }
        slot.latest = Some(value);
        self.ready.notify_one();
        true
    }

    fn cancel(&self) {
        let mut slot = self.lock();
        slot.cancelled = true;
        slot.latest = None;
        self.ready.notify_one();
    }

    /// The next list to deliver, waiting for one; `None` once cancelled.
    fn next(&self) -> Option<Vec<T>> {
        let mut slot = self.lock();
        loop {
            if slot.cancelled {
                return None;
            }
            if let Some(value) = slot.latest.take() {
                return Some(value);
            }
            slot = self.ready.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Whatever the list type, the handle can end the observation.
trait Cancel: Send + Sync {
    fn cancel(&self);
}

impl<T: Send> Cancel for Mailbox<T> {
    fn cancel(&self) {
        Mailbox::cancel(self)
    }
}

/// A running observation. Dropping it (or [`Observation::cancel`]) stops
/// it at once, without waiting for a listener call in progress; no call
/// starts after that returns.
#[must_use = "dropping the handle stops the observation"]
pub struct Observation {
    task: tokio::task::JoinHandle<()>,
    mailbox: Arc<dyn Cancel>,
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
}

impl Drop for Observation {
    fn drop(&mut self) {
        self.mailbox.cancel();
        self.task.abort();
    }
}

/// The listener's own thread: delivers each newest list until cancelled.
/// It holds nothing but the mailbox and the listener, so it ends on its own
/// once a call in progress at cancellation returns.
fn spawn_listener<T: Send + 'static>(
    mailbox: Arc<Mailbox<T>>,
    listener: Listener<T>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("doorstep-listener".into())
        .spawn(move || {
            while let Some(value) = mailbox.next() {
                let call = std::panic::AssertUnwindSafe(|| listener(value));
                if std::panic::catch_unwind(call).is_err() {
                    tracing::error!("an observation's listener panicked");
                }
            }
        })
        .map(|_| ())
}

impl Client {
    /// Runs `query` now and after every persisted change, handing each
    /// result that differs from the last one to the listener's thread.
    fn observe<T, F, Fut>(&self, query: F, listener: Listener<T>) -> Observation
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<T>, ClientError>> + Send,
    {
        let mailbox = Arc::new(Mailbox::new());
        let delivering = spawn_listener(mailbox.clone(), listener);
        let mut changes = self.inner.changed.subscribe();
        let client = self.clone();
        let posts = mailbox.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = delivering {
                // Nothing could ever be delivered: do not run the queries.
                tracing::error!(error = %e, "no thread for an observation's listener");
                return;
            }
            let mut last: Option<Vec<T>> = None;
            loop {
                // Mark the revision seen before reading, so a change that
                // lands during the query wakes the next round.
                changes.borrow_and_update();
                match query(client.clone()).await {
                    Ok(result) if last.as_ref() != Some(&result) => {
                        if !posts.post(result.clone()) {
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
        Observation { task, mailbox }
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
