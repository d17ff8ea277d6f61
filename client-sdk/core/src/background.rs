//! One bounded sync for background work: Android's WorkManager and iOS's
//! BGTask give an app a slice of time and take it back when they like.
//!
//! [`Client::sync_once`] syncs once and returns by its limit whatever the
//! link does (a server that accepts and never answers included), and stops
//! when cancelled (WorkManager's `onStopped`, the BGTask's expiration
//! handler). Cancelling waits for the sync to leave any step that holds
//! the documents (those are short and write what they applied to disk)
//! and then stops it at whatever network wait it is in: nothing is half
//! written, and what was not sent goes on the next sync.

use std::future::Future;
use std::time::Duration;

use crate::client::Client;
use crate::error::ClientError;
use crate::sync::{SyncReport, SyncStatus};

impl Client {
    /// Syncs once, for at most `limit`, or until `cancelled` completes
    /// ([`ClientError::Cancelled`]). Rides the live connection when one
    /// is up.
    pub async fn sync_once(
        &self,
        limit: Duration,
        cancelled: impl Future<Output = ()> + Send,
    ) -> Result<SyncReport, ClientError> {
        let client = self.clone();
        let mut sync = tokio::spawn(async move { client.sync_within(limit).await });
        tokio::select! {
            done = &mut sync => {
                done.map_err(|e| ClientError::Storage(format!("the sync task failed: {e}")))?
            }
            () = cancelled => {
                // With the documents held here, the sync is at a network
                // wait (or waiting for them): stopped there, it leaves
                // nothing half applied.
                let replicas = self.inner.replicas.lock().await;
                sync.abort();
                let _ = (&mut sync).await;
                drop(replicas);
                // A sync of its own set Syncing and never settled it.
                if self.inner.live.borrow().is_none() {
                    self.inner.status.send_if_modified(|status| {
                        if *status == SyncStatus::Syncing {
                            *status = SyncStatus::Offline {
                                reason: "the sync was cancelled".into(),
                            };
                            true
                        } else {
                            false
                        }
                    });
                }
                Err(ClientError::Cancelled)
            }
        }
    }
}
