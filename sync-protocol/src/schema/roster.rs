//! The roster document: who the branch looks after and who volunteers.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ReadDoc};

use super::{FieldError, FieldReader, FieldWriter, Record, RecordId, string_enum};
use crate::values::Date;

string_enum!(
    /// How the branch treats a member; a member can be several.
    MemberKind {
        InPost => "in_post",
        NoPost => "no_post",
        Hardship => "hardship",
        Migrant => "migrant",
        Retired => "retired",
    }
);

string_enum!(
    /// What kind of hardship a register entry records.
    HardshipKind {
        Illness => "illness",
        LowIncome => "low_income",
        Unemployment => "unemployment",
        Disability => "disability",
        Schooling => "schooling",
        Other => "other",
    }
);

string_enum!(
    /// Where a hardship entry stands ("dynamic management").
    HardshipStatus {
        Opened => "opened",
        Helped => "helped",
        Closed => "closed",
    }
);

/// Contact details kept for a migrant member working away from home
/// (the "mobile-member management card").
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct MigrantContact {
    pub workplace: Option<String>,
    pub card_no: Option<String>,
    pub contact_phone: Option<String>,
    pub family_contact: Option<String>,
}

/// A member of the branch.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Member {
    pub name: String,
    pub kinds: BTreeSet<MemberKind>,
    pub birthday: Option<Date>,
    pub phone: Option<String>,
    pub address: Option<String>,
    /// Households are what visits are counted by; members of one family
    /// share a key. Absent means the member is a household of their own.
    pub household: Option<String>,
    /// Institution and post, for members in post.
    pub post: Option<String>,
    pub migrant: Option<MigrantContact>,
    pub notes: Option<String>,
}

impl Record for Member {
    const COLLECTION: &'static str = "members";

    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError> {
        let migrant = r
            .child("migrant")?
            .map(|m| -> Result<_, FieldError> {
                Ok(MigrantContact {
                    workplace: m.opt_str("workplace")?,
                    card_no: m.opt_str("card_no")?,
                    contact_phone: m.opt_str("contact_phone")?,
                    family_contact: m.opt_str("family_contact")?,
                })
            })
            .transpose()?;
        Ok(Member {
            name: r.str("name")?,
            kinds: r.enum_set("kinds")?,
            birthday: r.opt_date("birthday")?,
            phone: r.opt_str("phone")?,
            address: r.opt_str("address")?,
            household: r.opt_str("household")?,
            post: r.opt_str("post")?,
            migrant,
            notes: r.opt_str("notes")?,
        })
    }

    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError> {
        w.str("name", &self.name)?;
        w.set("kinds", self.kinds.iter().map(MemberKind::as_str))?;
        w.opt_display("birthday", self.birthday.as_ref())?;
        w.opt_str("phone", self.phone.as_deref())?;
        w.opt_str("address", self.address.as_deref())?;
        w.opt_str("household", self.household.as_deref())?;
        w.opt_str("post", self.post.as_deref())?;
        match &self.migrant {
            Some(m) => {
                let mut c = w.child("migrant")?;
                c.opt_str("workplace", m.workplace.as_deref())?;
                c.opt_str("card_no", m.card_no.as_deref())?;
                c.opt_str("contact_phone", m.contact_phone.as_deref())?;
                c.opt_str("family_contact", m.family_contact.as_deref())?;
            }
            None => w.delete("migrant")?,
        }
        w.opt_str("notes", self.notes.as_deref())
    }
}

/// One need in a hardship entry's needs file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Need {
    pub description: String,
    pub added_on: Option<Date>,
    pub met: bool,
}

/// One status change of a hardship entry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct StatusChange {
    pub status: HardshipStatus,
    pub on: Date,
    pub note: Option<String>,
}

