//! How the domain values cross UniFFI (feature `uniffi`, for the device
//! SDK's bindings).
//!
//! Values cross in their text or integer form and are parsed on the way in,
//! so a foreign caller meets the same rules as the wire: a malformed date or
//! id fails to lift, and the call returns an error before any SDK code runs.
//!
//! UniFFI has no ordered maps or sets, and a custom type must be named by a
//! plain identifier; each `BTreeMap`/`BTreeSet` the records use gets an alias
//! here and crosses as a `HashMap`/`Vec`. Sets lose nothing; maps lose their
//! order (keyed by UUIDv7, a foreign caller sorting the keys gets it back).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ids::{DocumentId, TenantId};
use crate::schema::RecordId;
use crate::schema::roster::{MemberKind, Need, StatusChange, TeamMember};
use crate::values::{Date, Fen, Month};

/// How a value that does not parse is reported to the foreign caller.
///
/// A malformed date, month or id fails as it crosses, before any SDK code
/// runs; UniFFI turns that failure into the call's own typed error only if
/// it *is* that error, and the error type (the FFI crate's `DoorstepError`)
/// lives above this crate. So the FFI crate registers how to make one, once,
/// before it hands out anything to call ([`report_unparsable_values_as`]);
/// unregistered (another embedding), the failure is an
/// [`UnparsableValue`] and UniFFI reports it as an internal error.
static REPORT: std::sync::OnceLock<fn(UnparsableValue) -> uniffi::deps::anyhow::Error> =
    std::sync::OnceLock::new();

/// A value from a foreign caller that is not what its type says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a {what}: {problem}")]
pub struct UnparsableValue {
    /// The kind of value: `date`, `month`, `record id`, `document id`,
    /// `branch id`.
    pub what: &'static str,
    /// What the caller sent.
    pub text: String,
    pub problem: String,
}

/// Makes every value that fails to cross into the error `report` makes.
/// The first registration wins (one FFI library per process).
pub fn report_unparsable_values_as(report: fn(UnparsableValue) -> uniffi::deps::anyhow::Error) {
    let _ = REPORT.set(report);
}

fn unparsable(
    what: &'static str,
    text: &str,
    problem: impl std::fmt::Display,
) -> uniffi::deps::anyhow::Error {
    let value = UnparsableValue {
        what,
        text: text.chars().take(64).collect(),
        problem: problem.to_string(),
    };
    match REPORT.get() {
        Some(report) => report(value),
        None => value.into(),
    }
}

/// A calendar day, as the bindings name it: `Date` would shadow
/// Foundation's `Date` in Swift (and `java.util.Date` where imported).
pub type CalendarDate = Date;
uniffi::custom_type!(CalendarDate, String, {
    lower: |date| date.to_string(),
    try_lift: |text| text.parse::<Date>().map_err(|e| unparsable("date", &text, e)),
});

uniffi::custom_type!(Month, String, {
    lower: |month| month.to_string(),
    try_lift: |text| text.parse::<Month>().map_err(|e| unparsable("month", &text, e)),
});

uniffi::custom_type!(Fen, i64, {
    lower: |fen| fen.as_i64(),
    try_lift: |fen| Ok(Fen(fen)),
});

uniffi::custom_type!(RecordId, String, {
    lower: |id| id.to_string(),
    try_lift: |text| text.parse::<RecordId>().map_err(|e| unparsable("record id", &text, e)),
});

uniffi::custom_type!(DocumentId, String, {
    lower: |id| id.to_string(),
    try_lift: |text| text.parse::<DocumentId>().map_err(|e| unparsable("document id", &text, e)),
});

uniffi::custom_type!(TenantId, String, {
    lower: |id| id.to_string(),
    try_lift: |text| text.parse::<TenantId>().map_err(|e| unparsable("branch id", &text, e)),
});

/// A member's kinds.
pub type MemberKindSet = BTreeSet<MemberKind>;
uniffi::custom_type!(MemberKindSet, Vec<MemberKind>, {
    remote,
    lower: |set| set.into_iter().collect(),
    try_lift: |list| Ok(list.into_iter().collect()),
});

/// Names (visitors, attendees).
pub type NameSet = BTreeSet<String>;
uniffi::custom_type!(NameSet, Vec<String>, {
    remote,
    lower: |set| set.into_iter().collect(),
    try_lift: |list| Ok(list.into_iter().collect()),
});

/// A hardship entry's needs by id.
pub type NeedsById = BTreeMap<RecordId, Need>;
uniffi::custom_type!(NeedsById, HashMap<RecordId, Need>, {
    remote,
    lower: |map| map.into_iter().collect(),
    try_lift: |map| Ok(map.into_iter().collect()),
});

/// A hardship entry's status changes by id.
pub type StatusChangesById = BTreeMap<RecordId, StatusChange>;
uniffi::custom_type!(StatusChangesById, HashMap<RecordId, StatusChange>, {
    remote,
    lower: |map| map.into_iter().collect(),
    try_lift: |map| Ok(map.into_iter().collect()),
});

/// A team's people by id.
pub type TeamPeopleById = BTreeMap<RecordId, TeamMember>;
uniffi::custom_type!(TeamPeopleById, HashMap<RecordId, TeamMember>, {
    remote,
    lower: |map| map.into_iter().collect(),
    try_lift: |map| Ok(map.into_iter().collect()),
});

/// Minutes volunteered, by participant.
pub type MinutesByName = BTreeMap<String, i64>;
uniffi::custom_type!(MinutesByName, HashMap<String, i64>, {
    remote,
    lower: |map| map.into_iter().collect(),
    try_lift: |map| Ok(map.into_iter().collect()),
});
