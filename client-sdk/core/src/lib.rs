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
//! client     Client: open, enroll, wipe; owns the pieces below
//! editing    typed edits, validated before anything is written
//! queries    what a field app lists: members, histories, follow-ups
//! conflicts  fields two devices set differently while offline
//! replicas   documents in memory and on disk (durable edits, compaction)
//! store      the local SQLite file
//! sync       the sync engine: sync_now, the background loop, status
//! ```

mod client;
mod conflicts;
mod editing;
mod error;
mod queries;
mod replicas;
mod store;
pub mod sync;
#[cfg(feature = "uniffi")]
mod uniffi_types;

// UniFFI derives in this crate name this crate's tag (`crate::UniFfiTag`).
#[cfg(feature = "uniffi")]
uniffi::setup_scaffolding!();

pub use client::{Client, ClientConfig, Enrollment};
pub use conflicts::{Conflict, ConflictValue, Resolution};
pub use editing::{
    MemberUpdate, NewActivity, NewFundEntry, NewHardshipEntry, NewMember, NewPlacement, NewTeam,
    NewTraining, NewVisit, TeamPerson,
};
pub use error::ClientError;
pub use queries::{MemberFilter, MemberHistory};
pub use sync::{SyncReport, SyncStatus};

pub use doorstep_protocol::schema::RecordId;
pub use doorstep_protocol::schema::log::{
    Activity, FollowUp, FundDirection, FundEntry, Placement, Training, TrainingLevel, Visit,
    VisitKind,
};
pub use doorstep_protocol::schema::roster::{
    HardshipEntry, HardshipKind, HardshipStatus, Member, MemberKind, MigrantContact, Pairing, Team,
};
pub use doorstep_protocol::{Date, DocumentId, Fen, Month, TenantId};
