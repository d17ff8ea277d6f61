//! The monthly log document: what happened in the branch in one month.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ReadDoc};

use super::{FieldError, FieldReader, FieldWriter, InvalidRecord, Record, RecordId, string_enum};
use crate::values::{Date, Fen, Month};

string_enum!(
    /// Why a visit was made.
    VisitKind {
        HolidayCondolence => "holiday_condolence",
        SpecialDifficulty => "special_difficulty",
        Routine => "routine",
        MigrantPhone => "migrant_phone",
        MigrantLetter => "migrant_letter",
        MigrantHomeVisit => "migrant_home_visit",
    }
);

string_enum!(
    /// Who ran a training session.
    TrainingLevel {
        District => "district",
        SubDistrict => "sub_district",
        Community => "community",
    }
);

string_enum!(
    /// Money into or out of the hardship fund.
    FundDirection {
        Donation => "donation",
        Payment => "payment",
    }
);

/// Something owed after a visit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct FollowUp {
    pub due: Date,
    pub action: String,
    pub done: bool,
}

/// A visit (or condolence, or contact with a migrant member).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Visit {
    pub date: Date,
    /// The member visited; their household is what rollups count.
    pub member_id: RecordId,
    pub kind: VisitKind,
    /// Who went: member ids or names.
    pub visitors: BTreeSet<String>,
    pub aid_cash: Fen,
    /// Goods handed over, valued in fen.
    pub aid_goods: Fen,
    pub goods_description: Option<String>,
    pub notes: Option<String>,
    pub follow_up: Option<FollowUp>,
    /// The device that recorded the visit.
    pub recorded_by: Option<String>,
}

impl Record for Visit {
    const COLLECTION: &'static str = "visits";

    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError> {
        let follow_up = r
            .child("follow_up")?
            .map(|f| -> Result<_, FieldError> {
                Ok(FollowUp {
                    due: f.date("due")?,
                    action: f.str("action")?,
                    done: f.bool_or_false("done")?,
                })
            })
            .transpose()?;
        Ok(Visit {
            date: r.date("date")?,
            member_id: r.id("member_id")?,
            kind: r.parsed("kind")?,
            visitors: r.set("visitors")?,
            aid_cash: r.fen_or_zero("aid_cash_fen")?,
            aid_goods: r.fen_or_zero("aid_goods_fen")?,
            goods_description: r.opt_str("goods_description")?,
            notes: r.opt_str("notes")?,
            follow_up,
            recorded_by: r.opt_str("recorded_by")?,
        })
    }

    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError> {
        w.display("date", &self.date)?;
        w.display("member_id", &self.member_id)?;
        w.str("kind", self.kind.as_str())?;
        w.set("visitors", &self.visitors)?;
        w.i64("aid_cash_fen", self.aid_cash.as_i64())?;
        w.i64("aid_goods_fen", self.aid_goods.as_i64())?;
        w.opt_str("goods_description", self.goods_description.as_deref())?;
        w.opt_str("notes", self.notes.as_deref())?;
        match &self.follow_up {
            Some(f) => {
                let mut c = w.child("follow_up")?;
                c.display("due", &f.due)?;
                c.str("action", &f.action)?;
                c.bool("done", f.done)?;
            }
            None => w.delete("follow_up")?,
        }
        w.opt_str("recorded_by", self.recorded_by.as_deref())
    }

    fn field_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.aid_cash.is_negative() {
            problems.push(("aid_cash", "cash aid is negative".into()));
        }
        if self.aid_cash > Fen::MAX_AMOUNT {
            problems.push((
                "aid_cash",
                format!("cash aid is over {} yuan", Fen::MAX_AMOUNT),
            ));
        }
        if self.aid_goods.is_negative() {
            problems.push(("aid_goods", "goods aid is negative".into()));
        }
        if self.aid_goods > Fen::MAX_AMOUNT {
            problems.push((
                "aid_goods",
                format!("goods aid is over {} yuan", Fen::MAX_AMOUNT),
            ));
        }
        if self.follow_up.as_ref().is_some_and(|f| f.due < self.date) {
            problems.push(("follow_up.due", "follow-up is due before the visit".into()));
        }
        problems
    }

    fn dated(&self) -> Option<Date> {
        Some(self.date)
    }
}

