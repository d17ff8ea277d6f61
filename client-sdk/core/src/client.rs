//! Opening the device store, enrollment, and wiping.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use automerge::ActorId;
use doorstep_protocol::TenantId;
use serde::Deserialize;
use tokio::sync::{Mutex, Notify, watch};

use crate::error::ClientError;
use crate::replicas::Replicas;
use crate::store::LocalStore;
use crate::sync::{SyncStatus, transport::Transport};

/// Where the device keeps its data and which server it talks to.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub data_dir: PathBuf,
    /// `http://host:port` or `https://host:port`.
    pub server_url: String,
    /// PEM of an extra CA to trust besides the system roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// First retry delay of the background sync after a failure.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How often the background sync runs when nothing changes locally.
    pub sync_interval: Duration,
}

impl ClientConfig {
    pub fn new(data_dir: impl Into<PathBuf>, server_url: impl Into<String>) -> Self {
        ClientConfig {
            data_dir: data_dir.into(),
            server_url: server_url.into(),
            extra_ca_pem: None,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            sync_interval: Duration::from_secs(30),
        }
    }
}

/// What enrollment returned.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Enrollment {
    pub device_id: String,
    pub branch_id: TenantId,
}

#[derive(Debug)]
pub(crate) struct Identity {
    pub device_id: String,
    pub token: String,
    pub branch: TenantId,
    pub storage_id: String,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: ClientConfig,
    pub store: LocalStore,
    pub transport: Transport,
    pub identity: std::sync::RwLock<Option<Arc<Identity>>>,
    pub replicas: Mutex<Option<Replicas>>,
    pub actor: ActorId,
    pub status: watch::Sender<SyncStatus>,
    /// Woken by every local edit, so the background sync runs soon.
    pub edited: Notify,
    /// Held while a sync runs: one at a time.
    pub syncing: Mutex<()>,
    pub stop: watch::Sender<bool>,
}

