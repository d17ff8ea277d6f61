//! CBOR encoding of [`Message`]s.
//!
//! Decoding works on one whole frame that the transport has already bounded
//! (`Limits::max_frame_bytes`); strings and byte strings are borrowed from it,
//! so a declared length larger than the frame fails without allocating, and
//! element counts are checked before anything is collected.

use std::collections::BTreeMap;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use super::{Message, PeerMetadata, RemoteHeads};
use crate::ids::{DocumentId, PeerId, StorageId};

/// Size bounds applied while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Most entries in any array or map inside a message.
    pub max_items: usize,
    /// Whether a `doorstep-deflated` frame is inflated, and how far:
    /// `None` refuses it (the peer did not negotiate
    /// `wire::EXTENSION_DEFLATE`).
    pub inflate: Option<Inflate>,
}

/// How far a `doorstep-deflated` frame may inflate. Besides
/// `max_frame_bytes`, the output may be at most `max_ratio` times the
/// compressed bytes (at least [`Inflate::FLOOR_BYTES`]): a server bounds
/// how much work a small frame can ask of it, as a 32 kB frame inflating
/// to the whole frame limit would otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inflate {
    pub max_ratio: usize,
}

impl Inflate {
    /// Output always allowed, whatever the ratio: small messages of
    /// repetitive CBOR compress well past any sensible ratio.
    pub const FLOOR_BYTES: usize = 64 * 1024;
    /// What a server accepts from a device. Automerge's change bytes are
    /// columnar and partly compressed already; the SDK's frames deflate
    /// 2-6x (the poor-link bench's changes: 84.9 kB to 20.8 kB).
    pub const FROM_DEVICE: Inflate = Inflate { max_ratio: 32 };
    /// What a device accepts from the server it chose: no ratio bound, the
    /// frame limit only.
    pub const FROM_SERVER: Inflate = Inflate {
        max_ratio: usize::MAX,
    };

    fn limit(self, compressed: usize, max_frame_bytes: usize) -> usize {
        compressed
            .saturating_mul(self.max_ratio)
            .max(Inflate::FLOOR_BYTES)
            .min(max_frame_bytes)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 * 1024 * 1024,
            max_items: 4096,
            inflate: None,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is well-formed as far as we looked, but over a limit.
    #[error("message of {size} bytes is larger than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The frame is not a message: bad CBOR, wrong shapes, missing fields.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A well-formed message of a type this peer does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(e: minicbor::decode::Error) -> Self {
        DecodeError::Malformed(e.to_string())
    }
}

fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}

/// Encodes one message as a CBOR map, fields in a fixed order.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    write_message(&mut e, message).expect("writing CBOR to a Vec cannot fail");
    e.into_writer()
}

type EncodeResult = Result<(), minicbor::encode::Error<std::convert::Infallible>>;

