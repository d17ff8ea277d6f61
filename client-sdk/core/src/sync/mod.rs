//! The sync engine.
//!
//! [`Client::sync_now`] opens one WebSocket, syncs every document of the
//! branch to quiescence (all documents in flight at once), saves the sync
//! states and closes. [`Client::start_background_sync`] runs it again after
//! every local edit and on an interval, and after a failure retries with
//! exponential backoff and jitter, so a device that regains signal syncs by
//! itself. Status changes are published to observers.

pub(crate) mod transport;

use std::collections::HashSet;
use std::time::Duration;

use doorstep_protocol::schema::DocumentKind;
use doorstep_protocol::wire::{self, Limits, Message, PeerMetadata};
use doorstep_protocol::{DocumentId, Month, PeerId, StorageId};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::client::Client;
use crate::error::ClientError;
use crate::replicas::server_peer;
use transport::Socket;

/// Where syncing stands, for the app's status line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum SyncStatus {
    /// No connection to the server (no signal, server down).
    Offline {
        reason: String,
    },
    Syncing,
    /// Everything was exchanged at this time (seconds since the epoch).
    UpToDate {
        at_unix_secs: i64,
    },
    /// Something other than the network went wrong.
    Error {
        reason: String,
    },
    /// The server revoked this device; syncing has stopped for good.
    Revoked {
        reason: String,
    },
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct SyncReport {
    pub documents: usize,
    /// Local changes the server acknowledged during this sync.
    pub changes_sent: usize,
    /// Changes received from the server and stored.
    pub changes_received: usize,
    pub bytes_sent: usize,
    pub bytes_received: usize,
}

/// Stops the background sync when dropped or stopped.
#[derive(Debug)]
pub struct BackgroundSync {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl BackgroundSync {
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

const CLOSE_UNAUTHORIZED: u16 = 4401;
const CLOSE_REVOKED: u16 = 4403;
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest message accepted from the server; a first sync of a big
/// roster arrives as one whole-document message.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// True when the server has all our changes and we have all of its.
fn in_sync(replica: &crate::replicas::Replica) -> bool {
    let session = &replica.session;
    let peer = server_peer();
    let known = session.their_heads(&peer).is_some_and(|h| {
        h.iter()
            .all(|h| session.document().get_change_meta_by_hash(h).is_some())
    });
    known && session.peer_covers(&peer, &session.heads())
}

#[derive(Deserialize)]
struct ListedDocument {
    document_id: String,
    kind: String,
    month: Option<String>,
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Client {
    pub fn status(&self) -> SyncStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe_status(&self) -> watch::Receiver<SyncStatus> {
        self.inner.status.subscribe()
    }

    fn set_status(&self, status: SyncStatus) {
        self.inner.status.send_replace(status);
    }

    /// Local changes the server has not yet acknowledged: the server's heads,
    /// as last seen, do not cover them. Zero means nothing can be lost by
    /// wiping the device.
    pub async fn pending_changes(&self) -> Result<usize, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        replicas.all().await?;
        Ok(replicas.pending())
    }

    /// Syncs every document now. One sync runs at a time.
    pub async fn sync_now(&self) -> Result<SyncReport, ClientError> {
        let _one_at_a_time = self.inner.syncing.lock().await;
        if let Some(reason) = self.inner.store.meta("revoked").await? {
            return Err(ClientError::Revoked(reason));
        }
        self.set_status(SyncStatus::Syncing);
        let result = self.sync_once().await;
        match &result {
            Ok(_) => self.set_status(SyncStatus::UpToDate {
                at_unix_secs: now_secs(),
            }),
            Err(ClientError::Revoked(reason)) => {
                self.inner.store.set_meta(&[("revoked", reason)]).await?;
                self.set_status(SyncStatus::Revoked {
                    reason: reason.clone(),
                });
            }
            Err(ClientError::Network(reason)) => self.set_status(SyncStatus::Offline {
                reason: reason.clone(),
            }),
            Err(e) => self.set_status(SyncStatus::Error {
                reason: e.to_string(),
            }),
        }
        result
    }

