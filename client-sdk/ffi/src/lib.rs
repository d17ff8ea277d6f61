//! UniFFI bindings over `doorstep-client`, for Kotlin, Swift and Python.
//!
//! A thin shell: the SDK's own types cross as they are (their UniFFI
//! derives sit behind the `uniffi` feature of `doorstep-protocol` and
//! `doorstep-client`), so kinds are real enums and dates, months, ids and
//! money are custom types checked when they cross. This crate adds only
//! what the FFI cannot express otherwise:
//!
//! ```text
//! lib.rs      DoorstepClient: one async method per SDK call, on one tokio runtime
//!             records for SDK values UniFFI has no shape for (tuples, Option<Option<_>>)
//!             the status observer and its cancel-on-drop Subscription
//! logging.rs  LogSink: the SDK's tracing events to logcat / os_log
//! ```
//!
//! Each crate is its own UniFFI namespace, so the bindings are three
//! modules: `doorstep_protocol` (schema records, enums, custom types),
//! `doorstep_client` (the SDK's inputs, sync status, conflicts) and
//! `doorstep_ffi` (the client object and the records below).

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use doorstep_client as sdk;
use sdk::{Client, ClientConfig, ClientError, Date, Fen, RecordId};

mod logging;

pub use logging::{LogLevel, LogSink, install_log_sink};

uniffi::setup_scaffolding!();

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("doorstep-sdk")
        .enable_all()
        .build()
        .expect("the SDK's tokio runtime starts")
});

/// Runs an SDK future on the library's runtime, whatever drives the caller.
async fn run<T: Send + 'static>(
    future: impl Future<Output = Result<T, ClientError>> + Send + 'static,
) -> Result<T, DoorstepError> {
    RUNTIME
        .spawn(future)
        .await
        .map_err(DoorstepError::internal)?
        .map_err(DoorstepError::from)
}

/// The errors an app acts on, each with the values it needs to act.
///
/// A malformed date, month or id fails before the call starts, as
/// `Invalid` naming the kind of value (`date`, `month`, `record id`) and
/// quoting what was sent: UniFFI reads a record's fields without names, so
/// the field of a record at fault is not known there (the value is).
/// No field is called `message`: Kotlin's exceptions have one already (the
/// generated code would not compile).
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum DoorstepError {
    /// Input refused before anything was written. `field` names the input
    /// at fault (`aid_cash`, `follow_up.due`, or for a value that did not
    /// parse, its kind: `date`).
    #[error("invalid {field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{what} {id} not found")]
    NotFound { what: String, id: String },
    #[error("this device is not enrolled")]
    NotEnrolled,
    #[error("this device was revoked: {reason}")]
    Revoked { reason: String },
    #[error("network: {detail}")]
    Network { detail: String },
    #[error("the server refused: {detail}")]
    Refused { detail: String },
    #[error("local storage: {detail}")]
    Storage { detail: String },
    #[error("internal error: {detail}")]
    Internal { detail: String },
    /// A conflict changed since the app read it: nothing was written.
    /// `now.values()` are the values the field holds now, to show the user.
    #[error("the conflict on {field} changed since it was read; nothing was written")]
    ConflictChanged {
        field: String,
        now: Arc<CurrentValues>,
    },
    /// Another process holds this data directory.
    #[error("the data directory is open elsewhere: {detail}")]
    AlreadyOpen { detail: String },
    #[error("the store key does not open this device's store")]
    WrongKey,
    /// The server does not know this device; not a revocation: edits stay
    /// and `export_unsynced` saves them.
    #[error("the server does not recognise this device: {detail}")]
    UnknownDevice { detail: String },
    #[error("the enrollment code waits for the branch secretary's approval")]
    PendingApproval,
    /// A newer version of the app wrote the store (schema step `version`):
    /// update the app; do not wipe.
    #[error(
        "this device's store was written by a newer version of the app (schema step {version}); update the app"
    )]
    NewerStore { version: i64 },
    /// The call was cancelled (`cancel` on its handle) before it finished.
    #[error("cancelled")]
    Cancelled,

    /// The client was closed (or re-keyed): open the directory again.
    #[error("this client was closed; open the data directory again")]
    Closed,
    /// `rekey` rewrote the store under the new key but could not reopen
    /// it: keep the NEW key (the old one opens nothing now) and open again.
    #[error("the store is now under the new key but did not reopen: {detail}")]
    RekeyedNotReopened { detail: String },
    /// The store is plain SQLite from an SDK before encryption: no key
    /// opens it; migrate (sync or export with the old app, then wipe).
    #[error("{detail}")]
    UnencryptedStore { detail: String },
}

impl DoorstepError {
    fn internal(message: impl std::fmt::Display) -> Self {
        DoorstepError::Internal {
            detail: message.to_string(),
        }
    }

    fn storage(message: impl Into<String>) -> Self {
        DoorstepError::Storage {
            detail: message.into(),
        }
    }
}