fn write_message(e: &mut Encoder<Vec<u8>>, m: &Message) -> EncodeResult {
    match m {
        Message::Join {
            sender_id,
            supported_protocol_versions,
            peer_metadata,
        } => {
            e.map(3 + u64::from(peer_metadata.is_some()))?;
            e.str("type")?.str(m.type_name())?;
            e.str("senderId")?.str(sender_id.as_str())?;
            e.str("supportedProtocolVersions")?
                .array(supported_protocol_versions.len() as u64)?;
            for v in supported_protocol_versions {
                e.str(v)?;
            }
            if let Some(meta) = peer_metadata {
                write_metadata(e, meta)?;
            }
        }
        Message::Peer {
            sender_id,
            target_id,
            selected_protocol_version,
            peer_metadata,
        } => {
            e.map(4 + u64::from(peer_metadata.is_some()))?;
            e.str("type")?.str(m.type_name())?;
            e.str("senderId")?.str(sender_id.as_str())?;
            e.str("targetId")?.str(target_id.as_str())?;
            e.str("selectedProtocolVersion")?
                .str(selected_protocol_version)?;
            if let Some(meta) = peer_metadata {
                write_metadata(e, meta)?;
            }
        }
        Message::Leave { sender_id } => {
            e.map(2)?;
            e.str("type")?.str(m.type_name())?;
            e.str("senderId")?.str(sender_id.as_str())?;
        }
        Message::Request {
            sender_id,
            target_id,
            document_id,
            data,
        }
        | Message::Sync {
            sender_id,
            target_id,
            document_id,
            data,
        } => {
            e.map(5)?;
            e.str("type")?.str(m.type_name())?;
            e.str("senderId")?.str(sender_id.as_str())?;
            e.str("targetId")?.str(target_id.as_str())?;
            e.str("documentId")?.str(&document_id.to_string())?;
            e.str("data")?.bytes(data)?;
        }
        Message::DocUnavailable {
            sender_id,
            target_id,
            document_id,
        } => {
            e.map(4)?;
            e.str("type")?.str(m.type_name())?;
            e.str("senderId")?.str(sender_id.as_str())?;
            e.str("targetId")?.str(target_id.as_str())?;
            e.str("documentId")?.str(&document_id.to_string())?;
        }
        Message::Ephemeral {
            sender_id,
            target_id,
            count,
            session_id,
            document_id,
            data,
        } => {
            e.map(7)?;
            e.str("type")?.str(m.type_name())?;
            e.str("senderId")?.str(sender_id.as_str())?;
            e.str("targetId")?.str(target_id.as_str())?;
            e.str("count")?.u64(*count)?;
            e.str("sessionId")?.str(session_id)?;
            e.str("documentId")?.str(&document_id.to_string())?;
            e.str("data")?.bytes(data)?;
        }
        Message::Error {
            message,
            sender_id,
            target_id,
        } => {
            e.map(2 + u64::from(sender_id.is_some()) + u64::from(target_id.is_some()))?;
            e.str("type")?.str(m.type_name())?;
            if let Some(sender) = sender_id {
                e.str("senderId")?.str(sender.as_str())?;
            }
            if let Some(target) = target_id {
                e.str("targetId")?.str(target.as_str())?;
            }
            e.str("message")?.str(message)?;
        }
        Message::RemoteSubscriptionChange {
            sender_id,
            target_id,
            add,
            remove,
        } => {
            e.map(5)?;
            e.str("type")?.str(m.type_name())?;
            e.str("senderId")?.str(sender_id.as_str())?;
            e.str("targetId")?.str(target_id.as_str())?;
            e.str("add")?.array(add.len() as u64)?;
            for s in add {
                e.str(s.as_str())?;
            }
            e.str("remove")?.array(remove.len() as u64)?;
            for s in remove {
                e.str(s.as_str())?;
            }
        }
        Message::RemoteHeadsChanged {
            sender_id,
            target_id,
            document_id,
            new_heads,
        } => {
            e.map(5)?;
            e.str("type")?.str(m.type_name())?;
            e.str("senderId")?.str(sender_id.as_str())?;
            e.str("targetId")?.str(target_id.as_str())?;
            e.str("documentId")?.str(&document_id.to_string())?;
            e.str("newHeads")?.map(new_heads.len() as u64)?;
            for (storage, heads) in new_heads {
                e.str(storage.as_str())?.map(2)?;
                e.str("heads")?.array(heads.heads.len() as u64)?;
                for h in &heads.heads {
                    e.str(h)?;
                }
                e.str("timestamp")?.u64(heads.timestamp)?;
            }
        }
        Message::CountedRequest {
            sender_id,
            target_id,
        } => {
            e.map(3)?;
            e.str("type")?.str(m.type_name())?;
            e.str("senderId")?.str(sender_id.as_str())?;
            e.str("targetId")?.str(target_id.as_str())?;
        }
        Message::Counted {
            sender_id,
            target_id,
            counted,
        } => {
            e.map(4)?;
            e.str("type")?.str(m.type_name())?;
            e.str("senderId")?.str(sender_id.as_str())?;
            e.str("targetId")?.str(target_id.as_str())?;
            e.str("counted")?.map(counted.len() as u64)?;
            for (document, heads) in counted {
                e.str(&document.to_string())?.array(heads.len() as u64)?;
                for h in heads {
                    e.str(h)?;
                }
            }
        }
    }
    Ok(())
}

