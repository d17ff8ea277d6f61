//! Row counts of Automerge's columnar encodings, computed from run lengths.
//!
//! A column of 10^8 identical values is a handful of bytes, so nothing here
//! expands a run: rows are summed (saturating, so a declared 2^64 rows is
//! simply over every limit) and literal runs are walked value by value, which
//! costs at most one step per input byte.

use super::AdmissionError;
use super::reader::{ColumnReader, Reader, malformed};

pub(super) const DEFLATE_BIT: u32 = 0x08;

/// The encoding of a column, the low three bits of its specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnType {
    Group,
    Actor,
    Integer,
    Delta,
    Boolean,
    String,
    ValueMetadata,
    Value,
}

impl ColumnType {
    fn of(spec: u32) -> Self {
        match spec & 0x07 {
            0 => ColumnType::Group,
            1 => ColumnType::Actor,
            2 => ColumnType::Integer,
            3 => ColumnType::Delta,
            4 => ColumnType::Boolean,
            5 => ColumnType::String,
            6 => ColumnType::ValueMetadata,
            _ => ColumnType::Value,
        }
    }
}

pub(super) const fn spec(id: u32, column_type: u32) -> u32 {
    (id << 4) | column_type
}

fn column_id(spec: u32) -> u32 {
    spec >> 4
}

pub(super) fn normalized(spec: u32) -> u32 {
    spec & !DEFLATE_BIT
}

/// One column as the chunk declares it: its specification and its length in
/// the chunk, which is the deflated length when the deflate bit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ColumnMeta {
    pub(super) spec: u32,
    pub(super) len: u64,
}

impl ColumnMeta {
    pub(super) fn deflated(&self) -> bool {
        self.spec & DEFLATE_BIT != 0
    }
}

/// `RawColumns::parse`: a count, then (specification, length) pairs, sorted
/// by specification with the deflate bit ignored.
pub(super) fn parse_column_metadata(
    r: &mut Reader<'_>,
    what: &str,
) -> Result<(Vec<ColumnMeta>, u64), AdmissionError> {
    // Each pair is at least two bytes, so the vector is bounded by the input.
    let count = r.count(2, what)?;
    let mut columns = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut total: u64 = 0;
    for _ in 0..count {
        let spec = r.uleb_u32(what)?;
        let len = r.uleb(what)?;
        if let Some(last) = columns.last().map(|c: &ColumnMeta| normalized(c.spec))
            && normalized(spec) < last
        {
            return Err(malformed(format_args!("{what}: columns out of order")));
        }
        total = total.saturating_add(len);
        columns.push(ColumnMeta { spec, len });
    }
    Ok((columns, total))
}

/// Where a column sits in its table, as Automerge's `ColumnLayoutParser`
/// assigns it: a column of its own, the count column of a group, a column
/// inside a group (whose rows are the sum of the group's counts), or the raw
/// bytes behind a value metadata column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Row,
    GroupCount,
    Grouped,
    RawValue,
}

/// Mirrors `ColumnLayoutParser::add_column`, without its recursion.
pub(super) fn layout(specs: &[u32], what: &str) -> Result<Vec<Place>, AdmissionError> {
    enum State {
        Ready,
        InValue(u32),
        InGroup { id: u32, in_value: bool },
    }
    let mut state = State::Ready;
    let mut places = Vec::with_capacity(specs.len());
    let mut last: Option<u32> = None;
    for &raw in specs {
        let spec = normalized(raw);
        if let Some(last) = last {
            if last > spec {
                return Err(malformed(format_args!("{what}: columns out of order")));
            }
            if last == spec {
                return Err(malformed(format_args!("{what}: duplicate column {spec}")));
            }
        }
        last = Some(spec);
        let ty = ColumnType::of(spec);
        let id = column_id(spec);
        // A column that closes the current value or group is then placed
        // from the ready state: at most two passes.
        let place = loop {
            match state {
                State::Ready => match ty {
                    ColumnType::Group => {
                        state = State::InGroup {
                            id,
                            in_value: false,
                        };
                        break Place::GroupCount;
                    }
                    ColumnType::ValueMetadata => {
                        state = State::InValue(id);
                        break Place::Row;
                    }
                    ColumnType::Value => {
                        return Err(malformed(format_args!(
                            "{what}: raw value column without metadata"
                        )));
                    }
                    _ => break Place::Row,
                },
                State::InValue(value_id) => {
                    if ty == ColumnType::Value {
                        if value_id != id {
                            return Err(malformed(format_args!(
                                "{what}: value column after another column's metadata"
                            )));
                        }
                        state = State::Ready;
                        break Place::RawValue;
                    }
                    state = State::Ready;
                }
                State::InGroup {
                    id: group_id,
                    in_value,
                } => {
                    if group_id != id {
                        state = State::Ready;
                        continue;
                    }
                    if in_value {
                        state = State::InGroup {
                            id: group_id,
                            in_value: false,
                        };
                        if ty == ColumnType::Value {
                            break Place::RawValue;
                        }
                        continue;
                    }
                    match ty {
                        ColumnType::Group => {
                            return Err(malformed(format_args!("{what}: nested group")));
                        }
                        ColumnType::Value => {
                            return Err(malformed(format_args!(
                                "{what}: raw value column without metadata"
                            )));
                        }
                        ColumnType::ValueMetadata => {
                            state = State::InGroup {
                                id: group_id,
                                in_value: true,
                            };
                            break Place::Grouped;
                        }
                        _ => break Place::Grouped,
                    }
                }
            }
        };
        places.push(place);
    }
    Ok(places)
}

