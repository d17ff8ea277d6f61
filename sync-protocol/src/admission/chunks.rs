//! The storage chunks inside a sync message: change, compressed change and
//! document chunks, walked as `Automerge::load_incremental` walks them.

use std::borrow::Cow;
use std::collections::HashMap;

use automerge::{ActorId, ChangeHash};
use sha2::{Digest, Sha256};

use super::columns::{
    self, ColumnMeta, DeltaValues, Place, TableCount, UintValues, count_table, layout, spec,
};
use super::inflate::{Budget, inflate};
use super::reader::{Reader, malformed};
use super::{AdmissionError, AdmissionLimits, CreatedObject, Inspected, InspectedChange};

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

const CHUNK_DOCUMENT: u8 = 0;
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED: u8 = 2;
const CHUNK_BUNDLE: u8 = 3;

// Column types, the low three bits of a specification.
const GROUP: u32 = 0;
const ACTOR: u32 = 1;
const INTEGER: u32 = 2;
const DELTA: u32 = 3;
const BOOLEAN: u32 = 4;
const STRING: u32 = 5;
const VALUE_META_TYPE: u32 = 6;
const VALUE_RAW_TYPE: u32 = 7;

/// The op columns `ChangeOpsColumns` decodes (storage/change/change_op_columns.rs).
const CHANGE_OP_COLUMNS: &[u32] = &[
    spec(0, ACTOR),           // obj actor
    spec(0, INTEGER),         // obj counter
    spec(1, ACTOR),           // key actor
    spec(1, DELTA),           // key counter
    spec(1, STRING),          // key string
    spec(3, BOOLEAN),         // insert
    spec(4, INTEGER),         // action
    spec(5, VALUE_META_TYPE), // value metadata
    spec(7, GROUP),           // predecessor count
    spec(7, ACTOR),           // predecessor actor
    spec(7, DELTA),           // predecessor counter
    spec(9, BOOLEAN),         // expand
    spec(10, STRING),         // mark name
];

/// The op columns of a document chunk (op_set2/columns.rs `ids`).
const DOCUMENT_OP_COLUMNS: &[u32] = &[
    spec(0, ACTOR),           // obj actor
    spec(0, INTEGER),         // obj counter
    spec(1, ACTOR),           // key actor
    spec(1, DELTA),           // key counter
    spec(1, STRING),          // key string
    spec(2, ACTOR),           // id actor
    spec(2, DELTA),           // id counter
    spec(3, BOOLEAN),         // insert
    spec(4, INTEGER),         // action
    spec(5, VALUE_META_TYPE), // value metadata
    spec(8, GROUP),           // successor count
    spec(8, ACTOR),           // successor actor
    spec(8, DELTA),           // successor counter
    spec(9, BOOLEAN),         // expand
    spec(10, STRING),         // mark name
];

const DOC_CHANGE_ACTOR: u32 = spec(0, ACTOR);
const DOC_CHANGE_SEQ: u32 = spec(0, DELTA);
const DOC_CHANGE_MAX_OP: u32 = spec(1, DELTA);
const DOC_CHANGE_DEPS_COUNT: u32 = spec(4, GROUP);
const DOC_CHANGE_DEPS: u32 = spec(4, DELTA);

/// The change metadata columns of a document chunk (change_graph.rs `ids`).
const DOCUMENT_CHANGE_COLUMNS: &[u32] = &[
    DOC_CHANGE_ACTOR,
    DOC_CHANGE_SEQ,
    DOC_CHANGE_MAX_OP,
    spec(2, DELTA),  // time
    spec(3, STRING), // message
    DOC_CHANGE_DEPS_COUNT,
    DOC_CHANGE_DEPS,
    spec(5, VALUE_META_TYPE), // extra bytes metadata
];

/// Running totals of one message against its limits.
#[derive(Debug)]
pub(super) struct Totals<'l> {
    limits: &'l AdmissionLimits,
    pub(super) budget: Budget,
    chunks: u64,
    references: u64,
    /// Index of each actor in `inspected.actors`.
    actor_index: HashMap<ActorId, u32>,
    pub(super) inspected: Inspected,
}