/// An entry in the hardship register.
///
/// Needs and status changes are maps keyed by UUIDv7, so two volunteers
/// adding a need or a status change offline both keep theirs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct HardshipEntry {
    pub member_id: RecordId,
    pub kind: HardshipKind,
    pub opened_on: Date,
    pub needs: BTreeMap<RecordId, Need>,
    pub status_history: BTreeMap<RecordId, StatusChange>,
}

impl HardshipEntry {
    /// The latest status by date (ties broken by the time-ordered id);
    /// `Opened` when nothing was recorded.
    pub fn current_status(&self) -> HardshipStatus {
        self.status_history
            .iter()
            .max_by_key(|(id, change)| (change.on, **id))
            .map(|(_, change)| change.status)
            .unwrap_or(HardshipStatus::Opened)
    }

    /// The date the entry was closed, if its current status is closed.
    pub fn closed_on(&self) -> Option<Date> {
        self.status_history
            .iter()
            .max_by_key(|(id, change)| (change.on, **id))
            .filter(|(_, change)| change.status == HardshipStatus::Closed)
            .map(|(_, change)| change.on)
    }
}

fn read_map<D: ReadDoc, V>(
    r: &FieldReader<'_, D>,
    key: &str,
    read: impl Fn(&FieldReader<'_, D>) -> Result<V, FieldError>,
) -> Result<BTreeMap<RecordId, V>, FieldError> {
    let Some(child) = r.child(key)? else {
        return Ok(BTreeMap::new());
    };
    child
        .keys()
        .into_iter()
        .map(|k| {
            let id = k.parse::<RecordId>().map_err(|_| FieldError::Invalid {
                field: format!("{key}.{k}"),
                reason: "key is not a canonical UUIDv7".into(),
            })?;
            let item = child.child(&k)?.ok_or_else(|| FieldError::WrongType {
                field: format!("{key}.{k}"),
                expected: "map",
            })?;
            Ok((id, read(&item)?))
        })
        .collect()
}

impl Record for HardshipEntry {
    const COLLECTION: &'static str = "hardship";

    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError> {
        Ok(HardshipEntry {
            member_id: r.id("member_id")?,
            kind: r.parsed("kind")?,
            opened_on: r.date("opened_on")?,
            needs: read_map(r, "needs", |n| {
                Ok(Need {
                    description: n.str("description")?,
                    added_on: n.opt_date("added_on")?,
                    met: n.bool_or_false("met")?,
                })
            })?,
            status_history: read_map(r, "status", |s| {
                Ok(StatusChange {
                    status: s.parsed("status")?,
                    on: s.date("on")?,
                    note: s.opt_str("note")?,
                })
            })?,
        })
    }

    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError> {
        w.display("member_id", &self.member_id)?;
        w.str("kind", self.kind.as_str())?;
        w.display("opened_on", &self.opened_on)?;
        {
            let mut needs = w.child("needs")?;
            for (id, need) in &self.needs {
                let mut n = needs.child(&id.to_string())?;
                n.str("description", &need.description)?;
                n.opt_display("added_on", need.added_on.as_ref())?;
                n.bool("met", need.met)?;
            }
        }
        let mut status = w.child("status")?;
        for (id, change) in &self.status_history {
            let mut s = status.child(&id.to_string())?;
            s.str("status", change.status.as_str())?;
            s.display("on", &change.on)?;
            s.opt_str("note", change.note.as_deref())?;
        }
        Ok(())
    }

    fn field_problems(&self) -> Vec<(&'static str, String)> {
        self.status_history
            .values()
            .filter(|s| s.on < self.opened_on)
            .map(|s| {
                (
                    "status_history",
                    format!(
                        "status {} on {} is before the entry was opened",
                        s.status, s.on
                    ),
                )
            })
            .collect()
    }
}

/// A "hand in hand, one helps one" pairing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Pairing {
    pub helper_id: RecordId,
    pub helped_id: RecordId,
    pub since: Date,
    /// A key contact household the branch keeps in close touch with.
    pub key_contact: bool,
    pub ended_on: Option<Date>,
    pub note: Option<String>,
}

