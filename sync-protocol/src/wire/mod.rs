//! The automerge-repo v1 wire protocol.
//!
//! One CBOR map per binary WebSocket frame, field names exactly as
//! `@automerge/automerge-repo-network-websocket` writes them. The server is the
//! "receiving" peer: it answers a `join` with a `peer`, then both sides send
//! `request`/`sync`/`doc-unavailable`/`ephemeral` messages.

mod codec;

use std::collections::BTreeMap;

pub use codec::{DecodeError, Inflate, Limits, decode, encode, encode_deflated};

use crate::ids::{DocumentId, PeerId, StorageId};

/// The only protocol version automerge-repo speaks.
pub const PROTOCOL_VERSION: &str = "1";

/// Doorstep's extension: the `doorstep-counted-request` and
/// `doorstep-counted` messages, so a device learns on its sync socket how
/// far the rollups count its documents (no second connection).
///
/// Extensions are offered in `join`'s peer metadata
/// (`doorstepExtensions`) and accepted in `peer`'s; a peer that offered
/// none (a stock automerge-repo client, which ignores the unknown
/// metadata field) is never sent an extension message.
pub const EXTENSION_COUNTED: &str = "doorstep-counted/1";

/// Doorstep's extension: a frame may be a `doorstep-deflated` message whose
/// `data` is another message, CBOR-encoded and then raw-DEFLATE-compressed
/// ([`encode_deflated`]). Inflating stops at the frame limit, so a deflate
/// bomb is refused before anything past it is allocated.
pub const EXTENSION_DEFLATE: &str = "doorstep-deflate/1";

/// What a peer says about its storage in `join` and `peer`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PeerMetadata {
    /// Stable id of the peer's persistent store; sync state is saved under it.
    pub storage_id: Option<StorageId>,
    /// True when the peer will not come back with the same storage.
    pub is_ephemeral: bool,
    /// Doorstep extensions offered (in `join`) or accepted (in `peer`);
    /// written only when there are any.
    pub extensions: Vec<String>,
}

/// Heads of a document as seen at one storage id, for heads gossip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteHeads {
    /// Base64-encoded change hashes, as automerge-repo sends them.
    pub heads: Vec<String>,
    /// Milliseconds since the Unix epoch at the originating node.
    pub timestamp: u64,
}

/// One automerge-repo protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Join {
        sender_id: PeerId,
        supported_protocol_versions: Vec<String>,
        peer_metadata: Option<PeerMetadata>,
    },
    Peer {
        sender_id: PeerId,
        target_id: PeerId,
        selected_protocol_version: String,
        peer_metadata: Option<PeerMetadata>,
    },
    Leave {
        sender_id: PeerId,
    },
    /// Like `Sync`, but asks for `DocUnavailable` when the target lacks the doc.
    Request {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    Sync {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    DocUnavailable {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
    },
    Ephemeral {
        sender_id: PeerId,
        target_id: PeerId,
        count: u64,
        session_id: String,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    Error {
        message: String,
        sender_id: Option<PeerId>,
        target_id: Option<PeerId>,
    },
    RemoteSubscriptionChange {
        sender_id: PeerId,
        target_id: PeerId,
        add: Vec<StorageId>,
        remove: Vec<StorageId>,
    },
    RemoteHeadsChanged {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        new_heads: BTreeMap<StorageId, RemoteHeads>,
    },
    /// [`EXTENSION_COUNTED`]: how far do the rollups count my documents?
    CountedRequest {
        sender_id: PeerId,
        target_id: PeerId,
    },
    /// [`EXTENSION_COUNTED`]: per document the device may open, the heads
    /// (hex change hashes) the rollups count it up to.
    Counted {
        sender_id: PeerId,
        target_id: PeerId,
        counted: BTreeMap<DocumentId, Vec<String>>,
    },
}

impl Message {
    /// The value of the `type` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Join { .. } => "join",
            Message::Peer { .. } => "peer",
            Message::Leave { .. } => "leave",
            Message::Request { .. } => "request",
            Message::Sync { .. } => "sync",
            Message::DocUnavailable { .. } => "doc-unavailable",
            Message::Ephemeral { .. } => "ephemeral",
            Message::Error { .. } => "error",
            Message::RemoteSubscriptionChange { .. } => "remote-subscription-change",
            Message::RemoteHeadsChanged { .. } => "remote-heads-changed",
            Message::CountedRequest { .. } => "doorstep-counted-request",
            Message::Counted { .. } => "doorstep-counted",
        }
    }

    /// The document a message is about, if any.
    pub fn document_id(&self) -> Option<DocumentId> {
        match self {
            Message::Request { document_id, .. }
            | Message::Sync { document_id, .. }
            | Message::DocUnavailable { document_id, .. }
            | Message::Ephemeral { document_id, .. }
            | Message::RemoteHeadsChanged { document_id, .. } => Some(*document_id),
            _ => None,
        }
    }
}