fn over(what: &'static str, size: u64, limit: u64) -> AdmissionError {
    AdmissionError::OverLimit { what, size, limit }
}

impl<'l> Totals<'l> {
    pub(super) fn new(limits: &'l AdmissionLimits) -> Self {
        Totals {
            limits,
            budget: Budget::new(limits.max_inflated_bytes),
            chunks: 0,
            references: 0,
            actor_index: HashMap::new(),
            inspected: Inspected::default(),
        }
    }

    /// The index of `actor` in the message's actor list. The list is no
    /// longer than the actors the input spells out, each at least a byte.
    fn intern(&mut self, actor: &[u8]) -> u32 {
        let actor = ActorId::from(actor);
        if let Some(&index) = self.actor_index.get(&actor) {
            return index;
        }
        let index = u32::try_from(self.inspected.actors.len()).unwrap_or(u32::MAX);
        self.inspected.actors.push(actor.clone());
        self.actor_index.insert(actor, index);
        index
    }

    fn add_chunk(&mut self) -> Result<(), AdmissionError> {
        self.chunks = self.chunks.saturating_add(1);
        let limit = self.limits.max_chunks as u64;
        if self.chunks > limit {
            return Err(over("chunks", self.chunks, limit));
        }
        Ok(())
    }

    fn add_ops(&mut self, ops: u64) -> Result<(), AdmissionError> {
        let total = self.inspected.ops.saturating_add(ops);
        if total > self.limits.max_ops {
            return Err(over("operations", total, self.limits.max_ops));
        }
        self.inspected.ops = total;
        Ok(())
    }

    fn add_changes(&mut self, changes: u64) -> Result<(), AdmissionError> {
        let total = self.inspected.change_count.saturating_add(changes);
        if total > self.limits.max_changes {
            return Err(over("changes", total, self.limits.max_changes));
        }
        self.inspected.change_count = total;
        Ok(())
    }

    /// Grouped entries cost Automerge about what an operation costs (an
    /// `OpId` or a hash each), so they share the operation limit.
    fn add_references(&mut self, references: u64) -> Result<(), AdmissionError> {
        self.references = self.references.saturating_add(references);
        if self.references > self.limits.max_ops {
            return Err(over("references", self.references, self.limits.max_ops));
        }
        Ok(())
    }
}

/// Walk every chunk of the concatenated ChunkList, as
/// `load_incremental(&message.changes.join())` will.
pub(super) fn inspect_chunks(data: &[u8], totals: &mut Totals<'_>) -> Result<(), AdmissionError> {
    let mut r = Reader::new(data);
    while !r.is_empty() {
        totals.add_chunk()?;
        let before = r.remaining();
        let magic = r.take(4, "chunk magic")?;
        if magic != MAGIC {
            return Err(malformed("not a storage chunk: bad magic bytes"));
        }
        let checksum = r.take(4, "chunk checksum")?;
        let chunk_type = r.byte("chunk type")?;
        if chunk_type > CHUNK_BUNDLE {
            return Err(malformed(format_args!("unknown chunk type {chunk_type}")));
        }
        let len = r.uleb("chunk length")?;
        let header_len = (before - r.remaining()) as u64;
        let body = r.take(len, "chunk")?;
        let chunk_len = header_len.saturating_add(body.len() as u64);
        match chunk_type {
            CHUNK_DOCUMENT => {
                if chunk_hash(CHUNK_DOCUMENT, body).0.get(..4) != Some(checksum) {
                    return Err(malformed("document chunk: bad checksum"));
                }
                document(body, header_len, totals)?;
            }
            CHUNK_CHANGE => {
                totals.budget.charge(chunk_len)?;
                let hash = chunk_hash(CHUNK_CHANGE, body);
                if hash.0.get(..4) != Some(checksum) {
                    return Err(malformed("change chunk: bad checksum"));
                }
                change(body, hash, chunk_len, totals)?;
            }
            CHUNK_COMPRESSED => {
                let inflated = inflate(body, &mut totals.budget, "compressed change chunk")?;
                // Automerge rebuilds the uncompressed chunk, header and all,
                // and hashes that: the checksum is of the inflated change.
                let inflated_header = 9 + uleb_len(inflated.len() as u64);
                totals.budget.charge(inflated_header)?;
                let hash = chunk_hash(CHUNK_CHANGE, &inflated);
                if hash.0.get(..4) != Some(checksum) {
                    return Err(malformed("compressed change chunk: bad checksum"));
                }
                let size = inflated_header.saturating_add(inflated.len() as u64);
                change(&inflated, hash, size, totals)?;
            }
            _ => {
                return Err(malformed(
                    "bundle chunk: Automerge's sync never sends one, so neither may a peer",
                ));
            }
        }
    }
    Ok(())
}

