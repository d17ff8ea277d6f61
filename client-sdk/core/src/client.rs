//! Opening the device store, enrollment, and wiping.
//!
//! A data directory has one owner: [`Client::open`] takes an exclusive lock
//! on it, so a second open in another process is refused, and a second open
//! in this process shares the first's instance. Two owners would each hold
//! documents, sync states and acknowledged heads in memory that the other
//! overwrites on disk. Each generation of the store (a restored copy is a
//! new one) edits under its own actor (see [`session_actor`]), so even a
//! store rolled back from a backup never writes two changes under one
//! actor and sequence number.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use automerge::ActorId;
use doorstep_protocol::TenantId;
use serde::Deserialize;
use tokio::sync::{Mutex, Notify, watch};

use crate::error::ClientError;
use crate::replicas::Replicas;
use crate::store::{LocalStore, StoreKey};
use crate::sync::{SyncStatus, transport::Transport};

/// Where the device keeps its data and which server it talks to.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub data_dir: PathBuf,
    /// `http://host:port` or `https://host:port`.
    pub server_url: String,
    /// The key the store is encrypted with, from the platform keystore.
    pub store_key: StoreKey,
    /// PEM of an extra CA to trust besides the bundled and system roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// First retry delay of the sync service after a failure.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How often the sync service re-checks documents while connected and
    /// idle. `None`: never; changes still flow both ways at once over the
    /// live connection.
    pub sync_interval: Option<Duration>,
    /// How many monthly logs stay in memory; older ones are loaded when
    /// read and evicted (least recently used first).
    pub max_loaded_months: usize,
    /// How long to wait for the server's next frame before the connection
    /// counts as dead (generous: 2G links stall for tens of seconds).
    pub receive_timeout: Duration,
    /// The longest `sync_now` and `checkpoint` take, whatever the link
    /// does: past it they return a network error (the checkpoint: "not
    /// safe", with the reason). Server pings do not extend it.
    pub sync_deadline: Duration,
    /// The phone's clock; dates are bounded by the server's time learned
    /// from it (see `clock`). Tests set a phone to any date here.
    pub device_clock: crate::clock::DeviceClock,
    /// For the durability tests only: the SQLite VFS the store opens on
    /// (`None`, always in an app: the platform's default). The tests use
    /// one that simulates a power cut; a VFS that skips fsync or locking
    /// would lose edits that `check_durability` cannot see, so it is not
    /// offered over the FFI and not in the docs. Export and re-keying use
    /// the default VFS.
    #[doc(hidden)]
    pub store_vfs: Option<String>,
}

impl ClientConfig {
    pub fn new(
        data_dir: impl Into<PathBuf>,
        server_url: impl Into<String>,
        store_key: StoreKey,
    ) -> Self {
        ClientConfig {
            data_dir: data_dir.into(),
            server_url: server_url.into(),
            store_key,
            extra_ca_pem: None,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            sync_interval: Some(Duration::from_secs(300)),
            max_loaded_months: 3,
            receive_timeout: Duration::from_secs(90),
            sync_deadline: Duration::from_secs(120),
            device_clock: crate::clock::DeviceClock::system(),
            store_vfs: None,
        }
    }
}

/// Open instances by canonical data directory, so a second open in this
/// process shares the first (the lock file would refuse it otherwise).
static OPEN: LazyLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// What enrollment returned.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Enrollment {
    pub device_id: String,
    pub branch_id: TenantId,
}

pub(crate) struct Identity {
    pub device_id: String,
    pub token: String,
    pub branch: TenantId,
    pub storage_id: String,
}

