//! Where syncing stands, as one value an app's status line shows: the
//! sync status, whether a live connection is up, when everything was last
//! exchanged (this run or an earlier one) and how many local changes the
//! server has not acknowledged. [`SyncStateChanges`] wakes on every change
//! of any of them, so an observer is pushed, never polls; and
//! [`Client::wait_for_first_sync`] waits for a new device's first sync.

use std::time::Duration;

use tokio::sync::watch;

use crate::client::Client;
use crate::error::ClientError;
use crate::store::LocalStore;
use crate::sync::SyncStatus;

/// The store's key for the last time everything was exchanged.
const LAST_SYNCED: &str = "last_synced_at_unix_secs";

/// Where syncing stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct SyncState {
    pub status: SyncStatus,
    /// A live connection is up (background sync, connected).
    pub connected: bool,
    /// When everything was last exchanged (seconds since the epoch), in
    /// this run or an earlier one; `None`: never.
    pub last_synced_at_unix_secs: Option<i64>,
    /// Local changes the server has not acknowledged yet.
    pub pending_changes: usize,
    /// The sync under way so far; all zero between syncs.
    pub progress: SyncProgress,
}

/// How far the sync under way has got: documents it exchanged and bytes
/// it sent and received so far (the wire's bytes, before compression is
/// undone). Pushed as frames come and go; back to zero when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct SyncProgress {
    pub documents: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Wakes when anything a [`SyncState`] shows may have changed.
#[derive(Debug)]
pub struct SyncStateChanges {
    status: watch::Receiver<SyncStatus>,
    edits: watch::Receiver<u64>,
    live: watch::Receiver<Option<crate::sync::LiveRequests>>,
    progress: watch::Receiver<SyncProgress>,
}

impl SyncStateChanges {
    /// Waits for the next change; false once the client is gone.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            r = self.status.changed() => r.is_ok(),
            r = self.edits.changed() => r.is_ok(),
            r = self.live.changed() => r.is_ok(),
            r = self.progress.changed() => r.is_ok(),
        }
    }
}

/// Keeps the time of every completed sync in the store, until the client
/// stops (`stop`) or its status channel ends, so "last synced" survives a
/// restart and "first sync" means the device's first ever.
pub(crate) fn keep_last_synced(
    mut status: watch::Receiver<SyncStatus>,
    mut stop: watch::Receiver<bool>,
    store: LocalStore,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    false
                }
                // The last sync's time is kept before stopping.
                _ = stop.changed() => status.has_changed().unwrap_or(false),
            };
            let now = status.borrow_and_update().clone();
            save_last_synced(&store, &now).await;
            if stopping || *stop.borrow() {
                break;
            }
        }
    })
}

/// Keeps the time of a completed sync (`status` up to date) in the store.
pub(crate) async fn save_last_synced(store: &LocalStore, status: &SyncStatus) {
    if let SyncStatus::UpToDate { at_unix_secs } | SyncStatus::HeldBack { at_unix_secs, .. } =
        status
        && let Err(e) = store
            .set_meta(&[(LAST_SYNCED, &at_unix_secs.to_string())])
            .await
    {
        tracing::debug!(error = %e, "could not keep the last sync time");
    }
}

impl Client {
    /// Where syncing stands now.
    pub async fn sync_state(&self) -> Result<SyncState, ClientError> {
        let status = self.status();
        let last_synced_at_unix_secs = match status {
            SyncStatus::UpToDate { at_unix_secs } | SyncStatus::HeldBack { at_unix_secs, .. } => {
                Some(at_unix_secs)
            }
            _ => self
                .inner
                .store
                .meta(LAST_SYNCED)
                .await?
                .and_then(|at| at.parse().ok()),
        };
        let pending_changes = self.pending_changes().await?;
        // Read last: the watch's guard must not be held across an await.
        let connected = self.inner.live.borrow().is_some();
        let progress = *self.inner.progress.borrow();
        Ok(SyncState {
            status,
            connected,
            last_synced_at_unix_secs,
            pending_changes,
            progress,
        })
    }

    /// Something to wait on for the next change of [`Client::sync_state`].
    pub fn sync_state_changes(&self) -> SyncStateChanges {
        SyncStateChanges {
            status: self.inner.status.subscribe(),
            edits: self.inner.changed.subscribe(),
            live: self.inner.live.subscribe(),
            progress: self.inner.progress.subscribe(),
        }
    }

    /// The sync under way, as it goes (see [`SyncProgress`]).
    pub fn sync_progress(&self) -> watch::Receiver<SyncProgress> {
        self.inner.progress.subscribe()
    }

    /// Waits until this device has completed a sync (at once if it ever
    /// did, in this run or an earlier one), for at most `limit`: true when
    /// it has, false when `limit` passed first. A revoked device fails.
    /// It does not sync itself: start background sync, or call
    /// `sync_now`, alongside.
    pub async fn wait_for_first_sync(&self, limit: Duration) -> Result<bool, ClientError> {
        let limit = limit.min(Duration::from_secs(86_400));
        let mut status = self.inner.status.subscribe();
        if self.inner.store.meta(LAST_SYNCED).await?.is_some() {
            return Ok(true);
        }
        let settled = tokio::time::timeout(
            limit,
            status.wait_for(|s| {
                matches!(
                    s,
                    SyncStatus::UpToDate { .. }
                        | SyncStatus::HeldBack { .. }
                        | SyncStatus::Revoked { .. }
                )
            }),
        )
        .await;
        match settled {
            Err(_) => Ok(false),
            Ok(Err(_)) => Err(ClientError::Storage("the client is closing".into())),
            Ok(Ok(status)) => match &*status {
                SyncStatus::Revoked { reason } => Err(ClientError::Revoked(reason.clone())),
                _ => Ok(true),
            },
        }
    }
}