/// The values a conflicted field holds now, as `ConflictChanged` carries
/// them. Behind an object because UniFFI builds a Kotlin or Python
/// exception's message from every field of the error: values there (a
/// member's name, a phone) would reach logcat and crash reports whenever an
/// app logs the exception. An object prints as its type.
#[derive(uniffi::Object)]
pub struct CurrentValues(Vec<sdk::ConflictValue>);

impl std::fmt::Debug for CurrentValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CurrentValues({} values)", self.0.len())
    }
}

#[uniffi::export]
impl CurrentValues {
    pub fn values(&self) -> Vec<sdk::ConflictValue> {
        self.0.clone()
    }
}

impl From<ClientError> for DoorstepError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Invalid { field, problem } => DoorstepError::Invalid { field, problem },
            ClientError::ConflictChanged { field, now } => DoorstepError::ConflictChanged {
                field,
                now: Arc::new(CurrentValues(now)),
            },
            ClientError::NotFound { what, id } => DoorstepError::NotFound {
                what: what.to_owned(),
                id,
            },
            ClientError::NotEnrolled => DoorstepError::NotEnrolled,
            ClientError::Revoked(reason) => DoorstepError::Revoked { reason },
            ClientError::Network(detail) => DoorstepError::Network { detail },
            ClientError::Refused(detail) => DoorstepError::Refused { detail },
            ClientError::Storage(detail) => DoorstepError::Storage { detail },
            ClientError::AlreadyOpen(detail) => DoorstepError::AlreadyOpen { detail },
            ClientError::WrongKey => DoorstepError::WrongKey,
            ClientError::UnknownDevice(detail) => DoorstepError::UnknownDevice { detail },
            ClientError::PendingApproval => DoorstepError::PendingApproval,
            ClientError::NewerStore { version } => DoorstepError::NewerStore { version },
            ClientError::Cancelled => DoorstepError::Cancelled,
            ClientError::Closed => DoorstepError::Closed,
            ClientError::RekeyedNotReopened(detail) => DoorstepError::RekeyedNotReopened { detail },
            e @ ClientError::UnencryptedStore => DoorstepError::UnencryptedStore {
                detail: e.to_string(),
            },
        }
    }
}

/// A value that did not parse as it crossed, as the call's own error.
fn unparsable(
    value: doorstep_protocol::uniffi_types::UnparsableValue,
) -> uniffi::deps::anyhow::Error {
    DoorstepError::Invalid {
        field: value.what.to_owned(),
        problem: format!(
            "{:?} is not a {}: {}",
            value.text, value.what, value.problem
        ),
    }
    .into()
}

/// Registers [`unparsable`] before any value can cross: every call that
/// takes a date, month or id is a method of a `DoorstepClient`, made by
/// `open`, which registers first.
fn report_unparsable_values() {
    doorstep_protocol::uniffi_types::report_unparsable_values_as(unparsable);
}

