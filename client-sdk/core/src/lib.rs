//! The Doorstep device SDK: what a volunteer's phone embeds.
//!
//! A [`Client`] keeps the branch's documents in an encrypted local store and lets
//! the app read and edit them in the domain's words (members, visits, aid,
//! the hardship register, teams) with no network at all. Every edit is on
//! disk before the call returns. When there is signal, the sync engine
//! exchanges changes with the server over the automerge-repo protocol and
//! reports what the server has acknowledged.
//!
//! ```text
//! client     Client: open (one owner per data directory, across processes),
//!            enroll, close, rekey, store size, wipe
//! clock      the date the device goes by: the server's, learned at each exchange
//! custody    where edits stand: checkpoint, edit states, export/import
//!            (export also from a store this version cannot open)
//! editing    typed edits, validated before anything is written; corrections
//!            and deletions of log records
//! queries    what a field app lists: every record type, histories, follow-ups
//! observe    live lists: a listener gets the new list when it changes
//! corrections  the notes that keep who corrected or deleted a record, and why
//! conflicts  fields two devices set differently while offline, settled by value
//! tree       a whole value read from a document (map-valued conflicts, notes)
//! history    which months the server holds; fetching older ones
//! index      where each log record is, each visit's member and follow-up:
//!            what reads spanning months look up instead of walking them
//! replicas   documents in memory and on disk (durable edits, compaction)
//! store      the local SQLCipher file, encrypted with the app's key; its
//!            size kept near its data's (capped log, incremental vacuum)
//! sync       the sync engine: the live connection, sync_now, status
//! status     where syncing stands, pushed on change; the first sync
//! background one bounded, cancellable sync for WorkManager / BGTask
//! ```

mod background;
mod client;
mod clock;
mod conflicts;
mod corrections;
mod custody;
mod editing;
mod error;
mod history;
mod index;
mod observe;
mod queries;
mod replicas;
mod status;
mod store;
pub mod sync;
mod tree;
#[cfg(feature = "uniffi")]
mod uniffi_types;

// UniFFI derives in this crate name this crate's tag (`crate::UniFfiTag`).
#[cfg(feature = "uniffi")]
uniffi::setup_scaffolding!();

pub use client::{Client, ClientConfig, Enrollment};
pub use clock::DeviceClock;
pub use conflicts::{Conflict, ConflictValue, Resolution};
pub use corrections::{Correction, CorrectionAction};
pub use custody::{Checkpoint, EditState, ImportReport};
pub use editing::{
    MemberUpdate, NewActivity, NewFundEntry, NewHardshipEntry, NewMember, NewPlacement, NewTeam,
    NewTraining, NewVisit, TeamPerson,
};
pub use error::ClientError;
pub use history::HistoryFetch;
pub use observe::{Listener, Observation};
pub use queries::{LogRecordKind, MemberFilter, MemberHistory, Months, VisitDays};
pub use status::{SyncProgress, SyncState, SyncStateChanges};
pub use store::{StoreKey, StoreSize};
pub use sync::{BackgroundSync, SyncReport, SyncStatus};

pub use doorstep_protocol::schema::RecordId;
pub use doorstep_protocol::schema::log::{
    Activity, FollowUp, FundDirection, FundEntry, Placement, Training, TrainingLevel, Visit,
    VisitKind,
};
pub use doorstep_protocol::schema::roster::{
    HardshipEntry, HardshipKind, HardshipStatus, Member, MemberKind, MigrantContact, Need, Pairing,
    StatusChange, Team, TeamMember,
};
pub use doorstep_protocol::{Date, DocumentId, Fen, Month, TenantId};