fn write_metadata(e: &mut Encoder<Vec<u8>>, meta: &PeerMetadata) -> EncodeResult {
    let extensions = !meta.extensions.is_empty();
    e.str("peerMetadata")?
        .map(1 + u64::from(meta.storage_id.is_some()) + u64::from(extensions))?;
    if let Some(storage) = &meta.storage_id {
        e.str("storageId")?.str(storage.as_str())?;
    }
    e.str("isEphemeral")?.bool(meta.is_ephemeral)?;
    if extensions {
        e.str("doorstepExtensions")?
            .array(meta.extensions.len() as u64)?;
        for extension in &meta.extensions {
            e.str(extension)?;
        }
    }
    Ok(())
}

/// The fields any message may carry, gathered before the type is known
/// (CBOR maps have no required order, and `type` need not come first).
#[derive(Default)]
struct Fields<'b> {
    kind: Option<&'b str>,
    sender_id: Option<&'b str>,
    target_id: Option<&'b str>,
    document_id: Option<&'b str>,
    data: Option<&'b [u8]>,
    message: Option<&'b str>,
    session_id: Option<&'b str>,
    count: Option<u64>,
    versions: Option<Vec<String>>,
    selected_version: Option<&'b str>,
    metadata: Option<PeerMetadata>,
    add: Option<Vec<StorageId>>,
    remove: Option<Vec<StorageId>>,
    new_heads: Option<BTreeMap<StorageId, RemoteHeads>>,
    counted: Option<BTreeMap<DocumentId, Vec<String>>>,
}

/// The `type` of a frame holding a compressed message
/// (`wire::EXTENSION_DEFLATE`).
const DEFLATED: &str = "doorstep-deflated";

/// Messages smaller than this are not worth compressing.
const DEFLATE_FROM_BYTES: usize = 512;

/// An empty stored deflate block, not the last (byte-aligned after a sync
/// flush: header bits, padding, LEN 0 and its complement).
const EMPTY_STORED_BLOCK: [u8; 5] = [0x00, 0x00, 0x00, 0xff, 0xff];
/// The same, marked the last block of the stream.
const LAST_EMPTY_STORED_BLOCK: [u8; 5] = [0x01, 0x00, 0x00, 0xff, 0xff];

/// Encodes a message for a peer that accepted `wire::EXTENSION_DEFLATE`
/// and inflates within `receiver`: compressed when that makes it smaller,
/// plain otherwise. A message that deflates past the receiver's ratio is
/// padded with empty stored blocks up to it, so the receiver inflates it
/// (a visit whose notes repeat one phrase was refused on every try, and
/// the edit never synced) and it still crosses the link small.
pub fn encode_deflated(message: &Message, receiver: Inflate) -> Vec<u8> {
    use std::io::Write;

    let plain = encode(message);
    if plain.len() < DEFLATE_FROM_BYTES {
        return plain;
    }
    let mut deflate =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    // A sync flush ends the data byte-aligned without a last block; the
    // encoder's own finish writes into the buffer taken from it.
    if deflate
        .write_all(&plain)
        .and_then(|()| deflate.flush())
        .is_err()
    {
        return plain;
    }
    let mut compressed = std::mem::take(deflate.get_mut());
    drop(deflate);
    // Padding counted, not looped: a receiver's ratio is the caller's.
    let unpadded = compressed.len() + LAST_EMPTY_STORED_BLOCK.len();
    if receiver.limit(unpadded, usize::MAX) < plain.len() {
        let needed = plain
            .len()
            .div_ceil(receiver.max_ratio.max(1))
            .saturating_sub(unpadded);
        let blocks = needed.div_ceil(EMPTY_STORED_BLOCK.len());
        if blocks.saturating_mul(EMPTY_STORED_BLOCK.len()) >= plain.len() {
            return plain;
        }
        for _ in 0..blocks {
            compressed.extend_from_slice(&EMPTY_STORED_BLOCK);
        }
    }
    compressed.extend_from_slice(&LAST_EMPTY_STORED_BLOCK);
    let mut e = Encoder::new(Vec::new());
    let written: EncodeResult = (|| {
        e.map(2)?;
        e.str("type")?.str(DEFLATED)?;
        e.str("data")?.bytes(&compressed)?;
        Ok(())
    })();
    match written {
        Ok(()) if e.writer().len() < plain.len() => e.into_writer(),
        _ => plain,
    }
}