impl Record for Pairing {
    const COLLECTION: &'static str = "pairings";

    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError> {
        Ok(Pairing {
            helper_id: r.id("helper_id")?,
            helped_id: r.id("helped_id")?,
            since: r.date("since")?,
            key_contact: r.bool_or_false("key_contact")?,
            ended_on: r.opt_date("ended_on")?,
            note: r.opt_str("note")?,
        })
    }

    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError> {
        w.display("helper_id", &self.helper_id)?;
        w.display("helped_id", &self.helped_id)?;
        w.display("since", &self.since)?;
        w.bool("key_contact", self.key_contact)?;
        w.opt_display("ended_on", self.ended_on.as_ref())?;
        w.opt_str("note", self.note.as_deref())
    }

    fn field_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.helper_id == self.helped_id {
            problems.push((
                "helped_id",
                "a member cannot be paired with themselves".into(),
            ));
        }
        if self.ended_on.is_some_and(|end| end < self.since) {
            problems.push(("ended_on", "the pairing ends before it starts".into()));
        }
        problems
    }
}

/// Someone in a volunteer team: a member of the branch or a resident who
/// is not a member.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct TeamMember {
    pub member_id: Option<RecordId>,
    pub resident_name: Option<String>,
    /// A backbone of the team.
    pub backbone: bool,
}

/// A volunteer, culture or sports team.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Team {
    pub name: String,
    pub category: String,
    pub founded_on: Option<Date>,
    /// Keyed by UUIDv7 per person in the team.
    pub people: BTreeMap<RecordId, TeamMember>,
}

impl Record for Team {
    const COLLECTION: &'static str = "teams";

    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError> {
        Ok(Team {
            name: r.str("name")?,
            category: r.str("category")?,
            founded_on: r.opt_date("founded_on")?,
            people: read_map(r, "people", |p| {
                Ok(TeamMember {
                    member_id: p.opt_id("member_id")?,
                    resident_name: p.opt_str("resident_name")?,
                    backbone: p.bool_or_false("backbone")?,
                })
            })?,
        })
    }

    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError> {
        w.str("name", &self.name)?;
        w.str("category", &self.category)?;
        w.opt_display("founded_on", self.founded_on.as_ref())?;
        let mut people = w.child("people")?;
        for (id, person) in &self.people {
            let mut p = people.child(&id.to_string())?;
            p.opt_display("member_id", person.member_id.as_ref())?;
            p.opt_str("resident_name", person.resident_name.as_deref())?;
            p.bool("backbone", person.backbone)?;
        }
        Ok(())
    }

    fn field_problems(&self) -> Vec<(&'static str, String)> {
        self.people
            .iter()
            .filter(|(_, p)| p.member_id.is_some() == p.resident_name.is_some())
            .map(|(id, _)| {
                (
                    "people",
                    format!("team person {id} must be either a member or a named resident"),
                )
            })
            .collect()
    }
}

/// The typed content of a roster document.
#[derive(Debug, Default)]
pub struct Roster {
    pub members: BTreeMap<RecordId, Member>,
    pub hardship: BTreeMap<RecordId, HardshipEntry>,
    pub pairings: BTreeMap<RecordId, Pairing>,
    pub teams: BTreeMap<RecordId, Team>,
    pub invalid: Vec<super::InvalidRecord>,
}

impl Roster {
    pub fn load<D: ReadDoc>(doc: &D) -> Roster {
        let members = super::load_collection::<Member, _>(doc);
        let hardship = super::load_collection::<HardshipEntry, _>(doc);
        let pairings = super::load_collection::<Pairing, _>(doc);
        let teams = super::load_collection::<Team, _>(doc);
        let mut invalid = members.invalid;
        invalid.extend(hardship.invalid);
        invalid.extend(pairings.invalid);
        invalid.extend(teams.invalid);
        Roster {
            members: members.records,
            hardship: hardship.records,
            pairings: pairings.records,
            teams: teams.records,
            invalid,
        }
    }
}