/// A value in an RLE column, as far as counting cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scalar {
    Uint(u64),
    Int(i64),
    Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    Uint,
    Int,
    Bytes,
}

/// One run of an RLE column: `count` rows of `value` (`None` is null). A
/// literal run comes out as runs of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) count: u64,
    pub(super) value: Option<Scalar>,
}

/// The runs of an RLE column (`RleDecoder`): a signed count, then one value
/// for a repeat (count > 0), `-count` values for a literal run, or an
/// unsigned count of nulls (count = 0).
#[derive(Debug, Clone)]
pub(super) struct Runs<'a> {
    r: ColumnReader<'a>,
    kind: ValueKind,
    literal_left: u64,
}

impl<'a> Runs<'a> {
    fn new(data: &'a [u8], kind: ValueKind, what: &'static str) -> Self {
        Runs {
            r: ColumnReader::new(data, what),
            kind,
            literal_left: 0,
        }
    }

    pub(super) fn uint(data: &'a [u8], what: &'static str) -> Self {
        Runs::new(data, ValueKind::Uint, what)
    }

    pub(super) fn int(data: &'a [u8], what: &'static str) -> Self {
        Runs::new(data, ValueKind::Int, what)
    }

    fn value(&mut self) -> Result<Scalar, AdmissionError> {
        match self.kind {
            ValueKind::Uint => self.r.uleb().map(Scalar::Uint),
            ValueKind::Int => self.r.sleb().map(Scalar::Int),
            ValueKind::Bytes => {
                let len = self.r.uleb()?;
                self.r.skip(len)?;
                Ok(Scalar::Bytes)
            }
        }
    }

    pub(super) fn next_run(&mut self) -> Result<Option<Run>, AdmissionError> {
        if self.literal_left > 0 {
            self.literal_left -= 1;
            let value = self.value()?;
            return Ok(Some(Run {
                count: 1,
                value: Some(value),
            }));
        }
        if self.r.is_empty() {
            return Ok(None);
        }
        let count = self.r.sleb()?;
        if count > 0 {
            let value = self.value()?;
            return Ok(Some(Run {
                count: count.unsigned_abs(),
                value: Some(value),
            }));
        }
        if count < 0 {
            // Every literal takes at least a byte; a larger count is a lie
            // (and i64::MIN would overflow Automerge's `abs()`).
            let n = count.unsigned_abs();
            if n > self.r.remaining() as u64 {
                return Err(malformed(format_args!(
                    "{} column: literal run of {n} values in {} bytes",
                    self.r_what(),
                    self.r.remaining()
                )));
            }
            self.literal_left = n - 1;
            let value = self.value()?;
            return Ok(Some(Run {
                count: 1,
                value: Some(value),
            }));
        }
        let nulls = self.r.uleb()?;
        Ok(Some(Run {
            count: nulls,
            value: None,
        }))
    }

    fn r_what(&self) -> &'static str {
        self.r.what()
    }
}

/// What a column adds up to: its rows and, for a group's count column, the
/// sum of its counts (the rows of the group's other columns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) rows: u64,
    pub(super) sum: u64,
}

/// Rows of a boolean column: alternating run lengths, false first.
fn boolean_rows(data: &[u8], what: &'static str) -> Result<u64, AdmissionError> {
    let mut r = ColumnReader::new(data, what);
    let mut rows: u64 = 0;
    while !r.is_empty() {
        rows = rows.saturating_add(r.uleb()?);
    }
    Ok(rows)
}

fn rle_tally(mut runs: Runs<'_>) -> Result<Tally, AdmissionError> {
    let mut tally = Tally::default();
    while let Some(run) = runs.next_run()? {
        tally.rows = tally.rows.saturating_add(run.count);
        if let Some(Scalar::Uint(v)) = run.value {
            tally.sum = tally.sum.saturating_add(run.count.saturating_mul(v));
        }
    }
    Ok(tally)
}

/// Tally one column by its declared type. Raw value columns have no rows.
pub(super) fn tally(spec: u32, data: &[u8], what: &'static str) -> Result<Tally, AdmissionError> {
    match ColumnType::of(spec) {
        ColumnType::Group | ColumnType::Actor | ColumnType::Integer | ColumnType::ValueMetadata => {
            rle_tally(Runs::new(data, ValueKind::Uint, what))
        }
        ColumnType::Delta => rle_tally(Runs::new(data, ValueKind::Int, what)),
        ColumnType::String => rle_tally(Runs::new(data, ValueKind::Bytes, what)),
        ColumnType::Boolean => Ok(Tally {
            rows: boolean_rows(data, what)?,
            sum: 0,
        }),
        ColumnType::Value => Ok(Tally::default()),
    }
}