    async fn server_documents(
        &self,
        token: &str,
    ) -> Result<Vec<(DocumentId, DocumentKind)>, ClientError> {
        let response = self
            .inner
            .transport
            .http()
            .get(self.inner.transport.url("/api/v1/device/documents"))
            .bearer_auth(token)
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ClientError::Revoked(
                "the server no longer accepts this device's token".into(),
            ));
        }
        let listed: Vec<ListedDocument> = response.error_for_status()?.json().await?;
        Ok(listed
            .into_iter()
            .filter_map(|d| {
                let id = d.document_id.parse().ok()?;
                let kind = match (d.kind.as_str(), d.month) {
                    ("roster", _) => DocumentKind::Roster,
                    ("log", Some(m)) => DocumentKind::MonthlyLog(m.parse::<Month>().ok()?),
                    _ => return None,
                };
                Some((id, kind))
            })
            .collect())
    }

    async fn sync_once(&self) -> Result<SyncReport, ClientError> {
        let identity = self.identity()?;
        if self.inner.store.meta("actor_registered").await?.is_none() {
            self.register_actor(&identity).await?;
        }
        let listed = self.server_documents(&identity.token).await?;
        let mut socket = self.inner.transport.connect(&identity.token).await?;
        let me = PeerId::new(format!("device-{}", uuid::Uuid::new_v4()))
            .map_err(|e| ClientError::Storage(e.to_string()))?;
        let server = handshake(&mut socket, &me, &identity.storage_id).await?;

        // The replicas are locked only between network waits, so the app can
        // keep editing and reading while a slow sync runs.
        let (documents, pending_before) = {
            let mut guard = self.replicas().await?;
            let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
            for (id, kind) in &listed {
                replicas.get(*id, *kind).await?;
            }
            let documents = replicas.all().await?;
            for id in &documents {
                replicas.reconnect(*id)?;
            }
            (documents, replicas.pending())
        };
        let mut report = SyncReport {
            documents: documents.len(),
            ..SyncReport::default()
        };
        let mut waiting: HashSet<DocumentId> = documents.iter().copied().collect();
        let mut requested: HashSet<DocumentId> = HashSet::new();
        let mut unavailable: HashSet<DocumentId> = HashSet::new();
        loop {
            // Drop what is done; say whatever is left to say (including
            // edits made meanwhile) for the rest.
            let outgoing = {
                let mut guard = self.replicas().await?;
                let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
                waiting.retain(|id| replicas.replica(*id).is_some_and(|r| !in_sync(r)));
                let mut outgoing = Vec::new();
                for id in &waiting {
                    let Some(replica) = replicas.replica(*id) else {
                        continue;
                    };
                    if let Some(data) = replica.session.generate(&server_peer(), 0) {
                        outgoing.push((*id, data));
                    }
                }
                outgoing
            };
            if waiting.is_empty() {
                break;
            }
            for (document_id, data) in outgoing {
                report.bytes_sent += data.len();
                let message = if requested.insert(document_id) {
                    Message::Request {
                        sender_id: me.clone(),
                        target_id: server.clone(),
                        document_id,
                        data,
                    }
                } else {
                    Message::Sync {
                        sender_id: me.clone(),
                        target_id: server.clone(),
                        document_id,
                        data,
                    }
                };
                send(&mut socket, &message).await?;
            }
            let bytes = receive(&mut socket).await?;
            report.bytes_received += bytes.len();
            match wire::decode(
                &bytes,
                &Limits {
                    max_frame_bytes: MAX_MESSAGE_BYTES,
                    ..Limits::default()
                },
            )
            .map_err(|e| ClientError::Network(e.to_string()))?
            {
                Message::Sync {
                    document_id, data, ..
                } => {
                    let mut guard = self.replicas().await?;
                    let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
                    if replicas.replica(document_id).is_some() {
                        report.changes_received += replicas.receive(document_id, &data).await?;
                    }
                }
                Message::DocUnavailable { document_id, .. } => {
                    tracing::warn!(document = %document_id, "the server does not have this document for us");
                    waiting.remove(&document_id);
                    unavailable.insert(document_id);
                }
                Message::Error { message, .. } => {
                    return Err(closing_error(&mut socket, message).await);
                }
                _ => {}
            }
        }
        {
            let mut guard = self.replicas().await?;
            let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
            for id in documents.iter().filter(|id| !unavailable.contains(id)) {
                replicas.save_sync_state(*id).await?;
            }
            report.changes_sent = pending_before.saturating_sub(replicas.pending());
        }
        let _ = socket.close(None).await;
        if let Some(id) = unavailable.iter().next() {
            // Edits in a document the server refuses would never be
            // acknowledged: say so rather than report "up to date".
            return Err(ClientError::Refused(format!(
                "the server does not accept document {id}"
            )));
        }
        Ok(report)
    }

