//! Bounds on a sync message, checked before Automerge decodes it.
//!
//! Automerge 0.12 trusts what it decodes. A peer can make it divide by zero
//! (a bloom filter with entries but no bits), reserve 16 GiB (a bloom filter
//! with four billion probes), inflate a few kilobytes into gigabytes (a
//! compressed change chunk or a deflated document column), or expand a few
//! bytes of run-length encoding into 10^8 operations. [`inspect_sync_message`]
//! reads the same bytes first, without allocating anything a declared count
//! asks for until that count has been checked against the input left and
//! against [`AdmissionLimits`], and says what the message carries.
//!
//! It parses the layout exactly as `sync::Message::decode` and
//! `Automerge::load_incremental` do, and is stricter in a few places stock
//! clients never reach: a bloom filter must be exactly as long as its
//! parameters say, a truncated or unverifiable trailing chunk is refused
//! rather than skipped, and bundle chunks (an experimental storage format
//! Automerge's sync never sends) are refused. In document chunks it also
//! refuses the indexes Automerge rebuilds a document with unchecked (a
//! dependency or actor index out of range, value lengths past their column),
//! which panic it.
//!
//! It also reports what the keeper needs to bound a message against the
//! document before applying it: every actor the message names, and each
//! object a make operation creates with the object it is made in (the
//! depth bound), and it refuses a change carrying an author footer past its
//! actor's first change (Automerge 0.12 asserts `seq == 1` for those).
//!
//! What it cannot see is whether a change fits the document it is applied
//! to: Automerge 0.12 still panics on some well-formed changes that do not
//! (a new actor's first change numbered other than 1, for one), so the
//! caller keeps catching panics around application.

mod chunks;
mod columns;
mod inflate;
mod reader;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

use reader::{Reader, malformed};

/// Bounds on one sync message, checked before Automerge decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Hashes per list: heads, need, each have's last sync, a change's
    /// dependencies, a document's heads.
    pub max_hashes: usize,
    /// Bloom filters ("haves") in the message.
    pub max_haves: usize,
    /// Entries of one bloom filter; its bits must be exactly
    /// `ceil(entries * bits_per_entry / 8)` bytes, present in the input.
    pub max_bloom_entries: u32,
    /// Bits per entry of one bloom filter; at least 1 when it has entries.
    pub max_bloom_bits_per_entry: u32,
    /// Probes per hash of one bloom filter; at least 1 when it has entries.
    pub max_bloom_probes: u32,
    /// Storage chunks in the message (and elements of its chunk list).
    pub max_chunks: usize,
    /// Bytes of all chunks once decompressed.
    pub max_inflated_bytes: u64,
    /// Operations declared across all chunks. Grouped entries (an op's
    /// predecessors or successors, a document's dependency links) are held
    /// to the same number separately.
    pub max_ops: u64,
    /// Changes: change chunks plus the changes inside document chunks.
    pub max_changes: u64,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_hashes: 4096,
            max_haves: 16,
            max_bloom_entries: 1_000_000,
            max_bloom_bits_per_entry: 32,
            max_bloom_probes: 32,
            max_chunks: 100_000,
            max_inflated_bytes: 64 * 1024 * 1024,
            max_ops: 2_000_000,
            max_changes: 200_000,
        }
    }
}

/// What a sync message carries, as far as limits care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspected {
    /// One per change chunk (types 1 and 2), in order.
    pub changes: Vec<InspectedChange>,
    /// Every actor the message names (authors, the actors a change's
    /// operations refer to, a document chunk's actors), once each. An
    /// [`ObjectKey`] indexes this list.
    pub actors: Vec<automerge::ActorId>,
    /// Objects made by the operations of document chunks (a document is
    /// whole: every parent is in it or is the root).
    pub document_objects: Vec<CreatedObject>,
    /// Document chunks (type 0).
    pub documents: u32,
    /// Bytes of all chunks, headers included, after decompression.
    pub inflated_bytes: u64,
    /// Operations declared across all chunks.
    pub ops: u64,
    /// Change chunks plus the changes inside document chunks.
    pub change_count: u64,
}