/// Inflates a `doorstep-deflated` payload, refusing one that would pass
/// `limit` bytes: the output grows only as bytes come out, and reading
/// stops at one byte past the limit.
fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read;

    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    flate2::bufread::DeflateDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| malformed(format!("{DEFLATED}: does not inflate: {e}")))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge {
            size: out.len(),
            limit,
        });
    }
    Ok(out)
}

/// Decodes one frame into a message; a `doorstep-deflated` frame is
/// inflated (within `limits.inflate`; refused when that is `None`) and its
/// message decoded.
pub fn decode(frame: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    match decode_plain(frame, limits)? {
        Plain::Message(message) => Ok(message),
        Plain::Deflated(data) => {
            let Some(inflate_within) = limits.inflate else {
                return Err(malformed(format!(
                    "{DEFLATED} frame, but {} was not negotiated",
                    super::EXTENSION_DEFLATE
                )));
            };
            let limit = inflate_within.limit(data.len(), limits.max_frame_bytes);
            let inflated = inflate(data, limit)?;
            match decode_plain(&inflated, limits)? {
                Plain::Message(message) => Ok(message),
                Plain::Deflated(_) => Err(malformed(format!("{DEFLATED} inside {DEFLATED}"))),
            }
        }
    }
}

/// A frame: a message, or the compressed bytes of one.
enum Plain<'b> {
    Message(Message),
    Deflated(&'b [u8]),
}

fn decode_plain<'b>(frame: &'b [u8], limits: &Limits) -> Result<Plain<'b>, DecodeError> {
    if frame.len() > limits.max_frame_bytes {
        return Err(DecodeError::TooLarge {
            size: frame.len(),
            limit: limits.max_frame_bytes,
        });
    }
    let mut d = Decoder::new(frame);
    let mut f = Fields::default();
    for_each_entry(&mut d, limits, |d, key| {
        match key {
            "type" => f.kind = Some(d.str()?),
            "senderId" => f.sender_id = Some(d.str()?),
            "targetId" => f.target_id = Some(d.str()?),
            "documentId" => f.document_id = Some(d.str()?),
            "data" => f.data = Some(byte_string(d)?),
            "message" => f.message = Some(d.str()?),
            "sessionId" => f.session_id = Some(d.str()?),
            "count" => f.count = Some(d.u64()?),
            "supportedProtocolVersions" => f.versions = Some(versions(d, limits)?),
            "selectedProtocolVersion" => f.selected_version = Some(d.str()?),
            // The README's CDDL says `metadata`; the JS code sends `peerMetadata`.
            "peerMetadata" | "metadata" => f.metadata = Some(metadata(d, limits)?),
            "add" => f.add = Some(storage_ids(d, limits)?),
            "remove" => f.remove = Some(storage_ids(d, limits)?),
            "newHeads" => f.new_heads = Some(new_heads(d, limits)?),
            "counted" => f.counted = Some(counted(d, limits)?),
            _ => d.skip()?,
        }
        Ok(())
    })?;
    if d.position() != frame.len() {
        return Err(malformed("trailing bytes after the message"));
    }
    if f.kind == Some(DEFLATED) {
        return f
            .data
            .map(Plain::Deflated)
            .ok_or_else(|| malformed("missing field data"));
    }
    f.into_message().map(Plain::Message)
}