fn chunk_hash(chunk_type: u8, body: &[u8]) -> ChangeHash {
    let mut prefix = Vec::with_capacity(11);
    prefix.push(chunk_type);
    let mut len = body.len() as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            prefix.push(byte);
            break;
        }
        prefix.push(byte | 0x80);
    }
    let mut hasher = Sha256::new();
    hasher.update(&prefix);
    hasher.update(body);
    ChangeHash(hasher.finalize().into())
}

fn uleb_len(value: u64) -> u64 {
    let bits = 64 - u64::from(value.leading_zeros());
    bits.div_ceil(7).max(1)
}

/// A change chunk's body (`Change::parse_following_header`).
fn change(
    body: &[u8],
    hash: ChangeHash,
    inflated_bytes: u64,
    totals: &mut Totals<'_>,
) -> Result<(), AdmissionError> {
    totals.add_changes(1)?;
    let mut r = Reader::new(body);
    let dep_count = r.count(32, "change dependencies")?;
    let limit = totals.limits.max_hashes as u64;
    if dep_count > limit {
        return Err(over("dependencies", dep_count, limit));
    }
    let mut deps = Vec::with_capacity(usize::try_from(dep_count).unwrap_or(0));
    for _ in 0..dep_count {
        deps.push(r.hash("change dependency")?);
    }
    let author = r.length_prefixed("change actor")?;
    let actor = ActorId::from(author);
    let seq = r.uleb("change seq")?;
    let start_op = r.uleb("change start op")?;
    if start_op == 0 {
        return Err(malformed("change start op is zero"));
    }
    r.sleb("change time")?;
    let message = r.length_prefixed("change message")?;
    if std::str::from_utf8(message).is_err() {
        return Err(malformed("change message is not UTF-8"));
    }
    // The change's actor table: its author, then the actors its operations
    // refer to, as indexes into the message's actor list.
    let others = r.count(1, "change actors")?;
    let mut actors = Vec::with_capacity(usize::try_from(others).unwrap_or(0).saturating_add(1));
    actors.push(totals.intern(author));
    for _ in 0..others {
        let other = r.length_prefixed("change actor")?;
        actors.push(totals.intern(other));
    }
    let (columns, total) = columns::parse_column_metadata(&mut r, "change op columns")?;
    let data = r.take(total, "change op columns")?;
    // What follows the columns is the change's extra bytes, kept as is.
    if columns.iter().any(ColumnMeta::deflated) {
        return Err(malformed("change chunk with deflated columns"));
    }
    check_author_footer(r.rest(), seq)?;
    let slices: Slices<'_> = split(data, &columns, None, "change op columns")?;
    let count = count_columns(&slices, CHANGE_OP_COLUMNS, "change op")?;
    totals.add_ops(count.rows)?;
    totals.add_references(count.grouped)?;
    // Only after the operation count passed its limit: one entry per make
    // operation, at most that many.
    let objects = change_objects(&slices, &actors, start_op, count.rows)?;
    totals.inspected.changes.push(InspectedChange {
        hash,
        deps,
        actor,
        inflated_bytes,
        ops: count.rows,
        objects,
    });
    Ok(())
}