impl Inspected {
    /// Hashes of the change chunks, in message order.
    pub fn hashes(&self) -> impl ExactSizeIterator<Item = automerge::ChangeHash> + '_ {
        self.changes.iter().map(|c| c.hash)
    }

    /// True when the message carries nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.documents == 0
    }
}

/// One change chunk of a sync message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedChange {
    /// The hash Automerge computes for it (of the uncompressed change).
    pub hash: automerge::ChangeHash,
    pub deps: Vec<automerge::ChangeHash>,
    pub actor: automerge::ActorId,
    /// Bytes of the uncompressed chunk, header included: what
    /// `Change::raw_bytes().len()` will be.
    pub inflated_bytes: u64,
    /// Operations in the change: what `Change::len()` will be.
    pub ops: u64,
    /// Objects the change's make operations create, in operation order.
    pub objects: Vec<CreatedObject>,
}

/// An object, named by the operation that made it: (counter, index of its
/// actor in [`Inspected::actors`]). Kept this small because a message may
/// make two million objects (its operation limit).
pub type ObjectKey = (u64, u32);

/// An object a make operation creates, and the object it is made in.
///
/// Automerge's patch log costs the square of an object's depth (every
/// operation records its path from the root), and a reader walks it too, so
/// the keeper bounds the depth of what a message creates before Automerge
/// applies anything; this is what it needs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatedObject {
    pub object: ObjectKey,
    /// `None`: the document root.
    pub parent: Option<ObjectKey>,
}

/// Why a sync message was refused before Automerge saw it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("sync message is malformed: {0}")]
    Malformed(String),
    #[error("bloom filter refused: {0}")]
    BloomFilter(String),
    #[error("sync message {what} is {size}, over the limit of {limit}")]
    OverLimit {
        what: &'static str,
        size: u64,
        limit: u64,
    },
}

const MESSAGE_TYPE_SYNC: u8 = 0x42;
const MESSAGE_TYPE_SYNC_V2: u8 = 0x43;

/// Check a sync message against `limits` and say what it carries.
///
/// Runs in time and memory linear in `data` plus what the limits allow
/// (at most `max_inflated_bytes` of inflated data, held while it is read).
pub fn inspect_sync_message(
    data: &[u8],
    limits: &AdmissionLimits,
) -> Result<Inspected, AdmissionError> {
    let mut r = Reader::new(data);
    let message_type = r.byte("message type")?;
    if message_type != MESSAGE_TYPE_SYNC && message_type != MESSAGE_TYPE_SYNC_V2 {
        return Err(malformed(format_args!(
            "message type {message_type:#04x} is not a sync message"
        )));
    }
    hash_list(&mut r, limits, "heads")?;
    hash_list(&mut r, limits, "need")?;

    // A have is at least two bytes: an empty hash list and an empty filter.
    let haves = r.count(2, "haves")?;
    let limit = limits.max_haves as u64;
    if haves > limit {
        return Err(AdmissionError::OverLimit {
            what: "haves",
            size: haves,
            limit,
        });
    }
    for _ in 0..haves {
        hash_list(&mut r, limits, "last sync")?;
        let bloom = r.length_prefixed("bloom filter")?;
        check_bloom(bloom, limits)?;
    }

    // Each element of the chunk list is at least its length byte.
    let elements = r.count(1, "chunk list")?;
    let limit = limits.max_chunks as u64;
    if elements > limit {
        return Err(AdmissionError::OverLimit {
            what: "chunks",
            size: elements,
            limit,
        });
    }
    let mut parts: Vec<&[u8]> = Vec::with_capacity(usize::try_from(elements).unwrap_or(0));
    for _ in 0..elements {
        parts.push(r.length_prefixed("chunk list element")?);
    }

    // Automerge reads the flags only when bytes remain, and ignores whatever
    // follows them (that is how the flags were added compatibly), so must we.
    if !r.is_empty() {
        r.length_prefixed("flags")?;
    }
    let _ignored = r.rest();

    // `receive_sync_message` loads `changes.join()`: a chunk may straddle
    // elements, so walk the concatenation (no larger than the input).
    let joined: Cow<'_, [u8]> = match parts.as_slice() {
        [] => Cow::Borrowed(&[]),
        [one] => Cow::Borrowed(one),
        many => Cow::Owned(many.concat()),
    };
    inspect_chunks(&joined, limits)
}