impl Fields<'_> {
    fn into_message(self) -> Result<Message, DecodeError> {
        let kind = self.kind.ok_or_else(|| malformed("missing field type"))?;
        let sender = || peer(self.sender_id, "senderId");
        let target = || peer(self.target_id, "targetId");
        let document = || -> Result<DocumentId, DecodeError> {
            self.document_id
                .ok_or_else(|| malformed("missing field documentId"))?
                .parse()
                .map_err(|e| malformed(format!("documentId: {e}")))
        };
        let data = || {
            self.data
                .map(<[u8]>::to_vec)
                .ok_or_else(|| malformed("missing field data"))
        };
        Ok(match kind {
            "join" => Message::Join {
                sender_id: sender()?,
                supported_protocol_versions: self
                    .versions
                    .ok_or_else(|| malformed("missing field supportedProtocolVersions"))?,
                peer_metadata: self.metadata,
            },
            "peer" => Message::Peer {
                sender_id: sender()?,
                target_id: target()?,
                selected_protocol_version: self
                    .selected_version
                    .ok_or_else(|| malformed("missing field selectedProtocolVersion"))?
                    .to_owned(),
                peer_metadata: self.metadata,
            },
            "leave" => Message::Leave {
                sender_id: sender()?,
            },
            "request" => Message::Request {
                sender_id: sender()?,
                target_id: target()?,
                document_id: document()?,
                data: data()?,
            },
            "sync" => Message::Sync {
                sender_id: sender()?,
                target_id: target()?,
                document_id: document()?,
                data: data()?,
            },
            "doc-unavailable" => Message::DocUnavailable {
                sender_id: sender()?,
                target_id: target()?,
                document_id: document()?,
            },
            "ephemeral" => Message::Ephemeral {
                sender_id: sender()?,
                target_id: target()?,
                count: self.count.ok_or_else(|| malformed("missing field count"))?,
                session_id: self
                    .session_id
                    .ok_or_else(|| malformed("missing field sessionId"))?
                    .to_owned(),
                document_id: document()?,
                data: data()?,
            },
            "error" => Message::Error {
                message: self.message.unwrap_or_default().to_owned(),
                sender_id: self.sender_id.map(PeerId::new).transpose().ok().flatten(),
                target_id: self.target_id.map(PeerId::new).transpose().ok().flatten(),
            },
            "remote-subscription-change" => Message::RemoteSubscriptionChange {
                sender_id: sender()?,
                target_id: target()?,
                add: self.add.unwrap_or_default(),
                remove: self.remove.unwrap_or_default(),
            },
            "remote-heads-changed" => Message::RemoteHeadsChanged {
                sender_id: sender()?,
                target_id: target()?,
                document_id: document()?,
                new_heads: self
                    .new_heads
                    .ok_or_else(|| malformed("missing field newHeads"))?,
            },
            "doorstep-counted-request" => Message::CountedRequest {
                sender_id: sender()?,
                target_id: target()?,
            },
            "doorstep-counted" => Message::Counted {
                sender_id: sender()?,
                target_id: target()?,
                counted: self
                    .counted
                    .ok_or_else(|| malformed("missing field counted"))?,
            },
            other => {
                return Err(DecodeError::UnknownType(other.chars().take(64).collect()));
            }
        })
    }
}

fn peer(value: Option<&str>, field: &str) -> Result<PeerId, DecodeError> {
    let value = value.ok_or_else(|| malformed(format!("missing field {field}")))?;
    PeerId::new(value).map_err(|e| malformed(format!("{field}: {e}")))
}

/// Walks a definite or indefinite map with string keys.
fn for_each_entry<'b>(
    d: &mut Decoder<'b>,
    limits: &Limits,
    mut on_entry: impl FnMut(&mut Decoder<'b>, &'b str) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = d.map()?;
    for_each_in(d, len, limits, |d| {
        let key = d.str()?;
        on_entry(d, key)
    })
}

/// Walks a definite or indefinite array.
fn for_each_item<'b>(
    d: &mut Decoder<'b>,
    limits: &Limits,
    on_item: impl FnMut(&mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = d.array()?;
    for_each_in(d, len, limits, on_item)
}

/// Calls `on_item` for each of `len` items (until a break when indefinite),
/// refusing more than `limits.max_items` before reading them.
fn for_each_in<'b>(
    d: &mut Decoder<'b>,
    len: Option<u64>,
    limits: &Limits,
    mut on_item: impl FnMut(&mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut seen = 0usize;
    loop {
        match len {
            Some(n) if seen as u64 == n => break,
            None if d.datatype()? == Type::Break => {
                d.skip()?;
                break;
            }
            _ => {}
        }
        seen += 1;
        if seen > limits.max_items {
            return Err(DecodeError::TooLarge {
                size: seen,
                limit: limits.max_items,
            });
        }
        on_item(d)?;
    }
    Ok(())
}