impl std::fmt::Debug for Identity {
    // `{:?}` of a client must not print the token into a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("device_id", &self.device_id)
            .field("branch", &self.branch)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: ClientConfig,
    /// The canonical data directory, this instance's key in [`OPEN`].
    pub dir: PathBuf,
    /// A revision counter bumped whenever a change was persisted (a local
    /// edit or one received from the server): what observers wait on.
    pub changed: watch::Sender<u64>,
    /// Messages the live connection sent, per document (see `sync`).
    pub messages_sent: std::sync::Mutex<HashMap<doorstep_protocol::DocumentId, u64>>,
    /// Re-bases of changes the server keeps in another form, across
    /// connections (`sync::Rebasing`).
    pub rebasing: std::sync::Mutex<crate::sync::Rebasing>,
    /// Documents the server refused outright (not found for this device)
    /// while they held edits it has not acknowledged, as the last settled
    /// sync saw them: those edits exist only on this phone.
    pub refused_with_edits: std::sync::Mutex<HashSet<doorstep_protocol::DocumentId>>,
    pub store: LocalStore,
    pub transport: Transport,
    pub identity: std::sync::RwLock<Option<Arc<Identity>>>,
    pub replicas: Mutex<Option<Replicas>>,
    /// This store generation's actor: `actor_base` followed by random
    /// bytes (see [`session_actor`]).
    pub actor: ActorId,
    /// The prefix every actor of this device starts with: what tells this
    /// device's own changes from others' (pending counts, the export).
    pub actor_base: Vec<u8>,
    pub status: watch::Sender<SyncStatus>,
    /// Woken by every local edit, so the sync service sends it at once.
    pub edited: Notify,
    /// Held by whoever drives a connection to the server (the live
    /// connection for its whole life, or a bounded `sync_now`): two
    /// connections over the one sync state of each document would take
    /// each other's replies.
    pub syncing: Mutex<()>,
    /// Held by `enroll` for its whole run.
    pub enrolling: Mutex<()>,
    /// Where `sync_now` asks the live connection for a round, while there
    /// is one (see `sync`).
    pub live: watch::Sender<Option<crate::sync::LiveRequests>>,
    /// How far the sync under way has got (shared with its connection).
    pub progress: Arc<watch::Sender<crate::status::SyncProgress>>,
    pub stop: watch::Sender<bool>,
    /// The task that keeps the last sync time (`status::keep_last_synced`):
    /// `close` waits for it, as a write of it still opening a connection
    /// when the process exits crashed a CLI (SQLCipher on a thread of its
    /// own while OpenSSL's exit handlers ran).
    last_synced_keeper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set by `wipe`: every handle refuses to work from then on (an enroll
    /// through an old handle would spend a code into a closed store).
    pub wiped: std::sync::atomic::AtomicBool,
    /// Set by `close`: every handle answers [`ClientError::Closed`].
    pub closed: std::sync::atomic::AtomicBool,
    /// Holds the exclusive lock on the data directory while open. Last, so
    /// it is released after the store's connections are closed.
    lock: std::sync::Mutex<Option<File>>,
}

/// A device's view of its branch. Cheap to clone; all clones share state.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl Client {
    /// Opens (creating if needed) the store in `config.data_dir`. A second
    /// open of the same directory in this process returns the same instance
    /// (if its server and key match); in another process it is refused with
    /// [`ClientError::AlreadyOpen`].
    pub async fn open(config: ClientConfig) -> Result<Client, ClientError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            ClientError::Storage(format!("creating {}: {e}", config.data_dir.display()))
        })?;
        let dir = config.data_dir.canonicalize().map_err(|e| {
            ClientError::Storage(format!("opening {}: {e}", config.data_dir.display()))
        })?;
        let mut open = OPEN.lock().await;
        if let Some(inner) = open.get(&dir).and_then(Weak::upgrade) {
            if inner.config.server_url == config.server_url
                && inner.config.store_key == config.store_key
            {
                return Ok(Client { inner });
            }
            return Err(ClientError::AlreadyOpen(format!(
                "{} (by this app, with another server or key)",
                dir.display()
            )));
        }
        let lock = lock_directory(&dir)?;
        let inner = Arc::new(Self::open_locked(config, dir.clone(), lock).await?);
        open.retain(|_, weak| weak.strong_count() > 0);
        open.insert(dir, Arc::downgrade(&inner));
        Ok(Client { inner })
    }

    async fn open_locked(
        config: ClientConfig,
        dir: PathBuf,
        lock: File,
    ) -> Result<Inner, ClientError> {
        let db = dir.join("device.db");
        let store = LocalStore::open(&db, &config.store_key, config.store_vfs.as_deref()).await?;
        // The stored id is this device's actor *base*; edits are made under
        // an actor that extends it, fresh for every generation of the store.
        // A backup restore (or any copy of the store put back) brings back
        // an older sequence number with the stored data: an actor reused
        // across it would write a second, different change under a sequence
        // number the server already holds ("duplicate seq", refused for
        // good). A restore writes new files, so the store file's identity
        // (device and inode) changes: then, and only then, a fresh actor
        // starts. A fresh actor per open would also be safe, but each one
        // stays in a long-lived roster's history for ever (hundreds a year
        // per phone), and Automerge slows as a document's actors grow.
        let base = match store.meta("actor_id").await? {
            Some(hex) => hex::decode(&hex)
                .ok()
                .filter(|b| !b.is_empty() && b.len() <= ACTOR_BASE_MAX)
                .ok_or_else(|| ClientError::Storage("bad actor id".into()))?,
            None => {
                let base = ActorId::random().to_bytes().to_vec();
                store.set_meta(&[("actor_id", &hex::encode(&base))]).await?;
                base
            }
        };
        let generation = store_generation(&db)?;
        let kept = match (
            store.meta("session_actor").await?,
            store.meta("store_generation").await?,
        ) {
            (Some(actor), Some(stored)) if stored == generation => hex::decode(&actor)
                .ok()
                .filter(|a| a.starts_with(&base) && a.len() == base.len() + ACTOR_SUFFIX)
                .map(ActorId::from),
            _ => None,
        };
        let actor = match kept {
            Some(actor) => actor,
            None => {
                let actor = session_actor(&base);
                // Stored before any edit is made under it.
                store
                    .set_meta(&[
                        ("session_actor", &hex::encode(actor.to_bytes())),
                        ("store_generation", &generation),
                    ])
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
        transport.server_time.set_stored_offset(
            store
                .meta(SERVER_CLOCK_OFFSET)
                .await?
                .and_then(|offset| offset.parse().ok()),
        );
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
        let (changed, _) = watch::channel(0u64);
        let replicas = identity.as_ref().map(|i| {
            Replicas::new(
                store.clone(),
                i.branch,
                actor.clone(),
                base.clone(),
                changed.clone(),
                config.max_loaded_months,
            )
        });
        let initial = match store.meta("revoked").await? {
            Some(reason) => SyncStatus::Revoked { reason },
            None => SyncStatus::Offline {
                reason: "not synced yet".into(),
            },
        };
        let (status, _) = watch::channel(initial);
        let (stop, _) = watch::channel(false);
        let last_synced_keeper =
            crate::status::keep_last_synced(status.subscribe(), stop.subscribe(), store.clone());
        Ok(Inner {
            config,
            dir,
            changed,
            messages_sent: std::sync::Mutex::new(HashMap::new()),
            rebasing: std::sync::Mutex::default(),
            refused_with_edits: std::sync::Mutex::default(),
            store,
            transport,
            identity: std::sync::RwLock::new(identity),
            replicas: Mutex::new(replicas),
            actor,
            actor_base: base,
            status,
            edited: Notify::new(),
            syncing: Mutex::new(()),
            enrolling: Mutex::new(()),
            live: watch::channel(None).0,
            progress: Arc::new(watch::channel(crate::status::SyncProgress::default()).0),
            stop,
            last_synced_keeper: std::sync::Mutex::new(Some(last_synced_keeper)),
            wiped: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            lock: std::sync::Mutex::new(Some(lock)),
        })
    }

    /// Exchanges a one-time enrollment code for this device's token and
    /// stores it. Idempotent: a retry after any failure (the response lost
    /// on the way, the app killed while waiting, the call's answer not
    /// seen) gives the same enrollment. The device makes and stores a
    /// nonce before its first attempt and sends it with the code; the
    /// server enrolls the same device again for the same code and nonce
    /// (until the device first connects). Once enrolled, the same code
    /// answers the stored enrollment without asking the server; another
    /// code is refused (wipe first).
    pub async fn enroll(&self, code: &str) -> Result<Enrollment, ClientError> {
        self.ensure_open()?;
        // One enrollment at a time: two at once (a double tap) would each
        // store a nonce of their own, and a retry after the first's answer
        // was lost would send the other one and be refused.
        let _enrolling = self.inner.enrolling.lock().await;
        if self.inner.wiped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ClientError::Storage(
                "this device's data was wiped: open the directory again".into(),
            ));
        }
        if let Ok(identity) = self.identity() {
            let enrolled_with = self.inner.store.meta("enrollment_code").await?;
            if enrolled_with.as_deref().map(normalised_code) == Some(normalised_code(code)) {
                return Ok(Enrollment {
                    device_id: identity.device_id.clone(),
                    branch_id: identity.branch,
                });
            }
            // Its actors are bound to the old device: wipe first.
            return Err(ClientError::invalid(
                "device",
                "this device is already enrolled; wipe it to enroll again",
            ));
        }
        #[derive(Deserialize)]
        struct Enrolled {
            device_id: String,
            branch_id: String,
            token: String,
            #[serde(default)]
            documents: Vec<crate::history::ListedMonth>,
        }
        // Stored before the first attempt, so every retry sends the same.
        let nonce = match self.inner.store.meta("enrollment_nonce").await? {
            Some(nonce) => nonce,
            None => {
                let nonce = hex::encode(rand::random::<[u8; 16]>());
                self.inner
                    .store
                    .set_meta(&[("enrollment_nonce", &nonce)])
                    .await?;
                nonce
            }
        };
        let response = self
            .inner
            .transport
            .http()
            .post(self.inner.transport.url("/api/v1/enroll"))
            .json(&serde_json::json!({ "code": code, "nonce": nonce }))
            .send()
            .await?;
        self.inner
            .transport
            .server_time
            .note(response.status(), response.headers());
        if response.status() == reqwest::StatusCode::ACCEPTED {
            // The code was asked for from above: it waits for the branch
            // secretary, stays unspent, and works once approved.
            return Err(ClientError::PendingApproval);
        }
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
                ("enrollment_code", code),
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
            *slot = Some(identity);
        }
        *self.inner.replicas.lock().await = Some(Replicas::new(
            self.inner.store.clone(),
            branch,
            self.inner.actor.clone(),
            self.inner.actor_base.clone(),
            self.inner.changed.clone(),
            self.inner.config.max_loaded_months,
        ));
        // Which months exist, so reads can say what this new device lacks.
        // Only a hint: failing to keep it must not undo the enrollment.
        if let Err(e) = self
            .remember_server_months(&crate::history::months_of(&enrolled.documents))
            .await
        {
            tracing::warn!(error = %e, "could not keep the server's month list");
        }
        // No actor is registered: the server binds each of this device's
        // actors to it when its authenticated connection first sends a
        // change by it (ARCHITECTURE.md, "Actor binding").
        Ok(Enrollment {
            device_id: enrolled.device_id,
            branch_id: branch,
        })
    }

    /// [`ClientError::Closed`] once `close` began.
    pub(crate) fn ensure_open(&self) -> Result<(), ClientError> {
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// The time by the server's clock as last learned (see `clock`); keeps
    /// a newly learned offset from the phone's clock in the store.
    pub(crate) async fn server_now(&self) -> Result<time::OffsetDateTime, ClientError> {
        let (now, offset) = self
            .inner
            .transport
            .server_time
            .now(&self.inner.config.device_clock);
        if let Some(offset) = offset {
            self.inner
                .store
                .set_meta(&[(SERVER_CLOCK_OFFSET, &offset.to_string())])
                .await?;
        }
        Ok(now)
    }

    pub(crate) fn identity(&self) -> Result<Arc<Identity>, ClientError> {
        self.ensure_open()?;
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
    /// phone), after [`Client::export_unsynced`] if anything is unsynced.
    /// Every clone of this client is unusable afterwards and reports
    /// not enrolled; the directory can be opened afresh.
    pub async fn wipe(self) -> Result<(), ClientError> {
        // Closed, the directory may have a new owner by now: its files are
        // not this handle's to delete.
        self.ensure_open()?;
        let _ = self.inner.stop.send(true);
        self.inner
            .wiped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _guard = self.inner.syncing.lock().await;
        let mut open = OPEN.lock().await;
        // Whatever fails below, this instance is not handed out again.
        open.remove(&self.inner.dir);
        *self.inner.replicas.lock().await = None;
        self.stop_last_synced_keeper().await;
        if let Ok(mut slot) = self.inner.identity.write() {
            *slot = None;
        }
        self.inner.store.close().await;
        for name in ["device.db", "device.db-wal", "device.db-shm"] {
            let path = self.inner.dir.join(name);
            // SQLite deletes the log and its index when its last connection
            // closes, which may be just now: gone already is wiped.
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ClientError::Storage(format!(
                        "removing {}: {e}",
                        path.display()
                    )));
                }
                _ => {}
            }
        }
        if let Ok(mut lock) = self.inner.lock.lock() {
            lock.take();
        }
        Ok(())
    }
}

