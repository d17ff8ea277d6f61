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

uniffi::custom_type!(Date, String, {
    lower: |date| date.to_string(),
    try_lift: |text| Ok(text.parse::<Date>()?),
});

uniffi::custom_type!(Month, String, {
    lower: |month| month.to_string(),
    try_lift: |text| Ok(text.parse::<Month>()?),
});

uniffi::custom_type!(Fen, i64, {
    lower: |fen| fen.as_i64(),
    try_lift: |fen| Ok(Fen(fen)),
});

uniffi::custom_type!(RecordId, String, {
    lower: |id| id.to_string(),
    try_lift: |text| Ok(text.parse::<RecordId>()?),
});

uniffi::custom_type!(DocumentId, String, {
    lower: |id| id.to_string(),
    try_lift: |text| Ok(text.parse::<DocumentId>()?),
});

uniffi::custom_type!(TenantId, String, {
    lower: |id| id.to_string(),
    try_lift: |text| Ok(text.parse::<TenantId>()?),
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