/// Declares a record pairing an SDK value with its record id, for the
/// SDK's `(RecordId, T)` results (UniFFI has no tuples).
macro_rules! with_id {
    ($(#[$doc:meta])* $name:ident { $field:ident: $ty:ty }) => {
        $(#[$doc])*
        #[derive(uniffi::Record, Debug, Clone, PartialEq)]
        pub struct $name {
            pub id: RecordId,
            pub $field: $ty,
        }

        impl From<(RecordId, $ty)> for $name {
            fn from((id, $field): (RecordId, $ty)) -> Self {
                $name { id, $field }
            }
        }
    };
}

with_id!(
    /// A member and its id.
    MemberWithId { member: sdk::Member }
);
with_id!(
    /// A visit and its id.
    VisitWithId { visit: sdk::Visit }
);
with_id!(
    /// A hardship register entry and its id.
    HardshipEntryWithId { entry: sdk::HardshipEntry }
);
with_id!(
    /// A team and its id.
    TeamWithId { team: sdk::Team }
);
with_id!(
    /// A pairing and its id.
    PairingWithId { pairing: sdk::Pairing }
);
with_id!(
    /// A team activity and its id.
    ActivityWithId { activity: sdk::Activity }
);
with_id!(
    /// A training and its id.
    TrainingWithId { training: sdk::Training }
);
with_id!(
    /// A re-employment placement and its id.
    PlacementWithId { placement: sdk::Placement }
);
with_id!(
    /// A fund entry and its id.
    FundEntryWithId { entry: sdk::FundEntry }
);

/// The app's keystore: hands over the store key at every open. Return
/// `None` when the keystore cannot (locked device, key lost); the open
/// then fails without touching the store.
#[uniffi::export(foreign)]
pub trait KeyProvider: Send + Sync {
    fn store_key(&self) -> Option<Vec<u8>>;
}

/// The key from the app's keystore; the bytes it handed over are zeroed
/// once the SDK has its own copy.
fn key_from(keys: &dyn KeyProvider) -> Result<sdk::StoreKey, DoorstepError> {
    let bytes = zeroize::Zeroizing::new(
        keys.store_key()
            .ok_or_else(|| DoorstepError::storage("the keystore gave no store key"))?,
    );
    Ok(sdk::StoreKey::from_bytes(&bytes)?)
}

/// A fresh random store key (32 bytes from the operating system's
/// generator), for the app to keep in its keystore on first run: wrapped
/// by an Android Keystore AES-GCM key, or as an iOS Keychain item
/// (`AfterFirstUnlockThisDeviceOnly`). See README.md, "Key handling".
#[uniffi::export]
pub fn generate_store_key() -> Vec<u8> {
    sdk::StoreKey::generate().as_bytes().to_vec()
}

/// The unsynced edits of the store in `data_dir`, read without opening it
/// as a client: for a store this app version cannot open (`NewerStore`
/// after a downgrade). Runs no migration and changes no row (SQLite may
/// fold its log into the file); the directory must not be open.
#[uniffi::export(async_runtime = "tokio")]
pub async fn export_unsynced_from_store(
    data_dir: String,
    keys: Arc<dyn KeyProvider>,
) -> Result<Vec<u8>, DoorstepError> {
    let key = key_from(keys.as_ref())?;
    run(async move { Client::export_unsynced_from_store(data_dir, &key).await }).await
}

/// How the client runs; every field has a sensible default.
#[derive(uniffi::Record, Debug, Clone)]
pub struct DeviceOptions {
    /// PEM of an extra CA to trust besides the bundled and system roots.
    #[uniffi(default = None)]
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Seconds between re-checks of the live connection; 0: never
    /// (changes flow at once over the connection either way).
    #[uniffi(default = 300)]
    pub sync_interval_secs: u64,
    /// Monthly logs kept in memory; older ones load when read.
    #[uniffi(default = 3)]
    pub max_loaded_months: u32,
    /// Seconds without a frame before the connection counts as dead.
    #[uniffi(default = 90)]
    pub receive_timeout_secs: u64,
    /// Longest retry delay after a failure, in seconds.
    #[uniffi(default = 60)]
    pub backoff_max_secs: u64,
    /// The longest `sync_now` and `checkpoint` take, in seconds, whatever
    /// the link does.
    #[uniffi(default = 120)]
    pub sync_deadline_secs: u64,
}

/// Receives a list of members each time it changes.
#[uniffi::export(foreign)]
pub trait MembersListener: Send + Sync {
    fn on_members(&self, members: Vec<MemberWithId>);
}

/// Receives a list of visits each time it changes.
#[uniffi::export(foreign)]
pub trait VisitsListener: Send + Sync {
    fn on_visits(&self, visits: Vec<VisitWithId>);
}

/// A live list: it stops on `cancel` or when the handle is dropped.
#[derive(uniffi::Object, Debug)]
pub struct Observation {
    observation: Mutex<Option<sdk::Observation>>,
}

impl Observation {
    fn new(observation: sdk::Observation) -> Arc<Self> {
        Arc::new(Observation {
            observation: Mutex::new(Some(observation)),
        })
    }
}

#[uniffi::export]
impl Observation {
    pub fn cancel(&self) {
        // Dropping the SDK's handle stops it; the lock is only contended
        // by a second cancel.
        if let Ok(mut slot) = self.observation.lock() {
            slot.take();
        }
    }
}

fn with_ids<T, R: From<(RecordId, T)>>(rows: Vec<(RecordId, T)>) -> Vec<R> {
    rows.into_iter().map(R::from).collect()
}

/// One member's record and what the branch did for them.
#[derive(uniffi::Record, Debug, Clone)]
pub struct MemberHistory {
    pub member: sdk::Member,
    /// Visits, oldest first.
    pub visits: Vec<VisitWithId>,
    /// Cash and goods handed over in all those visits.
    pub aid_total: Fen,
    /// Every hardship register entry of the member.
    pub hardship_entries: Vec<HardshipEntryWithId>,
    /// The status of the most recent hardship entry, if any.
    pub hardship_status: Option<sdk::HardshipStatus>,
    /// Months the server holds that this device does not yet, newest
    /// first: their visits are missing above. `fetch_history` gets them.
    pub missing_months: Vec<sdk::Month>,
}

impl From<sdk::MemberHistory> for MemberHistory {
    fn from(h: sdk::MemberHistory) -> Self {
        MemberHistory {
            member: h.member,
            visits: with_ids(h.visits),
            aid_total: h.aid_total,
            hardship_entries: with_ids(h.hardship_entries),
            hardship_status: h.hardship_status,
            missing_months: h.missing_months,
        }
    }
}

/// A change to a member's birthday. The SDK's `Option<Option<Date>>` would
/// cross as one nullable in Kotlin, Swift and Python, where "leave alone"
/// and "clear" are the same `null`; here they are two variants.
#[derive(uniffi::Enum, Debug, Clone, PartialEq)]
pub enum BirthdayUpdate {
    Keep,
    Clear,
    Set { birthday: Date },
}

/// A change to a member's migrant card; explicit for the same reason.
#[derive(uniffi::Enum, Debug, Clone, PartialEq)]
pub enum MigrantUpdate {
    Keep,
    Clear,
    Set { contact: sdk::MigrantContact },
}

impl From<BirthdayUpdate> for Option<Option<Date>> {
    fn from(u: BirthdayUpdate) -> Self {
        match u {
            BirthdayUpdate::Keep => None,
            BirthdayUpdate::Clear => Some(None),
            BirthdayUpdate::Set { birthday } => Some(Some(birthday)),
        }
    }
}

impl From<MigrantUpdate> for Option<Option<sdk::MigrantContact>> {
    fn from(u: MigrantUpdate) -> Self {
        match u {
            MigrantUpdate::Keep => None,
            MigrantUpdate::Clear => Some(None),
            MigrantUpdate::Set { contact } => Some(Some(contact)),
        }
    }
}

/// Fields of a member to change; `None` leaves a text field alone and `""`
/// clears it (the SDK's rule).
#[derive(uniffi::Record, Debug, Clone)]
pub struct MemberUpdate {
    #[uniffi(default = None)]
    pub name: Option<String>,
    #[uniffi(default = None)]
    pub kinds: Option<Vec<sdk::MemberKind>>,
    pub birthday: BirthdayUpdate,
    pub migrant: MigrantUpdate,
    #[uniffi(default = None)]
    pub phone: Option<String>,
    #[uniffi(default = None)]
    pub address: Option<String>,
    #[uniffi(default = None)]
    pub household: Option<String>,
    #[uniffi(default = None)]
    pub post: Option<String>,
    #[uniffi(default = None)]
    pub notes: Option<String>,
}

impl From<MemberUpdate> for sdk::MemberUpdate {
    fn from(u: MemberUpdate) -> Self {
        sdk::MemberUpdate {
            name: u.name,
            kinds: u.kinds.map(|kinds| kinds.into_iter().collect()),
            birthday: u.birthday.into(),
            phone: u.phone,
            address: u.address,
            household: u.household,
            post: u.post,
            migrant: u.migrant.into(),
            notes: u.notes,
        }
    }
}

/// Minutes one participant (member id or name) volunteered.
#[derive(uniffi::Record, Debug, Clone)]
pub struct ParticipantMinutes {
    pub participant: String,
    pub minutes: i64,
}

/// A team activity to log; the SDK's `NewActivity` with its pairs as records.
#[derive(uniffi::Record, Debug, Clone)]
pub struct NewActivity {
    pub date: Date,
    pub team_id: Option<RecordId>,
    pub title: String,
    pub minutes: Vec<ParticipantMinutes>,
}

impl From<NewActivity> for sdk::NewActivity {
    fn from(a: NewActivity) -> Self {
        sdk::NewActivity {
            date: a.date,
            team_id: a.team_id,
            title: a.title,
            minutes: a
                .minutes
                .into_iter()
                .map(|m| (m.participant, m.minutes))
                .collect(),
        }
    }
}

/// Receives every change of sync status, on an SDK thread.
#[uniffi::export(foreign)]
pub trait StatusObserver: Send + Sync {
    fn on_status(&self, status: sdk::SyncStatus);
}

/// Receives where syncing stands each time any part of it changes, on a
/// thread of its own (a slow observer holds up no sync and no edit).
#[uniffi::export(foreign)]
pub trait SyncStateObserver: Send + Sync {
    fn on_sync_state(&self, state: sdk::SyncState);
}

/// Cancels a `sync_once`: for WorkManager's `onStopped` or a BGTask's
/// expiration handler. Cancelling the call itself (a Kotlin coroutine, a
/// Swift task) does the same.
#[derive(uniffi::Object, Debug)]
pub struct SyncCancellation {
    cancelled: tokio::sync::watch::Sender<bool>,
}

#[uniffi::export]
impl SyncCancellation {
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(SyncCancellation {
            cancelled: tokio::sync::watch::channel(false).0,
        })
    }

    pub fn cancel(&self) {
        self.cancelled.send_replace(true);
    }
}

/// Cancels a `sync_once` when the foreign caller drops its call.
struct CancelOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Keeps an observation alive: it ends on `cancel` or when the handle is
/// dropped (garbage-collected, or closed by the foreign caller).
#[derive(uniffi::Object, Debug)]
pub struct Subscription {
    task: tokio::task::AbortHandle,
}

#[uniffi::export]
impl Subscription {
    pub fn cancel(&self) {
        self.task.abort();
    }
}

impl Drop for Subscription {
    // A dropped tokio JoinHandle detaches its task; without this the
    // observer (and the foreign object it holds) would live forever.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A device's Doorstep client.
#[derive(uniffi::Object, Debug)]
pub struct DoorstepClient {
    client: Client,
    background: Mutex<Option<sdk::sync::BackgroundSync>>,
}

impl DoorstepClient {
    /// Calls the SDK with a clone of the client, on the library's runtime.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, DoorstepError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        run(call(self.client.clone())).await
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl DoorstepClient {
    /// Opens the device store in `data_dir` for the server at `server_url`
    /// (`https://host:port`); `extra_ca_pem` adds a CA to the system roots.
    #[uniffi::constructor]
    pub async fn open(
        data_dir: String,
        server_url: String,
        keys: Arc<dyn KeyProvider>,
        options: DeviceOptions,
    ) -> Result<Arc<Self>, DoorstepError> {
        report_unparsable_values();
        let mut config = ClientConfig::new(data_dir, server_url, key_from(keys.as_ref())?);
        config.extra_ca_pem = options.extra_ca_pem;
        config.sync_interval = (options.sync_interval_secs > 0)
            .then(|| Duration::from_secs(options.sync_interval_secs));
        config.max_loaded_months = options.max_loaded_months as usize;
        // Floors: a zero timeout fails every handshake, a zero backoff
        // reconnects in a tight loop.
        config.receive_timeout = Duration::from_secs(options.receive_timeout_secs.max(10));
        config.backoff_max = Duration::from_secs(options.backoff_max_secs.max(1));
        // A zero deadline would fail every sync before it starts.
        config.sync_deadline = Duration::from_secs(options.sync_deadline_secs.max(1));
        let client = run(Client::open(config)).await?;
        Ok(Arc::new(DoorstepClient {
            client,
            background: Mutex::new(None),
        }))
    }

    /// Exchanges a one-time code for this device's credentials.
    pub async fn enroll(&self, code: String) -> Result<sdk::Enrollment, DoorstepError> {
        self.call(|c| async move { c.enroll(&code).await }).await
    }

    pub fn is_enrolled(&self) -> bool {
        self.client.is_enrolled()
    }

    pub async fn add_member(&self, member: sdk::NewMember) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.add_member(member).await })
            .await
    }

    pub async fn update_member(
        &self,
        member_id: RecordId,
        update: MemberUpdate,
    ) -> Result<(), DoorstepError> {
        self.call(|c| async move { c.update_member(member_id, update.into()).await })
            .await
    }

    pub async fn record_visit(&self, visit: sdk::NewVisit) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.record_visit(visit).await })
            .await
    }

    pub async fn complete_follow_up(&self, visit_id: RecordId) -> Result<(), DoorstepError> {
        self.call(|c| async move { c.complete_follow_up(visit_id).await })
            .await
    }

    /// Opens a hardship register entry; returns its id.
    pub async fn open_hardship_entry(
        &self,
        entry: sdk::NewHardshipEntry,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.open_hardship_entry(entry).await })
            .await
    }

    /// Adds a need to an entry's needs file; returns the need's id.
    pub async fn add_need(
        &self,
        entry_id: RecordId,
        description: String,
        on: Date,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.add_need(entry_id, &description, on).await })
            .await
    }

    /// Records a status change of an entry; returns the change's id.
    pub async fn change_hardship_status(
        &self,
        entry_id: RecordId,
        status: sdk::HardshipStatus,
        on: Date,
        note: Option<String>,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.change_hardship_status(entry_id, status, on, note).await })
            .await
    }

    pub async fn pair_members(
        &self,
        helper_id: RecordId,
        helped_id: RecordId,
        since: Date,
        key_contact: bool,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move {
            c.pair_members(helper_id, helped_id, since, key_contact)
                .await
        })
        .await
    }

    pub async fn create_team(&self, team: sdk::NewTeam) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.create_team(team).await })
            .await
    }

    /// Adds a member or a resident who is not a member to a team.
    pub async fn add_to_team(
        &self,
        team_id: RecordId,
        person: sdk::TeamPerson,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.add_to_team(team_id, person).await })
            .await
    }

    pub async fn log_activity(&self, activity: NewActivity) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.log_activity(activity.into()).await })
            .await
    }

    pub async fn record_training(
        &self,
        training: sdk::NewTraining,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.record_training(training).await })
            .await
    }

    pub async fn record_placement(
        &self,
        placement: sdk::NewPlacement,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.record_placement(placement).await })
            .await
    }

    pub async fn record_fund_entry(
        &self,
        entry: sdk::NewFundEntry,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.record_fund_entry(entry).await })
            .await
    }

    // The `*_with_id` calls take the id the app made (a UUIDv7) as the
    // write's idempotency key: a retry with it is an upsert of the same
    // record. Cancelling a call from Kotlin or Swift does not stop it: it
    // runs to completion on the SDK's runtime ("the write completes"), so
    // an app that did not see the answer retries with the same id.

    pub async fn add_member_with_id(
        &self,
        member_id: RecordId,
        member: sdk::NewMember,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.add_member_with_id(member_id, member).await })
            .await
    }

    pub async fn record_visit_with_id(
        &self,
        visit_id: RecordId,
        visit: sdk::NewVisit,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.record_visit_with_id(visit_id, visit).await })
            .await
    }

    pub async fn log_activity_with_id(
        &self,
        activity_id: RecordId,
        activity: NewActivity,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.log_activity_with_id(activity_id, activity.into()).await })
            .await
    }

    pub async fn record_training_with_id(
        &self,
        training_id: RecordId,
        training: sdk::NewTraining,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.record_training_with_id(training_id, training).await })
            .await
    }

    pub async fn record_placement_with_id(
        &self,
        placement_id: RecordId,
        placement: sdk::NewPlacement,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.record_placement_with_id(placement_id, placement).await })
            .await
    }

    pub async fn record_fund_entry_with_id(
        &self,
        entry_id: RecordId,
        entry: sdk::NewFundEntry,
    ) -> Result<RecordId, DoorstepError> {
        self.call(|c| async move { c.record_fund_entry_with_id(entry_id, entry).await })
            .await
    }

    pub async fn member(&self, member_id: RecordId) -> Result<sdk::Member, DoorstepError> {
        self.call(|c| async move { c.member(member_id).await })
            .await
    }

    pub async fn members(
        &self,
        filter: sdk::MemberFilter,
    ) -> Result<Vec<MemberWithId>, DoorstepError> {
        let members = self
            .call(|c| async move { c.members(&filter).await })
            .await?;
        Ok(with_ids(members))
    }

    pub async fn member_history(
        &self,
        member_id: RecordId,
    ) -> Result<MemberHistory, DoorstepError> {
        let history = self
            .call(|c| async move { c.member_history(member_id).await })
            .await?;
        Ok(history.into())
    }

    /// Visits of a month; `only_mine` keeps this device's.
    pub async fn visits(
        &self,
        month: sdk::Month,
        only_mine: bool,
    ) -> Result<Vec<VisitWithId>, DoorstepError> {
        let visits = self
            .call(|c| async move { c.visits(month, only_mine).await })
            .await?;
        Ok(with_ids(visits))
    }

    pub async fn follow_ups_due(&self, on: Date) -> Result<Vec<VisitWithId>, DoorstepError> {
        let due = self
            .call(|c| async move { c.follow_ups_due(on).await })
            .await?;
        Ok(with_ids(due))
    }

    pub async fn conflicts(&self) -> Result<Vec<sdk::Conflict>, DoorstepError> {
        self.call(|c| async move { c.conflicts().await }).await
    }

    /// Settles a conflict as returned by `conflicts`.
    pub async fn resolve_conflict(
        &self,
        conflict: sdk::Conflict,
        resolution: sdk::Resolution,
    ) -> Result<(), DoorstepError> {
        self.call(|c| async move { c.resolve_conflict(&conflict, resolution).await })
            .await
    }

    pub async fn sync_now(&self) -> Result<sdk::SyncReport, DoorstepError> {
        self.call(|c| async move { c.sync_now().await }).await
    }

    /// The background entry point (Android WorkManager, iOS BGTask): syncs
    /// once and returns within `deadline_secs` whatever the link does, or
    /// fails with `Cancelled` as soon as `cancellation` is cancelled (or
    /// this call is). Nothing is half written either way.
    pub async fn sync_once(
        &self,
        deadline_secs: u64,
        cancellation: Arc<SyncCancellation>,
    ) -> Result<sdk::SyncReport, DoorstepError> {
        let (dropped, mut call_dropped) = tokio::sync::watch::channel(false);
        let _cancel_on_drop = CancelOnDrop(dropped);
        let mut cancelled = cancellation.cancelled.subscribe();
        let limit = Duration::from_secs(deadline_secs);
        self.call(|c| async move {
            let cancel = async move {
                tokio::select! {
                    _ = cancelled.wait_for(|c| *c) => {}
                    _ = call_dropped.wait_for(|c| *c) => {}
                }
            };
            c.sync_once(limit, cancel).await
        })
        .await
    }

    /// Waits until this device has completed a sync, at once if it ever
    /// did; false if `deadline_secs` passed first. Start background sync
    /// (or call `sync_now`) alongside: this does not sync.
    pub async fn wait_for_first_sync(&self, deadline_secs: u64) -> Result<bool, DoorstepError> {
        let limit = Duration::from_secs(deadline_secs);
        self.call(|c| async move { c.wait_for_first_sync(limit).await })
            .await
    }

    /// Where syncing stands now.
    pub async fn sync_state(&self) -> Result<sdk::SyncState, DoorstepError> {
        self.call(|c| async move { c.sync_state().await }).await
    }

    /// Calls `observer` with where syncing stands now and after every
    /// change (status, connection, last sync, pending count), until the
    /// returned handle is cancelled or dropped.
    pub fn observe_sync_state(&self, observer: Arc<dyn SyncStateObserver>) -> Arc<Subscription> {
        let client = self.client.clone();
        let mut changes = client.sync_state_changes();
        let task = RUNTIME.spawn(async move {
            let mut last = None;
            loop {
                match client.sync_state().await {
                    Ok(state) if last.as_ref() != Some(&state) => {
                        last = Some(state.clone());
                        let observer = observer.clone();
                        // Off the SDK's workers: a slow observer stalls only
                        // its own updates.
                        if tokio::task::spawn_blocking(move || observer.on_sync_state(state))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    // A closed client changes no more: the task ends, and
                    // with it its hold on the client.
                    Err(ClientError::Closed) => return,
                    _ => {}
                }
                if !changes.changed().await {
                    return;
                }
            }
        });
        Arc::new(Subscription {
            task: task.abort_handle(),
        })
    }

    /// Brings over the months the server holds that this device lacks
    /// (newest first), within `deadline_secs`; what is left is in `missing`.
    pub async fn fetch_history(
        &self,
        deadline_secs: u64,
    ) -> Result<sdk::HistoryFetch, DoorstepError> {
        let limit = Duration::from_secs(deadline_secs);
        self.call(|c| async move { c.fetch_history(limit).await })
            .await
    }

    /// Local changes the server has not acknowledged yet.
    pub async fn pending_changes(&self) -> Result<u64, DoorstepError> {
        let pending = self
            .call(|c| async move { c.pending_changes().await })
            .await?;
        Ok(pending as u64)
    }

    pub fn status(&self) -> sdk::SyncStatus {
        self.client.status()
    }

    /// Calls `observer` with the current status and every change after it,
    /// until the returned handle is cancelled or dropped.
    pub fn observe_status(&self, observer: Arc<dyn StatusObserver>) -> Arc<Subscription> {
        let mut statuses = self.client.subscribe_status();
        let task = RUNTIME.spawn(async move {
            loop {
                let status = statuses.borrow_and_update().clone();
                observer.on_status(status);
                if statuses.changed().await.is_err() {
                    return;
                }
            }
        });
        Arc::new(Subscription {
            task: task.abort_handle(),
        })
    }

    /// Keeps a live connection from now on: edits go at once, the server's
    /// changes arrive as they happen, failures retry with backoff.
    pub fn start_background_sync(&self) {
        let _runtime = RUNTIME.enter();
        let handle = self.client.start_background_sync();
        if let Ok(mut slot) = self.background.lock() {
            *slot = Some(handle);
        }
    }

    /// Tells the SDK the network came back (Android's
    /// `ConnectivityManager.NetworkCallback.onAvailable`, iOS's
    /// `NWPathMonitor` reporting `.satisfied`): the sync service retries at
    /// once instead of waiting out its backoff.
    pub fn network_available(&self) {
        self.client.network_available();
    }

    pub async fn stop_background_sync(&self) {
        let handle = self.background.lock().ok().and_then(|mut slot| slot.take());
        if let Some(handle) = handle {
            let _ = RUNTIME.spawn(handle.stop()).await;
        }
    }

    pub async fn visit(&self, visit_id: RecordId) -> Result<sdk::Visit, DoorstepError> {
        self.call(|c| async move { c.visit(visit_id).await }).await
    }

    /// Visits of one day ("today's visits") or one month.
    pub async fn visits_on(&self, days: sdk::VisitDays) -> Result<Vec<VisitWithId>, DoorstepError> {
        Ok(with_ids(
            self.call(|c| async move { c.visits_on(days).await })
                .await?,
        ))
    }

    pub async fn teams(&self) -> Result<Vec<TeamWithId>, DoorstepError> {
        Ok(with_ids(
            self.call(|c| async move { c.teams().await }).await?,
        ))
    }

    pub async fn pairings(&self) -> Result<Vec<PairingWithId>, DoorstepError> {
        Ok(with_ids(
            self.call(|c| async move { c.pairings().await }).await?,
        ))
    }

    /// Hardship register entries, of one member or all.
    pub async fn hardship_entries(
        &self,
        member_id: Option<RecordId>,
    ) -> Result<Vec<HardshipEntryWithId>, DoorstepError> {
        Ok(with_ids(
            self.call(|c| async move { c.hardship_entries(member_id).await })
                .await?,
        ))
    }

    pub async fn activities(
        &self,
        months: sdk::Months,
    ) -> Result<Vec<ActivityWithId>, DoorstepError> {
        Ok(with_ids(
            self.call(|c| async move { c.activities(months).await })
                .await?,
        ))
    }

    pub async fn trainings(
        &self,
        months: sdk::Months,
    ) -> Result<Vec<TrainingWithId>, DoorstepError> {
        Ok(with_ids(
            self.call(|c| async move { c.trainings(months).await })
                .await?,
        ))
    }

    pub async fn placements(
        &self,
        months: sdk::Months,
    ) -> Result<Vec<PlacementWithId>, DoorstepError> {
        Ok(with_ids(
            self.call(|c| async move { c.placements(months).await })
                .await?,
        ))
    }

    pub async fn fund_entries(
        &self,
        months: sdk::Months,
    ) -> Result<Vec<FundEntryWithId>, DoorstepError> {
        Ok(with_ids(
            self.call(|c| async move { c.fund_entries(months).await })
                .await?,
        ))
    }

    /// Who corrected or deleted a record, when and why.
    pub async fn corrections_of(
        &self,
        record_id: RecordId,
    ) -> Result<Vec<sdk::Correction>, DoorstepError> {
        self.call(|c| async move { c.corrections_of(record_id).await })
            .await
    }

    /// Corrects a visit (the note keeps what it was and why).
    pub async fn correct_visit(
        &self,
        visit_id: RecordId,
        corrected: sdk::NewVisit,
        why: String,
    ) -> Result<(), DoorstepError> {
        self.call(|c| async move { c.correct_visit(visit_id, corrected, &why).await })
            .await
    }

    pub async fn correct_training(
        &self,
        training_id: RecordId,
        corrected: sdk::NewTraining,
        why: String,
    ) -> Result<(), DoorstepError> {
        self.call(|c| async move { c.correct_training(training_id, corrected, &why).await })
            .await
    }

    pub async fn correct_placement(
        &self,
        placement_id: RecordId,
        corrected: sdk::NewPlacement,
        why: String,
    ) -> Result<(), DoorstepError> {
        self.call(|c| async move { c.correct_placement(placement_id, corrected, &why).await })
            .await
    }

    pub async fn correct_fund_entry(
        &self,
        entry_id: RecordId,
        corrected: sdk::NewFundEntry,
        why: String,
    ) -> Result<(), DoorstepError> {
        self.call(|c| async move { c.correct_fund_entry(entry_id, corrected, &why).await })
            .await
    }

    pub async fn correct_activity(
        &self,
        activity_id: RecordId,
        corrected: NewActivity,
        why: String,
    ) -> Result<(), DoorstepError> {
        self.call(|c| async move {
            c.correct_activity(activity_id, corrected.into(), &why)
                .await
        })
        .await
    }

    /// Deletes a log record; it stops counting, and the note keeps it.
    pub async fn delete_log_record(
        &self,
        kind: sdk::LogRecordKind,
        record_id: RecordId,
        why: String,
    ) -> Result<(), DoorstepError> {
        self.call(|c| async move { c.delete_log_record(kind, record_id, &why).await })
            .await
    }

    /// Members matching `filter`, now and every time the list changes.
    pub fn observe_members(
        &self,
        filter: sdk::MemberFilter,
        listener: Arc<dyn MembersListener>,
    ) -> Arc<Observation> {
        let _runtime = RUNTIME.enter();
        Observation::new(self.client.observe_members(
            filter,
            Arc::new(move |members| listener.on_members(with_ids(members))),
        ))
    }

    /// Visits of a day or month, now and every time they change.
    pub fn observe_visits(
        &self,
        days: sdk::VisitDays,
        listener: Arc<dyn VisitsListener>,
    ) -> Arc<Observation> {
        let _runtime = RUNTIME.enter();
        Observation::new(self.client.observe_visits(
            days,
            Arc::new(move |visits| listener.on_visits(with_ids(visits))),
        ))
    }

    /// Follow-ups due on or before `on`, now and every time they change.
    pub fn observe_follow_ups_due(
        &self,
        on: Date,
        listener: Arc<dyn VisitsListener>,
    ) -> Arc<Observation> {
        let _runtime = RUNTIME.enter();
        Observation::new(self.client.observe_follow_ups_due(
            on,
            Arc::new(move |visits| listener.on_visits(with_ids(visits))),
        ))
    }

    /// Syncs now and says whether everything on this phone is safely on
    /// the server: for the volunteer handing the phone back.
    pub async fn checkpoint(&self) -> Result<sdk::Checkpoint, DoorstepError> {
        self.call(|c| async move { c.checkpoint().await }).await
    }

    /// How far the latest edit of a record has got.
    pub async fn edit_state(&self, record_id: RecordId) -> Result<sdk::EditState, DoorstepError> {
        self.call(|c| async move { c.edit_state(record_id).await })
            .await
    }

    /// Every unsynced change, as a file another device of the branch imports.
    /// PLAINTEXT: it holds members' names, phones and addresses in clear;
    /// hand it over directly (never shared storage or chat) and delete it
    /// once imported.
    pub async fn export_unsynced(&self) -> Result<Vec<u8>, DoorstepError> {
        self.call(|c| async move { c.export_unsynced().await })
            .await
    }

    /// Enters another device's exported edits as this device's own.
    pub async fn import_unsynced(&self, file: Vec<u8>) -> Result<sdk::ImportReport, DoorstepError> {
        self.call(|c| async move { c.import_unsynced(&file).await })
            .await
    }

    /// Deletes this device's data; for a revoked or handed-over phone.
    pub async fn wipe(&self) -> Result<(), DoorstepError> {
        self.stop_background_sync().await;
        self.call(|c| async move { c.wipe().await }).await
    }

    /// Stops sync, closes the store and releases the data directory: it
    /// can be opened again at once, here or in another process (an app
    /// extension). Every later call on this object fails with `Closed`.
    ///
    /// Named `shutdown` over the FFI: Kotlin's objects already have
    /// `close()` (AutoCloseable, which frees the Rust handle), and a second
    /// `close` does not compile there.
    pub async fn shutdown(&self) -> Result<(), DoorstepError> {
        self.stop_background_sync().await;
        self.call(|c| async move { c.close().await }).await
    }

    /// Re-encrypts the store under the key `keys` now gives and returns
    /// the client reopened with it; this object is closed. Put the new key
    /// in the keystore first and keep the old one until this returns.
    pub async fn rekey(&self, keys: Arc<dyn KeyProvider>) -> Result<Arc<Self>, DoorstepError> {
        let key = key_from(keys.as_ref())?;
        self.stop_background_sync().await;
        let client = self.call(|c| async move { c.rekey(key).await }).await?;
        Ok(Arc::new(DoorstepClient {
            client,
            background: Mutex::new(None),
        }))
    }

    /// The store's bytes on disk (with its write-ahead log) and its data's.
    pub async fn store_size(&self) -> Result<sdk::StoreSize, DoorstepError> {
        self.call(|c| async move { c.store_size().await }).await
    }
}