/// A byte string; a CBOR tag in front (some encoders tag typed arrays) is skipped.
fn byte_string<'b>(d: &mut Decoder<'b>) -> Result<&'b [u8], DecodeError> {
    if d.datatype()? == Type::Tag {
        d.tag()?;
    }
    Ok(d.bytes()?)
}

fn versions(d: &mut Decoder<'_>, limits: &Limits) -> Result<Vec<String>, DecodeError> {
    // The spec's CDDL has one string; the JS client sends an array.
    if d.datatype()? == Type::String {
        return Ok(vec![d.str()?.to_owned()]);
    }
    let mut out = Vec::new();
    for_each_item(d, limits, |d| {
        out.push(d.str()?.to_owned());
        Ok(())
    })?;
    Ok(out)
}

fn storage_ids(d: &mut Decoder<'_>, limits: &Limits) -> Result<Vec<StorageId>, DecodeError> {
    let mut out = Vec::new();
    for_each_item(d, limits, |d| {
        out.push(StorageId::new(d.str()?).map_err(|e| malformed(format!("storage id: {e}")))?);
        Ok(())
    })?;
    Ok(out)
}

fn metadata(d: &mut Decoder<'_>, limits: &Limits) -> Result<PeerMetadata, DecodeError> {
    let mut meta = PeerMetadata::default();
    for_each_entry(d, limits, |d, key| {
        match key {
            "storageId" => {
                // automerge-repo omits it or sends undefined for storage-less peers.
                if d.datatype()? == Type::String {
                    meta.storage_id = Some(
                        StorageId::new(d.str()?)
                            .map_err(|e| malformed(format!("storageId: {e}")))?,
                    );
                } else {
                    d.skip()?;
                }
            }
            "isEphemeral" => meta.is_ephemeral = d.bool()?,
            "doorstepExtensions" => {
                for_each_item(d, limits, |d| {
                    meta.extensions.push(d.str()?.to_owned());
                    Ok(())
                })?;
            }
            _ => d.skip()?,
        }
        Ok(())
    })?;
    Ok(meta)
}

fn counted(
    d: &mut Decoder<'_>,
    limits: &Limits,
) -> Result<BTreeMap<DocumentId, Vec<String>>, DecodeError> {
    let mut out = BTreeMap::new();
    for_each_entry(d, limits, |d, document| {
        let document: DocumentId = document
            .parse()
            .map_err(|e| malformed(format!("counted key: {e}")))?;
        let mut heads = Vec::new();
        for_each_item(d, limits, |d| {
            heads.push(d.str()?.to_owned());
            Ok(())
        })?;
        out.insert(document, heads);
        Ok(())
    })?;
    Ok(out)
}

fn new_heads(
    d: &mut Decoder<'_>,
    limits: &Limits,
) -> Result<BTreeMap<StorageId, RemoteHeads>, DecodeError> {
    let mut out = BTreeMap::new();
    for_each_entry(d, limits, |d, storage| {
        let storage =
            StorageId::new(storage).map_err(|e| malformed(format!("newHeads key: {e}")))?;
        let mut heads = Vec::new();
        let mut timestamp = 0;
        for_each_entry(d, limits, |d, key| {
            match key {
                "heads" => for_each_item(d, limits, |d| {
                    heads.push(d.str()?.to_owned());
                    Ok(())
                })?,
                "timestamp" => timestamp = number_as_u64(d)?,
                _ => d.skip()?,
            }
            Ok(())
        })?;
        out.insert(storage, RemoteHeads { heads, timestamp });
        Ok(())
    })?;
    Ok(out)
}

/// JS numbers may arrive as CBOR floats (`Date.now()` is integral, but an
/// encoder is free to pick a float).
fn number_as_u64(d: &mut Decoder<'_>) -> Result<u64, DecodeError> {
    match d.datatype()? {
        Type::F16 | Type::F32 | Type::F64 => {
            let v = d.f64()?;
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64 {
                Ok(v as u64)
            } else {
                Err(malformed("timestamp is not a whole number"))
            }
        }
        _ => Ok(d.u64()?),
    }
}

#[cfg(test)]
mod tests;