/// Automerge 0.12 asserts that a change carrying an author footer is its
/// actor's first (`assert!(change.seq() == 1)` in `ChangeGraph::add_changes`):
/// a panic any peer could reach. The footer is read as Automerge reads it
/// (`decode_author_footer`): a footer id of 1, a length, and at least that
/// many bytes.
fn check_author_footer(extra: &[u8], seq: u64) -> Result<(), AdmissionError> {
    if seq == 1 || extra.is_empty() {
        return Ok(());
    }
    let mut r = Reader::new(extra);
    let (Ok(id), Ok(len)) = (r.uleb("author footer"), r.uleb("author footer")) else {
        return Ok(());
    };
    if id == AUTHOR_FOOTER && (r.remaining() as u64) >= len {
        return Err(malformed(format_args!(
            "change at seq {seq} carries an author, which only an actor's first change may"
        )));
    }
    Ok(())
}

/// The author footer check of [`check_author_footer`] for every change of a
/// document chunk: loaded into a document that is not empty, its changes
/// are applied one by one and meet the same assertion. Runs after the
/// change count passed its limit, which bounds the rows walked.
fn check_document_authors(slices: &[(u32, Cow<'_, [u8]>)]) -> Result<(), AdmissionError> {
    let mut seqs = DeltaValues::new(column(slices, DOC_CHANGE_SEQ), "document seq");
    let mut metas = UintValues::new(column(slices, VALUE_META), "document extra bytes");
    let raw = column(slices, VALUE_RAW);
    let mut offset = 0usize;
    while let Some(meta) = metas.next_value()? {
        let seq = seqs.next_value()?.flatten().unwrap_or(0);
        let len = usize::try_from(meta.map_or(0, |m| m >> 4))
            .map_err(|_| malformed("document chunk: extra bytes too long"))?;
        let extra = offset
            .checked_add(len)
            .and_then(|end| raw.get(offset..end))
            .ok_or_else(|| malformed("document chunk: extra bytes past their column"))?;
        offset += len;
        check_author_footer(extra, u64::try_from(seq).unwrap_or(0))?;
    }
    Ok(())
}

/// The footer id of an author in a change's extra bytes (`Footer::Author`).
const AUTHOR_FOOTER: u64 = 1;

/// The make operations (actions 0 map, 2 list, 4 text, 6 table).
fn is_make(action: u64) -> bool {
    matches!(action, 0 | 2 | 4 | 6)
}

const OBJ_ACTOR: u32 = spec(0, ACTOR);
const OBJ_COUNTER: u32 = spec(0, INTEGER);
const ACTION: u32 = spec(4, INTEGER);

/// The objects a change's operations make: operation `i` has the id
/// (`start_op + i`, the author), and is made in the object its obj columns
/// name, read as `ObjIdIter` reads them (both null, or a null actor with
/// counter 0, is the root). `actors` maps the change's actor indexes to the
/// message's.
fn change_objects(
    slices: &[(u32, Cow<'_, [u8]>)],
    actors: &[u32],
    start_op: u64,
    rows: u64,
) -> Result<Vec<CreatedObject>, AdmissionError> {
    let mut obj_actor = UintValues::new(column(slices, OBJ_ACTOR), "change obj actor");
    let mut obj_counter = UintValues::new(column(slices, OBJ_COUNTER), "change obj counter");
    let mut action = UintValues::new(column(slices, ACTION), "change action");
    let author = actors.first().copied().unwrap_or_default();
    let mut objects = Vec::new();
    for i in 0..rows {
        let parent_actor = obj_actor.next_value()?.flatten();
        let parent_counter = obj_counter.next_value()?.flatten();
        let Some(make) = action.next_value()?.flatten() else {
            continue;
        };
        if !is_make(make) {
            continue;
        }
        let parent = match (parent_actor, parent_counter) {
            (None, None | Some(0)) => None,
            (Some(a), Some(c)) => {
                let a = usize::try_from(a)
                    .ok()
                    .and_then(|a| actors.get(a))
                    .ok_or_else(|| {
                        malformed(format_args!(
                            "change op: object actor index {a} of {} actors",
                            actors.len()
                        ))
                    })?;
                Some((c, *a))
            }
            _ => return Err(malformed("change op: object id with a null half")),
        };
        let counter = start_op
            .checked_add(i)
            .ok_or_else(|| malformed("change op: operation counter overflows"))?;
        objects.push(CreatedObject {
            object: (counter, author),
            parent,
        });
    }
    Ok(objects)
}

/// A table's columns: normalized specification and (inflated) data.
type Slices<'a> = Vec<(u32, Cow<'a, [u8]>)>;

/// Cut a table's data into its columns, inflating deflated ones when a
/// budget is given (document chunks); change chunks refuse them earlier.
fn split<'a>(
    data: &'a [u8],
    columns: &[ColumnMeta],
    mut budget: Option<&mut Budget>,
    what: &'static str,
) -> Result<Slices<'a>, AdmissionError> {
    let mut out = Vec::with_capacity(columns.len());
    let mut offset: usize = 0;
    for column in columns {
        let end = usize::try_from(column.len)
            .ok()
            .and_then(|len| offset.checked_add(len))
            .ok_or_else(|| malformed(format_args!("{what}: column out of range")))?;
        let slice = data
            .get(offset..end)
            .ok_or_else(|| malformed(format_args!("{what}: column out of range")))?;
        offset = end;
        let bytes = match (&mut budget, column.deflated()) {
            (Some(budget), true) => Cow::Owned(inflate(slice, budget, what)?),
            (None, true) => return Err(malformed(format_args!("{what}: deflated column"))),
            (_, false) => Cow::Borrowed(slice),
        };
        out.push((columns::normalized(column.spec), bytes));
    }
    Ok(out)
}

fn count_columns(
    slices: &[(u32, Cow<'_, [u8]>)],
    known: &[u32],
    what: &'static str,
) -> Result<TableCount, AdmissionError> {
    let specs: Vec<u32> = slices.iter().map(|(spec, _)| *spec).collect();
    let places: Vec<Place> = layout(&specs, what)?;
    let borrowed: Vec<(u32, &[u8])> = slices
        .iter()
        .map(|(spec, bytes)| (*spec, bytes.as_ref()))
        .collect();
    count_table(&borrowed, &places, known, what)
}

fn column<'s>(slices: &'s [(u32, Cow<'_, [u8]>)], spec: u32) -> &'s [u8] {
    slices
        .iter()
        .find(|(s, _)| *s == spec)
        .map(|(_, bytes)| bytes.as_ref())
        .unwrap_or_default()
}

/// A document chunk's body (`Document::parse`, then what
/// `ChangeGraphCols::load` and `OpSet::load` read of it).
fn document(body: &[u8], header_len: u64, totals: &mut Totals<'_>) -> Result<(), AdmissionError> {
    let mut r = Reader::new(body);
    let actor_count = r.count(1, "document actors")?;
    let mut actors = Vec::with_capacity(usize::try_from(actor_count).unwrap_or(0));
    for _ in 0..actor_count {
        let actor = r.length_prefixed("document actor")?;
        actors.push(totals.intern(actor));
    }
    let heads = r.count(32, "document heads")?;
    let limit = totals.limits.max_hashes as u64;
    if heads > limit {
        return Err(over("document heads", heads, limit));
    }
    r.take(heads.saturating_mul(32), "document heads")?;
    let (change_columns, change_len) =
        columns::parse_column_metadata(&mut r, "document change columns")?;
    let (op_columns, op_len) = columns::parse_column_metadata(&mut r, "document op columns")?;
    let change_data = r.take(change_len, "document change columns")?;
    let op_data = r.take(op_len, "document op columns")?;
    // The suffix is empty (older JS) or exactly one index per head; anything
    // else is data Automerge refuses as leftover.
    if !r.is_empty() {
        for _ in 0..heads {
            r.uleb("document head index")?;
        }
        if !r.is_empty() {
            return Err(malformed("document chunk: leftover data"));
        }
    }

    let deflated: u64 = change_columns
        .iter()
        .chain(&op_columns)
        .filter(|c| c.deflated())
        .map(|c| c.len)
        .fold(0, u64::saturating_add);
    let plain = (body.len() as u64).saturating_sub(deflated);
    totals.budget.charge(header_len.saturating_add(plain))?;

    // The change metadata first: its counts are checked before anything is
    // expanded, and the changes' declared op counts come from it.
    let change_ops = {
        let slices = split(
            change_data,
            &change_columns,
            Some(&mut totals.budget),
            "document change columns",
        )?;
        let count = count_columns(&slices, DOCUMENT_CHANGE_COLUMNS, "document change")?;
        totals.add_changes(count.rows)?;
        totals.add_references(count.grouped)?;
        check_references(&slices, &[DOC_CHANGE_ACTOR], actor_count, "document change")?;
        check_document_authors(&slices)?;
        declared_change_ops(&slices)?
    };

    let slices = split(
        op_data,
        &op_columns,
        Some(&mut totals.budget),
        "document op columns",
    )?;
    let count = count_columns(&slices, DOCUMENT_OP_COLUMNS, "document op")?;
    totals.add_references(count.grouped)?;
    check_references(&slices, DOCUMENT_OP_ACTORS, actor_count, "document op")?;
    // Reconstructing the changes allocates each one's declared op count,
    // which counts deleted ops the document no longer stores as rows.
    totals.add_ops(count.rows.max(change_ops))?;
    let objects = document_objects(&slices, &actors, count.rows)?;
    totals.inspected.document_objects.extend(objects);
    totals.inspected.documents = totals.inspected.documents.saturating_add(1);
    Ok(())
}

const DOC_ID_ACTOR: u32 = spec(2, ACTOR);
const DOC_ID_COUNTER: u32 = spec(2, DELTA);

/// The objects a document chunk's make operations create: each row names
/// its own id (id columns) and the object it is in (obj columns).
fn document_objects(
    slices: &[(u32, Cow<'_, [u8]>)],
    actors: &[u32],
    rows: u64,
) -> Result<Vec<CreatedObject>, AdmissionError> {
    let actor = |index: Option<u64>| -> Result<u32, AdmissionError> {
        index
            .and_then(|a| usize::try_from(a).ok())
            .and_then(|a| actors.get(a))
            .copied()
            .ok_or_else(|| malformed("document op: actor index out of range"))
    };
    let mut obj_actor = UintValues::new(column(slices, OBJ_ACTOR), "document obj actor");
    let mut obj_counter = UintValues::new(column(slices, OBJ_COUNTER), "document obj counter");
    let mut id_actor = UintValues::new(column(slices, DOC_ID_ACTOR), "document id actor");
    let mut id_counter = DeltaValues::new(column(slices, DOC_ID_COUNTER), "document id counter");
    let mut action = UintValues::new(column(slices, ACTION), "document action");
    let mut objects = Vec::new();
    for _ in 0..rows {
        let parent_actor = obj_actor.next_value()?.flatten();
        let parent_counter = obj_counter.next_value()?.flatten();
        let own_actor = id_actor.next_value()?.flatten();
        let own_counter = id_counter.next_value()?.flatten();
        let Some(make) = action.next_value()?.flatten() else {
            continue;
        };
        if !is_make(make) {
            continue;
        }
        let parent = match (parent_actor, parent_counter) {
            (None, None | Some(0)) => None,
            (Some(a), Some(c)) => Some((c, actor(Some(a))?)),
            _ => return Err(malformed("document op: object id with a null half")),
        };
        let counter = own_counter
            .and_then(|c| u64::try_from(c).ok())
            .ok_or_else(|| malformed("document op: make operation without a counter"))?;
        objects.push(CreatedObject {
            object: (counter, actor(own_actor)?),
            parent,
        });
    }
    Ok(objects)
}

/// The actor columns of a document's op table.
const DOCUMENT_OP_ACTORS: &[u32] = &[
    spec(0, ACTOR),
    spec(1, ACTOR),
    spec(2, ACTOR),
    spec(8, ACTOR),
];
const VALUE_META: u32 = spec(5, VALUE_META_TYPE);
const VALUE_RAW: u32 = spec(5, VALUE_RAW_TYPE);

/// Refuse what Automerge indexes without checking when it rebuilds a
/// document: an actor index past the document's actor list
/// (`ActorMapper`), and value lengths that run past the raw value column
/// (the extra bytes of `ChangeGraph`, hexane's `RawColumnIter::take`).
fn check_references(
    slices: &[(u32, Cow<'_, [u8]>)],
    actor_columns: &[u32],
    actors: u64,
    what: &'static str,
) -> Result<(), AdmissionError> {
    for &spec in actor_columns {
        if let Some(max) = columns::max_uint(column(slices, spec), what)?
            && max >= actors
        {
            return Err(malformed(format_args!(
                "{what}: actor index {max} of {actors} actors"
            )));
        }
    }
    let declared = columns::value_bytes(column(slices, VALUE_META), what)?;
    let present = column(slices, VALUE_RAW).len() as u64;
    if declared != present {
        return Err(malformed(format_args!(
            "{what}: values declare {declared} bytes, the value column holds {present}"
        )));
    }
    Ok(())
}

/// The ops each change of a document declares, summed as
/// `ChangeGraphCols::load` derives them: a change's max op minus the largest
/// max op among its dependencies. Also refuses what would make that code
/// index out of bounds (a dependency index past the last change, count
/// columns longer than the actor column). Runs only after the change count
/// passed its limit, so the expanded `max_ops` is bounded by it.
fn declared_change_ops(slices: &[(u32, Cow<'_, [u8]>)]) -> Result<u64, AdmissionError> {
    let rows = |spec: u32| -> Result<u64, AdmissionError> {
        Ok(columns::tally(spec, column(slices, spec), "document change")?.rows)
    };
    let len = rows(DOC_CHANGE_ACTOR)?;
    for (spec, name) in [
        (DOC_CHANGE_SEQ, "seq"),
        (DOC_CHANGE_MAX_OP, "max op"),
        (DOC_CHANGE_DEPS_COUNT, "dependency count"),
    ] {
        let n = rows(spec)?;
        if n != len {
            return Err(malformed(format_args!(
                "document chunk: {n} {name} values for {len} changes"
            )));
        }
    }
    let len = usize::try_from(len).map_err(|_| malformed("document chunk: too many changes"))?;

    let mut max_ops: Vec<u64> = Vec::with_capacity(len);
    let mut values = DeltaValues::new(column(slices, DOC_CHANGE_MAX_OP), "document max op");
    while let Some(value) = values.next_value()? {
        let value = value
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| malformed("document chunk: max op is not a 32-bit counter"))?;
        max_ops.push(u64::from(value));
    }

    let mut counts = UintValues::new(
        column(slices, DOC_CHANGE_DEPS_COUNT),
        "document dependency count",
    );
    let mut deps = DeltaValues::new(column(slices, DOC_CHANGE_DEPS), "document dependencies");
    let mut total: u64 = 0;
    for &max_op in &max_ops {
        let count = counts
            .next_value()?
            .flatten()
            .ok_or_else(|| malformed("document chunk: missing dependency count"))?;
        let mut latest_dep: u64 = 0;
        for _ in 0..count {
            let dep = deps
                .next_value()?
                .flatten()
                .and_then(|d| usize::try_from(d).ok())
                .and_then(|d| max_ops.get(d))
                .ok_or_else(|| malformed("document chunk: dependency index out of range"))?;
            latest_dep = latest_dep.max(*dep);
        }
        let own = max_op
            .checked_sub(latest_dep)
            .ok_or_else(|| malformed("document chunk: max op below a dependency's"))?;
        total = total.saturating_add(own);
    }
    Ok(total)
}