/// Rows and grouped entries of one table of columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct TableCount {
    /// The table's rows: the most any row-level column declares.
    pub(super) rows: u64,
    /// Entries inside groups (an op's predecessors or successors, a
    /// change's dependencies): per group, the larger of the counts' sum and
    /// the rows of its columns.
    pub(super) grouped: u64,
}

/// Count a table's rows over the columns Automerge reads (`known`, by
/// normalized specification); others it carries without decoding, so
/// neither do we.
pub(super) fn count_table(
    columns: &[(u32, &[u8])],
    places: &[Place],
    known: &[u32],
    what: &'static str,
) -> Result<TableCount, AdmissionError> {
    let mut count = TableCount::default();
    let mut group: Option<u64> = None;
    for (&(spec, data), &place) in columns.iter().zip(places) {
        let spec = normalized(spec);
        let is_known = known.contains(&spec);
        match place {
            Place::GroupCount => {
                if let Some(entries) = group.take() {
                    count.grouped = count.grouped.saturating_add(entries);
                }
                if is_known {
                    let t = tally(spec, data, what)?;
                    count.rows = count.rows.max(t.rows);
                    group = Some(t.sum);
                }
            }
            Place::Grouped => {
                if let Some(entries) = group.as_mut()
                    && is_known
                {
                    *entries = (*entries).max(tally(spec, data, what)?.rows);
                }
            }
            Place::Row => {
                if let Some(entries) = group.take() {
                    count.grouped = count.grouped.saturating_add(entries);
                }
                if is_known {
                    count.rows = count.rows.max(tally(spec, data, what)?.rows);
                }
            }
            Place::RawValue => {}
        }
    }
    if let Some(entries) = group {
        count.grouped = count.grouped.saturating_add(entries);
    }
    Ok(count)
}

/// Values of a delta column, row by row: the running sum of its deltas.
/// Only used once the rows are known to be within limits.
#[derive(Debug, Clone)]
pub(super) struct DeltaValues<'a> {
    runs: Runs<'a>,
    left: u64,
    delta: Option<i64>,
    absolute: i64,
}

impl<'a> DeltaValues<'a> {
    pub(super) fn new(data: &'a [u8], what: &'static str) -> Self {
        DeltaValues {
            runs: Runs::int(data, what),
            left: 0,
            delta: None,
            absolute: 0,
        }
    }

    /// The next row: `Some(None)` for a null, which leaves the sum alone.
    pub(super) fn next_value(&mut self) -> Result<Option<Option<i64>>, AdmissionError> {
        while self.left == 0 {
            let Some(run) = self.runs.next_run()? else {
                return Ok(None);
            };
            self.left = run.count;
            self.delta = match run.value {
                Some(Scalar::Int(d)) => Some(d),
                _ => None,
            };
        }
        self.left -= 1;
        match self.delta {
            Some(d) => {
                self.absolute = self.absolute.checked_add(d).ok_or_else(|| {
                    malformed(format_args!(
                        "{} column: value overflows",
                        self.runs.r_what()
                    ))
                })?;
                Ok(Some(Some(self.absolute)))
            }
            None => Ok(Some(None)),
        }
    }
}

/// Values of an unsigned RLE column, row by row. Only used once the rows are
/// known to be within limits.
#[derive(Debug, Clone)]
pub(super) struct UintValues<'a> {
    runs: Runs<'a>,
    left: u64,
    value: Option<u64>,
}

impl<'a> UintValues<'a> {
    pub(super) fn new(data: &'a [u8], what: &'static str) -> Self {
        UintValues {
            runs: Runs::uint(data, what),
            left: 0,
            value: None,
        }
    }

    pub(super) fn next_value(&mut self) -> Result<Option<Option<u64>>, AdmissionError> {
        while self.left == 0 {
            let Some(run) = self.runs.next_run()? else {
                return Ok(None);
            };
            self.left = run.count;
            self.value = match run.value {
                Some(Scalar::Uint(v)) => Some(v),
                _ => None,
            };
        }
        self.left -= 1;
        Ok(Some(self.value))
    }
}

/// The largest non-null value of an unsigned RLE column, if any.
pub(super) fn max_uint(data: &[u8], what: &'static str) -> Result<Option<u64>, AdmissionError> {
    let mut runs = Runs::uint(data, what);
    let mut max = None;
    while let Some(run) = runs.next_run()? {
        if let (Some(Scalar::Uint(v)), true) = (run.value, run.count > 0) {
            max = Some(max.map_or(v, |m: u64| m.max(v)));
        }
    }
    Ok(max)
}

/// The bytes a value metadata column says its raw column holds: each
/// value's length is its metadata shifted right by four.
pub(super) fn value_bytes(data: &[u8], what: &'static str) -> Result<u64, AdmissionError> {
    let mut runs = Runs::uint(data, what);
    let mut total: u64 = 0;
    while let Some(run) = runs.next_run()? {
        if let Some(Scalar::Uint(v)) = run.value {
            total = total.saturating_add(run.count.saturating_mul(v >> 4));
        }
    }
    Ok(total)
}