/// A device's view of its branch. Cheap to clone; all clones share state.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl Client {
    /// Opens (creating if needed) the store in `config.data_dir`.
    pub async fn open(config: ClientConfig) -> Result<Client, ClientError> {
        let store = LocalStore::open(&config.data_dir.join("device.db")).await?;
        let actor = match store.meta("actor_id").await? {
            Some(hex) => ActorId::from(
                hex::decode(&hex).map_err(|_| ClientError::Storage("bad actor id".into()))?,
            ),
            None => {
                let actor = ActorId::random();
                store
                    .set_meta(&[("actor_id", &actor.to_hex_string())])
                    .await?;
                actor
            }
        };
        let storage_id = match store.meta("storage_id").await? {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                store.set_meta(&[("storage_id", &id)]).await?;
                id
            }
        };
        let transport = Transport::new(&config.server_url, config.extra_ca_pem.as_deref())?;
        let identity = match (
            store.meta("device_id").await?,
            store.meta("token").await?,
            store.meta("branch_id").await?,
        ) {
            (Some(device_id), Some(token), Some(branch)) => Some(Arc::new(Identity {
                device_id,
                token,
                branch: branch
                    .parse()
                    .map_err(|_| ClientError::Storage("bad branch id".into()))?,
                storage_id: storage_id.clone(),
            })),
            _ => None,
        };
        let replicas = identity
            .as_ref()
            .map(|i| Replicas::new(store.clone(), i.branch, actor.clone()));
        let revoked = store.meta("revoked").await?;
        let initial = match revoked {
            Some(reason) => SyncStatus::Revoked { reason },
            None => SyncStatus::Offline {
                reason: "not synced yet".into(),
            },
        };
        let (status, _) = watch::channel(initial);
        let (stop, _) = watch::channel(false);
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                store,
                transport,
                identity: std::sync::RwLock::new(identity),
                replicas: Mutex::new(replicas),
                actor,
                status,
                edited: Notify::new(),
                syncing: Mutex::new(()),
                stop,
            }),
        })
    }

    /// Exchanges a one-time enrollment code for this device's token, stores
    /// it, and registers this device's actor id with the server.
    pub async fn enroll(&self, code: &str) -> Result<Enrollment, ClientError> {
        if self.is_enrolled() {
            // Its actor id is registered to the old device: wipe first.
            return Err(ClientError::Invalid(
                "this device is already enrolled; wipe it to enroll again".into(),
            ));
        }
        #[derive(Deserialize)]
        struct Enrolled {
            device_id: String,
            branch_id: String,
            token: String,
        }
        let response = self
            .inner
            .transport
            .http()
            .post(self.inner.transport.url("/api/v1/enroll"))
            .json(&serde_json::json!({ "code": code }))
            .send()
            .await?;
        if !response.status().is_success() {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            return Err(ClientError::Refused(
                body["error"]
                    .as_str()
                    .unwrap_or("enrollment refused")
                    .to_owned(),
            ));
        }
        let enrolled: Enrolled = response.json().await?;
        let branch: TenantId = enrolled
            .branch_id
            .parse()
            .map_err(|_| ClientError::Network("the server sent a bad branch id".into()))?;
        self.inner
            .store
            .set_meta(&[
                ("device_id", &enrolled.device_id),
                ("token", &enrolled.token),
                ("branch_id", &enrolled.branch_id),
            ])
            .await?;
        let storage_id = self
            .inner
            .store
            .meta("storage_id")
            .await?
            .unwrap_or_default();
        let identity = Arc::new(Identity {
            device_id: enrolled.device_id.clone(),
            token: enrolled.token,
            branch,
            storage_id,
        });
        if let Ok(mut slot) = self.inner.identity.write() {
            *slot = Some(identity.clone());
        }
        *self.inner.replicas.lock().await = Some(Replicas::new(
            self.inner.store.clone(),
            branch,
            self.inner.actor.clone(),
        ));
        self.register_actor(&identity).await?;
        Ok(Enrollment {
            device_id: enrolled.device_id,
            branch_id: branch,
        })
    }

    pub(crate) async fn register_actor(&self, identity: &Identity) -> Result<(), ClientError> {
        let response = self
            .inner
            .transport
            .http()
            .post(self.inner.transport.url("/api/v1/device/actors"))
            .bearer_auth(&identity.token)
            .json(&serde_json::json!({ "actor_id": self.inner.actor.to_hex_string() }))
            .send()
            .await?;
        match response.status().as_u16() {
            200..=299 => {
                self.inner
                    .store
                    .set_meta(&[("actor_registered", "1")])
                    .await?;
                Ok(())
            }
            401 => Err(ClientError::Revoked(
                "the server no longer knows this device".into(),
            )),
            status => Err(ClientError::Refused(format!(
                "registering the actor id: HTTP {status}"
            ))),
        }
    }

    pub(crate) fn identity(&self) -> Result<Arc<Identity>, ClientError> {
        self.inner
            .identity
            .read()
            .ok()
            .and_then(|i| i.clone())
            .ok_or(ClientError::NotEnrolled)
    }

    pub fn is_enrolled(&self) -> bool {
        self.identity().is_ok()
    }

    pub fn device_id(&self) -> Option<String> {
        self.identity().ok().map(|i| i.device_id.clone())
    }

    pub fn branch_id(&self) -> Option<TenantId> {
        self.identity().ok().map(|i| i.branch)
    }

    /// Deletes everything this device stored (for a revoked or handed-over
    /// phone). The client is unusable afterwards.
    pub async fn wipe(self) -> Result<(), ClientError> {
        let _ = self.inner.stop.send(true);
        let _guard = self.inner.syncing.lock().await;
        *self.inner.replicas.lock().await = None;
        self.inner.store.close().await;
        for name in ["device.db", "device.db-wal", "device.db-shm"] {
            let path = self.inner.config.data_dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| {
                    ClientError::Storage(format!("removing {}: {e}", path.display()))
                })?;
            }
        }
        Ok(())
    }
}