/// [`inspect_sync_message`] for storage chunks that come without a sync
/// message around them (the changes of an exported file): the same bounds,
/// checksums and refusals, so what Automerge would panic on never reaches
/// it from either door.
pub fn inspect_chunks(data: &[u8], limits: &AdmissionLimits) -> Result<Inspected, AdmissionError> {
    let mut totals = chunks::Totals::new(limits);
    chunks::inspect_chunks(data, &mut totals)?;
    let mut inspected = totals.inspected;
    inspected.inflated_bytes = totals.budget.used();
    Ok(inspected)
}

fn hash_list(
    r: &mut Reader<'_>,
    limits: &AdmissionLimits,
    what: &'static str,
) -> Result<(), AdmissionError> {
    let count = r.count(32, what)?;
    let limit = limits.max_hashes as u64;
    if count > limit {
        return Err(AdmissionError::OverLimit {
            what,
            size: count,
            limit,
        });
    }
    r.take(count.saturating_mul(32), what)?;
    Ok(())
}

fn bloom_refused(why: impl std::fmt::Display) -> AdmissionError {
    AdmissionError::BloomFilter(why.to_string())
}

/// Refuse any filter that would make `BloomFilter::parse` or `get_probes`
/// panic (`% 0` when there are entries but no bits), reserve memory
/// (`Vec::with_capacity(num_probes)`) or spend time in proportion to a
/// declared number rather than to the input.
fn check_bloom(bytes: &[u8], limits: &AdmissionLimits) -> Result<(), AdmissionError> {
    // Automerge reads an empty filter as the default one, which matches nothing.
    if bytes.is_empty() {
        return Ok(());
    }
    let mut r = Reader::new(bytes);
    let leb = |e: AdmissionError| match e {
        AdmissionError::Malformed(why) => AdmissionError::BloomFilter(why),
        other => other,
    };
    let entries = r.uleb_u32("bloom entries").map_err(leb)?;
    let bits_per_entry = r.uleb_u32("bloom bits per entry").map_err(leb)?;
    let probes = r.uleb_u32("bloom probes").map_err(leb)?;
    if entries == 0 {
        // `contains_hash` answers false without probing.
        if !r.is_empty() {
            return Err(bloom_refused("bits after an empty filter"));
        }
        return Ok(());
    }
    if entries > limits.max_bloom_entries {
        return Err(bloom_refused(format_args!(
            "{entries} entries, over the limit of {}",
            limits.max_bloom_entries
        )));
    }
    if bits_per_entry == 0 || bits_per_entry > limits.max_bloom_bits_per_entry {
        return Err(bloom_refused(format_args!(
            "{bits_per_entry} bits per entry, outside 1..={}",
            limits.max_bloom_bits_per_entry
        )));
    }
    if probes == 0 || probes > limits.max_bloom_probes {
        return Err(bloom_refused(format_args!(
            "{probes} probes, outside 1..={}",
            limits.max_bloom_probes
        )));
    }
    // `bits_capacity`, in integers: the f64 product is exact this small.
    let capacity = (u64::from(entries) * u64::from(bits_per_entry)).div_ceil(8);
    // `get_probes` computes `8 * bits.len() as u32`; it must not wrap to 0.
    if capacity == 0 || capacity.saturating_mul(8) > u64::from(u32::MAX) {
        return Err(bloom_refused(format_args!("{capacity} bytes of bits")));
    }
    if r.remaining() as u64 != capacity {
        return Err(bloom_refused(format_args!(
            "{} bytes of bits where {entries} entries of {bits_per_entry} bits need {capacity}",
            r.remaining()
        )));
    }
    Ok(())
}