impl Client {
    /// Stops sync, closes the store and releases the data directory, which
    /// can be opened again at once (by this process or another: an app
    /// extension, a sync process). Every clone of this client answers
    /// [`ClientError::Closed`] from then on; closing twice does nothing.
    /// An edit in flight finishes first (it holds the documents' lock),
    /// and an edit that returned is on disk whatever close does.
    pub async fn close(&self) -> Result<(), ClientError> {
        use std::sync::atomic::Ordering;
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let _ = self.inner.stop.send(true);
        // Held until the directory is released, so an open of it meanwhile
        // waits and then opens afresh, instead of getting this instance.
        let mut open = OPEN.lock().await;
        self.stop_last_synced_keeper().await;
        // The live connection leaves at the stop signal; a bounded
        // `sync_now` in flight ends within its deadline, but close need
        // not wait that long: past a few seconds the store closes under
        // it, and it fails with `Closed`.
        let syncing = tokio::time::timeout(Duration::from_secs(5), self.inner.syncing.lock()).await;
        if open
            .get(&self.inner.dir)
            .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(&self.inner)))
        {
            open.remove(&self.inner.dir);
        }
        *self.inner.replicas.lock().await = None;
        // A sync that ended while closing published its time after the
        // keeper stopped: kept here.
        crate::status::save_last_synced(&self.inner.store, &self.status()).await;
        if let Ok(mut slot) = self.inner.identity.write() {
            *slot = None;
        }
        self.inner.store.close().await;
        // Released only after the last connection closed.
        if let Ok(mut lock) = self.inner.lock.lock() {
            lock.take();
        }
        drop(syncing);
        drop(open);
        Ok(())
    }

    /// Stops the task that keeps the last sync time and waits for it (its
    /// write under way completes), so no connection of it is still opening
    /// when the store closes or the process exits.
    async fn stop_last_synced_keeper(&self) {
        let _ = self.inner.stop.send(true);
        let keeper = self
            .inner
            .last_synced_keeper
            .lock()
            .ok()
            .and_then(|mut k| k.take());
        if let Some(keeper) = keeper {
            let _ = tokio::time::timeout(Duration::from_secs(5), keeper).await;
        }
    }

    /// Re-encrypts the store under `new_key` and returns the client
    /// reopened with it; this client is closed (see [`Client::close`]).
    /// Keep the new key in the keystore before calling, and the old one
    /// until this returns: after a crash the store opens with exactly one
    /// of the two (SQLCipher rewrites every page in one transaction).
    pub async fn rekey(&self, new_key: StoreKey) -> Result<Client, ClientError> {
        self.ensure_open()?;
        let mut config = self.inner.config.clone();
        let old_key = std::mem::replace(&mut config.store_key, new_key);
        self.close().await?;
        {
            // No one else may open it while its pages are rewritten.
            let _lock = lock_directory(&self.inner.dir)?;
            LocalStore::rekey(
                &self.inner.dir.join("device.db"),
                &old_key,
                &config.store_key,
            )
            .await?;
        }
        drop(old_key);
        // From here the store is under the new key only: a failed reopen
        // must not read as a failed rekey, or the app would keep the old
        // key, drop the new one and never open the store again.
        Client::open(config)
            .await
            .map_err(|e| ClientError::RekeyedNotReopened(e.to_string()))
    }

    /// The store's size on disk (with its write-ahead log) and how much of
    /// it is the documents' data.
    pub async fn store_size(&self) -> Result<crate::store::StoreSize, ClientError> {
        self.ensure_open()?;
        self.inner.store.size().await
    }
}