    /// Syncs in the background: after every local edit, every
    /// `sync_interval`, and after failures with exponential backoff and
    /// jitter. Stops for good when the device is revoked.
    pub fn start_background_sync(&self) -> BackgroundSync {
        let (stop, mut stopped) = watch::channel(false);
        let mut global_stop = self.inner.stop.subscribe();
        let client = self.clone();
        let task = tokio::spawn(async move {
            let config = &client.inner.config;
            let mut failures: u32 = 0;
            loop {
                if *stopped.borrow() || *global_stop.borrow() {
                    return;
                }
                let wait = match client.sync_now().await {
                    Ok(_) => {
                        failures = 0;
                        None
                    }
                    Err(ClientError::Revoked(_)) => return,
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let delay = backoff(config.backoff_initial, config.backoff_max, failures);
                        tracing::info!(error = %e, ?delay, "sync failed; retrying");
                        Some(delay)
                    }
                };
                match wait {
                    Some(delay) => tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped.changed() => return,
                        _ = global_stop.changed() => return,
                    },
                    None => tokio::select! {
                        _ = client.inner.edited.notified() => {}
                        _ = tokio::time::sleep(config.sync_interval) => {}
                        _ = stopped.changed() => return,
                        _ = global_stop.changed() => return,
                    },
                }
            }
        });
        BackgroundSync {
            stop,
            task: Some(task),
        }
    }
}

/// Delay before retry number `failures`: doubling from `initial` up to
/// `max`, then "equal jitter" (between half and all of it) so that a district's
/// phones regaining signal together do not all retry at once.
pub(crate) fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let full = initial.saturating_mul(1u32 << exponent).min(max);
    let half = full / 2;
    half + full
        .saturating_sub(half)
        .mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

async fn send(socket: &mut Socket, message: &Message) -> Result<(), ClientError> {
    socket
        .send(WsMessage::Binary(wire::encode(message).into()))
        .await
        .map_err(|e| ClientError::Network(e.to_string()))
}

/// The next binary frame; a close frame becomes the error it stands for.
async fn receive(socket: &mut Socket) -> Result<Vec<u8>, ClientError> {
    loop {
        let frame = tokio::time::timeout(RECEIVE_TIMEOUT, socket.next())
            .await
            .map_err(|_| ClientError::Network("the server stopped answering".into()))?;
        match frame {
            Some(Ok(WsMessage::Binary(bytes))) => return Ok(bytes.to_vec()),
            Some(Ok(WsMessage::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(close_error(code, reason));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ClientError::Network(e.to_string())),
            None => return Err(ClientError::Network("the connection closed".into())),
        }
    }
}

fn close_error(code: u16, reason: String) -> ClientError {
    match code {
        CLOSE_REVOKED | CLOSE_UNAUTHORIZED => ClientError::Revoked(reason),
        1002 | 1009 => ClientError::Refused(reason),
        _ => ClientError::Network(format!("closed by the server ({code}): {reason}")),
    }
}

/// After an `error` message the server closes; its close code says why.
async fn closing_error(socket: &mut Socket, message: String) -> ClientError {
    match receive(socket).await {
        Err(ClientError::Revoked(_)) => ClientError::Revoked(message),
        Err(ClientError::Refused(_)) => ClientError::Refused(message),
        _ => ClientError::Network(message),
    }
}

async fn handshake(
    socket: &mut Socket,
    me: &PeerId,
    storage_id: &str,
) -> Result<PeerId, ClientError> {
    let join = Message::Join {
        sender_id: me.clone(),
        supported_protocol_versions: vec![wire::PROTOCOL_VERSION.into()],
        peer_metadata: Some(PeerMetadata {
            storage_id: StorageId::new(storage_id).ok(),
            is_ephemeral: false,
        }),
    };
    send(socket, &join).await?;
    let bytes = receive(socket).await?;
    match wire::decode(&bytes, &Limits::default())
        .map_err(|e| ClientError::Network(e.to_string()))?
    {
        Message::Peer { sender_id, .. } => Ok(sender_id),
        Message::Error { message, .. } => Err(closing_error(socket, message).await),
        other => Err(ClientError::Network(format!(
            "expected peer, got {}",
            other.type_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for failures in 1..30 {
            let full = (initial * 2u32.pow((failures - 1).min(20))).min(max);
            let delay = backoff(initial, max, failures);
            assert!(
                delay >= full / 2 && delay <= full,
                "{failures}: {delay:?} vs {full:?}"
            );
        }
    }
}
