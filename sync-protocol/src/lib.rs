//! The sans-IO core of Doorstep, shared by the server and the device SDK.
//!
//! Nothing in this crate touches a socket, a disk or a clock: inputs come in as
//! values, outputs (messages to send, changes to persist) go out as values.
//! That keeps the protocol testable with in-memory peers and lets the server and
//! the SDK drive it from their own runtimes.
//!
//! ```text
//! ids        DocumentId (base58check, automerge: URLs), TenantId, DeviceId, PeerId, StorageId
//! values     Fen (money), Date, Month: parsed at the edge, never strings inside
//! wire       automerge-repo v1 messages and their bounded CBOR codec
//! admission  bounds on a sync message, checked before Automerge decodes it
//! session    one document synced with many peers over automerge::sync::State (the device side)
//! keeper     the server's state machine for one document: admit, apply, persist, then advertise
//! provenance which change an import re-made stands in for which
//! schema     the branch documents: roster and monthly log, typed records,
//!            validation and the deterministic genesis of each document
//! ```

pub mod admission;
pub mod ids;
pub mod keeper;
#[doc(hidden)]
pub mod mutation;
pub mod provenance;
pub mod schema;
pub mod session;
#[cfg(feature = "uniffi")]
pub mod uniffi_types;
pub mod values;
pub mod wire;

// UniFFI derives in this crate name this crate's tag (`crate::UniFfiTag`).
#[cfg(feature = "uniffi")]
uniffi::setup_scaffolding!();

pub use ids::{DeviceId, DocumentId, PeerId, StorageId, TenantId};
pub use values::{Date, Fen, Month};