/// A volunteer team activity, with minutes per participant.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Activity {
    pub date: Date,
    pub team_id: Option<RecordId>,
    pub title: String,
    /// Participant (member id or name) to minutes volunteered.
    pub minutes: BTreeMap<String, i64>,
}

impl Activity {
    /// The most minutes one activity may count, all participants together: a
    /// full day for each of ten thousand people. Rollups sum minutes over
    /// every activity under a district; this bound keeps that sum far inside
    /// an `i64` however many activities there are.
    pub const MAX_TOTAL_MINUTES: i64 = 10_000 * 24 * 60;

    /// Minutes volunteered by everyone; saturates instead of overflowing,
    /// so an invalid record can still be described.
    pub fn total_minutes(&self) -> i64 {
        self.minutes
            .values()
            .fold(0, |sum, m| sum.saturating_add(*m))
    }
}

impl Record for Activity {
    const COLLECTION: &'static str = "activities";

    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError> {
        let mut minutes = BTreeMap::new();
        if let Some(p) = r.child("participants")? {
            for who in p.keys() {
                minutes.insert(who.clone(), p.i64_or_zero(&who)?);
            }
        }
        Ok(Activity {
            date: r.date("date")?,
            team_id: r.opt_id("team_id")?,
            title: r.str("title")?,
            minutes,
        })
    }

    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError> {
        w.display("date", &self.date)?;
        w.opt_display("team_id", self.team_id.as_ref())?;
        w.str("title", &self.title)?;
        let mut p = w.child("participants")?;
        // A correction that drops a participant must drop their minutes.
        for who in p.keys() {
            if !self.minutes.contains_key(&who) {
                p.delete(&who)?;
            }
        }
        for (who, minutes) in &self.minutes {
            p.i64(who, *minutes)?;
        }
        Ok(())
    }

    fn field_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems: Vec<(&'static str, String)> = self
            .minutes
            .iter()
            .filter(|(_, m)| **m < 0 || **m > 24 * 60)
            .map(|(who, m)| {
                (
                    "minutes",
                    format!("{m} minutes for {who} is not a day's work"),
                )
            })
            .collect();
        if problems.is_empty() && self.total_minutes() > Self::MAX_TOTAL_MINUTES {
            problems.push((
                "minutes",
                format!(
                    "more than {} minutes in one activity",
                    Self::MAX_TOTAL_MINUTES
                ),
            ));
        }
        problems
    }

    fn dated(&self) -> Option<Date> {
        Some(self.date)
    }
}

/// A training session or lecture.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Training {
    pub date: Date,
    pub level: TrainingLevel,
    pub topic: String,
    /// Headcount, including people who are not members.
    pub attendance: i64,
    /// Members known to have attended.
    pub attendees: BTreeSet<String>,
}

impl Training {
    /// The largest headcount one session may have. Rollups sum attendance
    /// over every session under a district; this bound keeps that sum far
    /// inside an `i64` however many sessions there are.
    pub const MAX_ATTENDANCE: i64 = 100_000;
}

impl Record for Training {
    const COLLECTION: &'static str = "trainings";

    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError> {
        Ok(Training {
            date: r.date("date")?,
            level: r.parsed("level")?,
            topic: r.str("topic")?,
            attendance: r.i64_or_zero("attendance")?,
            attendees: r.set("attendees")?,
        })
    }

    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError> {
        w.display("date", &self.date)?;
        w.str("level", self.level.as_str())?;
        w.str("topic", &self.topic)?;
        w.i64("attendance", self.attendance)?;
        w.set("attendees", &self.attendees)
    }

    fn field_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.attendance < 0 {
            problems.push(("attendance", "attendance is negative".into()));
        }
        if self.attendance > Self::MAX_ATTENDANCE {
            problems.push((
                "attendance",
                format!("attendance is over {} people", Self::MAX_ATTENDANCE),
            ));
        }
        if (self.attendees.len() as i64) > self.attendance {
            problems.push((
                "attendees",
                "more named attendees than the headcount".into(),
            ));
        }
        problems
    }

    fn dated(&self) -> Option<Date> {
        Some(self.date)
    }
}

