//! The Doorstep device SDK: what a volunteer's phone embeds.
//!
//! A [`Client`] keeps the branch's documents in a local SQLite store and lets
//! the app read and edit them in the domain's words (members, visits, aid,
//! the hardship register, teams) with no network at all. Every edit is on
//! disk before the call returns. When there is signal, the sync engine
//! exchanges changes with the server over the automerge-repo protocol and
//! reports what the server has acknowledged.
//!
//! ```text
//! client     Client: open (one owner per data directory), enroll, wipe
//! custody    where edits stand: checkpoint, edit states, export/import
//! editing    typed edits, validated before anything is written
//! queries    what a field app lists: members, histories, follow-ups
//! conflicts  fields two devices set differently while offline
//! replicas   documents in memory and on disk (durable edits, compaction)
//! store      the local SQLCipher file, encrypted with the app's key
//! sync       the sync engine: the live connection, sync_now, status
//! ```

mod client;
mod conflicts;
mod custody;
mod editing;
mod error;
mod queries;
mod replicas;
mod store;
pub mod sync;

pub use client::{Client, ClientConfig, Enrollment};
pub use conflicts::{Conflict, ConflictValue, Resolution};
pub use custody::{Checkpoint, EditState, ImportReport};
pub use editing::{
    MemberUpdate, NewActivity, NewFundEntry, NewHardshipEntry, NewMember, NewPlacement, NewTeam,
    NewTraining, NewVisit, TeamPerson,
};
pub use error::ClientError;
pub use queries::{MemberFilter, MemberHistory};
pub use store::StoreKey;
pub use sync::{BackgroundSync, SyncReport, SyncStatus};

pub use doorstep_protocol::schema::RecordId;
pub use doorstep_protocol::schema::log::{
    Activity, FollowUp, FundDirection, FundEntry, Placement, Training, TrainingLevel, Visit,
    VisitKind,
};
pub use doorstep_protocol::schema::roster::{
    HardshipEntry, HardshipKind, HardshipStatus, Member, MemberKind, MigrantContact, Pairing, Team,
};
pub use doorstep_protocol::{Date, DocumentId, Fen, Month, TenantId};
