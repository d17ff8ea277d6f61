//! One record to its rows, per collection.

use automerge::{Automerge, ObjId, ObjType, ReadDoc, Value};
use doorstep_protocol::Month;
use doorstep_protocol::schema::log::{Activity, FundEntry, Placement, Training, Visit};
use doorstep_protocol::schema::roster::{HardshipEntry, Member, MemberKind, Pairing, Team};
use doorstep_protocol::schema::{Checked, Record, check_record, conflicted_fields};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MemberRow {
    pub record_id: String,
    pub name: String,
    pub household: String,
    pub in_post: bool,
    pub no_post: bool,
    pub hardship: bool,
    pub migrant: bool,
    pub retired: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HardshipRow {
    pub record_id: String,
    pub member_id: String,
    pub kind: &'static str,
    pub opened_on: String,
    pub status: &'static str,
    pub closed_on: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TeamRow {
    pub record_id: String,
    pub category: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TeamPersonRow {
    pub team_id: String,
    pub person_id: String,
    pub member_id: Option<String>,
    pub backbone: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VisitRow {
    pub record_id: String,
    pub date: String,
    pub member_id: String,
    pub kind: &'static str,
    pub aid_cash_fen: i64,
    pub aid_goods_fen: i64,
    pub follow_up_due: Option<String>,
    pub follow_up_done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ActivityRow {
    pub record_id: String,
    pub date: String,
    pub team_id: Option<String>,
    pub minutes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TrainingRow {
    pub record_id: String,
    pub date: String,
    pub level: &'static str,
    pub attendance: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlacementRow {
    pub record_id: String,
    pub date: String,
    pub member_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FundRow {
    pub record_id: String,
    pub date: String,
    pub direction: &'static str,
    pub amount_fen: i64,
}

/// A record present but not counted, with its problems joined for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InvalidRow {
    pub collection: &'static str,
    pub record_key: String,
    pub problems: String,
}

/// One conflicted field of a record, by its dotted path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ConflictRow {
    pub collection: &'static str,
    pub record_key: String,
    pub field: String,
}

/// The rows of the planned records, per table.
#[derive(Debug, Clone, Default)]
pub(super) struct Rows {
    pub members: Vec<MemberRow>,
    pub hardship: Vec<HardshipRow>,
    pub teams: Vec<TeamRow>,
    pub team_people: Vec<TeamPersonRow>,
    pub visits: Vec<VisitRow>,
    pub activities: Vec<ActivityRow>,
    pub trainings: Vec<TrainingRow>,
    pub placements: Vec<PlacementRow>,
    pub fund: Vec<FundRow>,
    pub invalid: Vec<InvalidRow>,
    pub conflicts: Vec<ConflictRow>,
}

impl Rows {
    /// Adds the rows of the record at `key` of the collection map `obj`:
    /// nothing if it is absent, its invalid listing if it does not count,
    /// and its conflicted fields either way.
    pub(super) fn read(
        &mut self,
        doc: &Automerge,
        obj: &ObjId,
        collection: &'static str,
        key: &str,
        month: Option<Month>,
    ) {
        let present = match collection {
            Member::COLLECTION => self.checked(doc, obj, key, None, Rows::member),
            HardshipEntry::COLLECTION => self.checked(doc, obj, key, None, Rows::hardship),
            Pairing::COLLECTION => self.checked(doc, obj, key, None, |_, _: (String, Pairing)| {}),
            Team::COLLECTION => self.checked(doc, obj, key, None, Rows::team),
            Visit::COLLECTION => self.checked(doc, obj, key, month, Rows::visit),
            Activity::COLLECTION => self.checked(doc, obj, key, month, Rows::activity),
            Training::COLLECTION => self.checked(doc, obj, key, month, Rows::training),
            Placement::COLLECTION => self.checked(doc, obj, key, month, Rows::placement),
            FundEntry::COLLECTION => self.checked(doc, obj, key, month, Rows::fund),
            _ => false,
        };
        if !present {
            return;
        }
        if let Ok(Some((Value::Object(ObjType::Map), record))) = doc.get(obj, key) {
            let fields: std::collections::BTreeSet<String> = conflicted_fields(doc, &record)
                .into_iter()
                .map(|f| f.path.join("."))
                .collect();
            self.conflicts
                .extend(fields.into_iter().map(|field| ConflictRow {
                    collection,
                    record_key: key.to_owned(),
                    field,
                }));
        }
    }

    /// Checks one record and adds its rows (`keep`) or its invalid listing;
    /// whether it is present.
    fn checked<R: Record>(
        &mut self,
        doc: &Automerge,
        obj: &ObjId,
        key: &str,
        month: Option<Month>,
        keep: impl FnOnce(&mut Rows, (String, R)),
    ) -> bool {
        match check_record::<R, _>(doc, obj, key, month) {
            Checked::Absent => false,
            Checked::Valid(id, record) => {
                keep(self, (id.to_string(), record));
                true
            }
            Checked::Invalid(problems) => {
                self.invalid.push(InvalidRow {
                    collection: R::COLLECTION,
                    record_key: key.to_owned(),
                    problems: problems.join("; "),
                });
                true
            }
        }
    }

    fn member(&mut self, (record_id, m): (String, Member)) {
        let has = |k| m.kinds.contains(&k);
        self.members.push(MemberRow {
            household: m.household.clone().unwrap_or_else(|| record_id.clone()),
            in_post: has(MemberKind::InPost),
            no_post: has(MemberKind::NoPost),
            hardship: has(MemberKind::Hardship),
            migrant: has(MemberKind::Migrant),
            retired: has(MemberKind::Retired),
            name: m.name,
            record_id,
        });
    }

    fn hardship(&mut self, (record_id, h): (String, HardshipEntry)) {
        self.hardship.push(HardshipRow {
            record_id,
            member_id: h.member_id.to_string(),
            kind: h.kind.as_str(),
            opened_on: h.opened_on.to_string(),
            status: h.current_status().as_str(),
            closed_on: h.closed_on().map(|d| d.to_string()),
        });
    }

    fn team(&mut self, (record_id, t): (String, Team)) {
        self.team_people
            .extend(t.people.iter().map(|(person, p)| TeamPersonRow {
                team_id: record_id.clone(),
                person_id: person.to_string(),
                member_id: p.member_id.map(|m| m.to_string()),
                backbone: p.backbone,
            }));
        self.teams.push(TeamRow {
            record_id,
            category: t.category,
        });
    }

    fn visit(&mut self, (record_id, v): (String, Visit)) {
        self.visits.push(VisitRow {
            record_id,
            date: v.date.to_string(),
            member_id: v.member_id.to_string(),
            kind: v.kind.as_str(),
            aid_cash_fen: v.aid_cash.as_i64(),
            aid_goods_fen: v.aid_goods.as_i64(),
            follow_up_due: v.follow_up.as_ref().map(|f| f.due.to_string()),
            follow_up_done: v.follow_up.as_ref().is_some_and(|f| f.done),
        });
    }

    fn activity(&mut self, (record_id, a): (String, Activity)) {
        self.activities.push(ActivityRow {
            record_id,
            date: a.date.to_string(),
            team_id: a.team_id.map(|t| t.to_string()),
            minutes: a.total_minutes(),
        });
    }

    fn training(&mut self, (record_id, t): (String, Training)) {
        self.trainings.push(TrainingRow {
            record_id,
            date: t.date.to_string(),
            level: t.level.as_str(),
            attendance: t.attendance,
        });
    }

    fn placement(&mut self, (record_id, p): (String, Placement)) {
        self.placements.push(PlacementRow {
            record_id,
            date: p.date.to_string(),
            member_id: p.member_id.to_string(),
        });
    }

    fn fund(&mut self, (record_id, f): (String, FundEntry)) {
        self.fund.push(FundRow {
            record_id,
            date: f.date.to_string(),
            direction: f.direction.as_str(),
            amount_fen: f.amount.as_i64(),
        });
    }
}
