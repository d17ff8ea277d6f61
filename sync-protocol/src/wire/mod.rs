//! The automerge-repo v1 wire protocol.
//!
//! One CBOR map per binary WebSocket frame, field names exactly as
//! `@automerge/automerge-repo-network-websocket` writes them. The server is the
//! "receiving" peer: it answers a `join` with a `peer`, then both sides send
//! `request`/`sync`/`doc-unavailable`/`ephemeral` messages.

mod codec;

use std::collections::BTreeMap;

pub use codec::{DecodeError, Limits, decode, encode};

use crate::ids::{DocumentId, PeerId, StorageId};

/// The only protocol version automerge-repo speaks.
pub const PROTOCOL_VERSION: &str = "1";

/// What a peer says about its storage in `join` and `peer`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PeerMetadata {
    /// Stable id of the peer's persistent store; sync state is saved under it.
    pub storage_id: Option<StorageId>,
    /// True when the peer will not come back with the same storage.
    pub is_ephemeral: bool,
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