/// The store's key for the server's time minus the phone's, in seconds.
const SERVER_CLOCK_OFFSET: &str = "server_clock_offset_secs";

/// A code as the server compares it: without dashes, spaces and case.
fn normalised_code(code: &str) -> String {
    code.chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Longest actor base accepted from the store; with the per-open suffix
/// the actor stays within the server's 64 bytes.
const ACTOR_BASE_MAX: usize = 32;
/// Random bytes that make each open's actor unique.
const ACTOR_SUFFIX: usize = 8;

/// Which file the store is: its device, inode and (where the file system
/// keeps it) creation time. A copy of the store put back (a backup
/// restore, a move to a new phone) is another file; the creation time
/// tells it apart even when it reuses the inode number of a file just
/// deleted (a wipe followed by a restore into the same folder).
fn store_generation(db: &std::path::Path) -> Result<String, ClientError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(db)
        .map_err(|e| ClientError::Storage(format!("reading {}: {e}", db.display())))?;
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{}:{}:{born}", meta.dev(), meta.ino()))
}

/// A fresh actor for one generation of the store: the device's base, then
/// random bytes.
/// Changes by it are this device's (`is_own`), and no earlier open, nor an
/// open of a restored copy of the store, can have used it.
pub(crate) fn session_actor(base: &[u8]) -> ActorId {
    let mut bytes = base.to_vec();
    bytes.extend_from_slice(&rand::random::<[u8; ACTOR_SUFFIX]>());
    ActorId::from(bytes)
}

/// Whether a change by `actor` was made on the device whose actor base is
/// `base` (under any of its opens; a store from before per-open actors
/// used the base itself).
pub(crate) fn is_own(base: &[u8], actor: &ActorId) -> bool {
    actor.to_bytes().starts_with(base)
}

/// Takes the exclusive lock on a data directory, for as long as the
/// returned file is open. The OS releases it when the process dies, however
/// it dies, so a killed app never leaves the directory locked.
pub(crate) fn lock_directory(dir: &std::path::Path) -> Result<File, ClientError> {
    let path = dir.join("device.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ClientError::Storage(format!("opening {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ClientError::AlreadyOpen(format!(
            "{} (another process holds it: close the client there first)",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(ClientError::Storage(format!(
            "locking {}: {e}",
            path.display()
        ))),
    }
}