/// A member without a post placed in a job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Placement {
    pub date: Date,
    pub member_id: RecordId,
    pub employer: String,
    pub job: Option<String>,
}

impl Record for Placement {
    const COLLECTION: &'static str = "placements";

    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError> {
        Ok(Placement {
            date: r.date("date")?,
            member_id: r.id("member_id")?,
            employer: r.str("employer")?,
            job: r.opt_str("job")?,
        })
    }

    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError> {
        w.display("date", &self.date)?;
        w.display("member_id", &self.member_id)?;
        w.str("employer", &self.employer)?;
        w.opt_str("job", self.job.as_deref())
    }

    fn dated(&self) -> Option<Date> {
        Some(self.date)
    }
}

/// A donation to, or payment from, the hardship fund.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct FundEntry {
    pub date: Date,
    pub direction: FundDirection,
    pub amount: Fen,
    /// The donor or the recipient, when a member.
    pub member_id: Option<RecordId>,
    /// What a payment is for (schooling, medical care, ...).
    pub purpose: Option<String>,
    pub note: Option<String>,
}

impl Record for FundEntry {
    const COLLECTION: &'static str = "fund";

    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError> {
        Ok(FundEntry {
            date: r.date("date")?,
            direction: r.parsed("direction")?,
            amount: r.fen_or_zero("amount_fen")?,
            member_id: r.opt_id("member_id")?,
            purpose: r.opt_str("purpose")?,
            note: r.opt_str("note")?,
        })
    }

    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError> {
        w.display("date", &self.date)?;
        w.str("direction", self.direction.as_str())?;
        w.i64("amount_fen", self.amount.as_i64())?;
        w.opt_display("member_id", self.member_id.as_ref())?;
        w.opt_str("purpose", self.purpose.as_deref())?;
        w.opt_str("note", self.note.as_deref())
    }

    fn field_problems(&self) -> Vec<(&'static str, String)> {
        if self.amount.as_i64() <= 0 {
            vec![("amount", "the amount must be more than zero".into())]
        } else if self.amount > Fen::MAX_AMOUNT {
            vec![(
                "amount",
                format!("the amount is over {} yuan", Fen::MAX_AMOUNT),
            )]
        } else {
            Vec::new()
        }
    }

    fn dated(&self) -> Option<Date> {
        Some(self.date)
    }
}

/// The typed content of one month's log document.
#[derive(Debug)]
pub struct MonthlyLog {
    pub month: Option<Month>,
    pub visits: BTreeMap<RecordId, Visit>,
    pub activities: BTreeMap<RecordId, Activity>,
    pub trainings: BTreeMap<RecordId, Training>,
    pub placements: BTreeMap<RecordId, Placement>,
    pub fund: BTreeMap<RecordId, FundEntry>,
    pub invalid: Vec<InvalidRecord>,
}

impl MonthlyLog {
    /// Loads every record; a record dated outside the document's month is
    /// invalid (it would be counted in the wrong period).
    pub fn load<D: ReadDoc>(doc: &D) -> MonthlyLog {
        let month = FieldReader::new(doc, automerge::ROOT, String::new())
            .opt_parsed::<Month>("month")
            .ok()
            .flatten();
        let mut invalid = Vec::new();
        let visits = load_in_month::<Visit, _>(doc, month, &mut invalid);
        let activities = load_in_month::<Activity, _>(doc, month, &mut invalid);
        let trainings = load_in_month::<Training, _>(doc, month, &mut invalid);
        let placements = load_in_month::<Placement, _>(doc, month, &mut invalid);
        let fund = load_in_month::<FundEntry, _>(doc, month, &mut invalid);
        MonthlyLog {
            month,
            visits,
            activities,
            trainings,
            placements,
            fund,
            invalid,
        }
    }
}

fn load_in_month<R: Record, D: ReadDoc>(
    doc: &D,
    month: Option<Month>,
    invalid: &mut Vec<InvalidRecord>,
) -> BTreeMap<RecordId, R> {
    let mut loaded = super::load_collection_of_month::<R, D>(doc, month);
    invalid.append(&mut loaded.invalid);
    loaded.records
}
