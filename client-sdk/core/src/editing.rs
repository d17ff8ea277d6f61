//! Typed edits in the domain's words. Each validates its input against the
//! schema's rules and the roster (a visit names a member that exists) before
//! anything is written, then commits one change that is on disk when the
//! call returns.
//!
//! Cancelling a call (dropping its future) is not a rollback: the write may
//! have completed, and once it is on disk it stays (an edit dropped between
//! its commit in memory and its append is purged instead, never half
//! kept). Through the FFI a call always runs to completion on the SDK's
//! runtime, whatever the caller does: "the write completes". Either way an
//! app that did not see the answer retries with the id it made
//! (`record_visit_with_id` and the other `*_with_id` calls), and the retry
//! is an upsert of the same record, never a second one.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc, Value};
use doorstep_protocol::schema::log::{
    Activity, FollowUp, FundDirection, FundEntry, Placement, Training, TrainingLevel, Visit,
    VisitKind,
};
use doorstep_protocol::schema::roster::{
    HardshipEntry, HardshipKind, HardshipStatus, Member, MemberKind, MigrantContact, Need, Pairing,
    StatusChange, Team, TeamMember,
};
use doorstep_protocol::schema::{DocumentKind, Record, RecordId, read_record, write_record};
use doorstep_protocol::{Date, DocumentId, Fen, Month};
use tokio::sync::MutexGuard;

use crate::client::Client;
use crate::corrections::{self, Correction, CorrectionAction};
use crate::error::ClientError;
use crate::queries::LogRecordKind;
use crate::replicas::Replicas;

/// A member to add to the roster.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct NewMember {
    pub name: String,
    pub kinds: BTreeSet<MemberKind>,
    pub birthday: Option<Date>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub household: Option<String>,
    pub post: Option<String>,
    pub migrant: Option<MigrantContact>,
    pub notes: Option<String>,
}

/// Fields to change on a member; `None` leaves a field alone, an empty
/// string clears it. Only the fields given are written, so two devices
/// changing different fields both keep their edits.
#[derive(Debug, Clone, Default)]
pub struct MemberUpdate {
    pub name: Option<String>,
    pub kinds: Option<BTreeSet<MemberKind>>,
    pub birthday: Option<Option<Date>>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub household: Option<String>,
    pub post: Option<String>,
    pub migrant: Option<Option<MigrantContact>>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct NewHardshipEntry {
    pub member_id: RecordId,
    pub kind: HardshipKind,
    pub opened_on: Date,
    pub needs: Vec<String>,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct NewTeam {
    pub name: String,
    pub category: String,
    pub founded_on: Option<Date>,
}

/// Someone joining a team.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum TeamPerson {
    Member { member_id: RecordId, backbone: bool },
    Resident { name: String, backbone: bool },
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct NewVisit {
    pub date: Date,
    pub member_id: RecordId,
    pub kind: VisitKind,
    pub visitors: Vec<String>,
    pub aid_cash: Fen,
    pub aid_goods: Fen,
    pub goods_description: Option<String>,
    pub notes: Option<String>,
    pub follow_up: Option<FollowUp>,
}

#[derive(Debug, Clone)]
pub struct NewActivity {
    pub date: Date,
    pub team_id: Option<RecordId>,
    pub title: String,
    /// Participant (member id or name) and minutes volunteered.
    pub minutes: Vec<(String, i64)>,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct NewTraining {
    pub date: Date,
    pub level: TrainingLevel,
    pub topic: String,
    pub attendance: i64,
    pub attendees: Vec<String>,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct NewPlacement {
    pub date: Date,
    pub member_id: RecordId,
    pub employer: String,
    pub job: Option<String>,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct NewFundEntry {
    pub date: Date,
    pub direction: FundDirection,
    pub amount: Fen,
    pub member_id: Option<RecordId>,
    pub purpose: Option<String>,
    pub note: Option<String>,
}

/// The schema's rules, the same the server counts by: the first problem
/// found, with its field.
fn check<R: Record>(record: &R) -> Result<(), ClientError> {
    match record.field_problems().into_iter().next() {
        None => Ok(()),
        Some((field, problem)) => Err(ClientError::invalid(field, problem)),
    }
}

/// The server keeps logs from 2000 to next month by its clock; a record
/// dated outside could never be synced, so it is refused before it is
/// written. `now` is the server's time as this device knows it.
pub(crate) fn check_month(month: Month, now: time::OffsetDateTime) -> Result<(), ClientError> {
    let latest = Month::new(now.year(), now.month() as u8)
        .map(|m| m.next())
        .ok_or_else(|| ClientError::invalid("date", "the device clock is out of range"))?;
    let earliest =
        Month::new(2000, 1).ok_or_else(|| ClientError::invalid("date", "no month 2000-01"))?;
    if month < earliest || month > latest {
        return Err(ClientError::invalid(
            "date",
            format!("{month} is not between {earliest} and {latest}"),
        ));
    }
    Ok(())
}

fn required(field: &'static str, what: &str, value: &str) -> Result<(), ClientError> {
    if value.trim().is_empty() {
        Err(ClientError::invalid(
            field,
            format!("{what} must not be empty"),
        ))
    } else {
        Ok(())
    }
}

/// An id the app made for a new record: it must be a UUIDv7 (what the
/// server keys records by), so the app's retry names the same record.
fn app_id(id: RecordId) -> Result<RecordId, ClientError> {
    if id.as_uuid().get_version() == Some(uuid::Version::SortRand)
        && id.as_uuid().get_variant() == uuid::Variant::RFC4122
    {
        Ok(id)
    } else {
        Err(ClientError::invalid("id", "a record id must be a UUIDv7"))
    }
}

fn cleared(value: String) -> Option<String> {
    (!value.trim().is_empty()).then_some(value)
}

impl Client {
    pub(crate) async fn replicas(&self) -> Result<MutexGuard<'_, Option<Replicas>>, ClientError> {
        self.ensure_open()?;
        let guard = self.inner.replicas.lock().await;
        if guard.is_none() {
            return Err(ClientError::NotEnrolled);
        }
        Ok(guard)
    }

    fn roster_id(&self) -> Result<DocumentId, ClientError> {
        Ok(DocumentId::roster(self.identity()?.branch))
    }

    fn log_id(&self, month: Month) -> Result<DocumentId, ClientError> {
        Ok(DocumentId::monthly_log(self.identity()?.branch, month))
    }

    /// Reads a roster record, or says it does not exist.
    async fn roster_record<R: Record>(
        &self,
        replicas: &mut Replicas,
        id: RecordId,
        what: &'static str,
    ) -> Result<R, ClientError> {
        let roster = replicas
            .get(self.roster_id()?, DocumentKind::Roster)
            .await?;
        read_record::<R, _>(roster.doc(), id)
            .map_err(|e| ClientError::Storage(e.to_string()))?
            .ok_or(ClientError::NotFound {
                what,
                id: id.to_string(),
            })
    }

    async fn write_roster<R: Record>(
        &self,
        replicas: &mut Replicas,
        id: RecordId,
        record: &R,
    ) -> Result<(), ClientError> {
        check(record)?;
        replicas
            .edit(self.roster_id()?, DocumentKind::Roster, |tx| {
                Ok(write_record(tx, id, record)?)
            })
            .await?;
        self.inner.edited.notify_one();
        Ok(())
    }

    async fn write_log<R: Record>(
        &self,
        replicas: &mut Replicas,
        date: Date,
        id: RecordId,
        record: &R,
    ) -> Result<(), ClientError> {
        check(record)?;
        let month = date.month();
        check_month(month, self.server_now().await?)?;
        replicas
            .edit(self.log_id(month)?, DocumentKind::MonthlyLog(month), |tx| {
                Ok(write_record(tx, id, record)?)
            })
            .await?;
        self.inner.edited.notify_one();
        Ok(())
    }

    async fn require_member(
        &self,
        replicas: &mut Replicas,
        id: RecordId,
    ) -> Result<Member, ClientError> {
        self.roster_record::<Member>(replicas, id, "member").await
    }

    pub async fn add_member(&self, new: NewMember) -> Result<RecordId, ClientError> {
        self.add_member_with_id(RecordId::new_v7(), new).await
    }

    /// [`Client::add_member`] under the id the app made (a UUIDv7), so a
    /// retry of a call whose outcome the app did not see (cancelled, the
    /// app killed) is an upsert: a member with this id is updated to `new`,
    /// field by field, and an identical retry writes nothing.
    pub async fn add_member_with_id(
        &self,
        id: RecordId,
        new: NewMember,
    ) -> Result<RecordId, ClientError> {
        let id = app_id(id)?;
        required("name", "a member's name", &new.name)?;
        let member = Member {
            name: new.name,
            kinds: new.kinds,
            birthday: new.birthday,
            phone: new.phone,
            address: new.address,
            household: new.household,
            post: new.post,
            migrant: new.migrant,
            notes: new.notes,
        };
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        self.write_roster(replicas, id, &member).await?;
        Ok(id)
    }

    pub async fn update_member(
        &self,
        id: RecordId,
        update: MemberUpdate,
    ) -> Result<(), ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut member = self.require_member(replicas, id).await?;
        if let Some(name) = update.name {
            required("name", "a member's name", &name)?;
            member.name = name;
        }
        if let Some(kinds) = update.kinds {
            member.kinds = kinds;
        }
        if let Some(birthday) = update.birthday {
            member.birthday = birthday;
        }
        if let Some(phone) = update.phone {
            member.phone = cleared(phone);
        }
        if let Some(address) = update.address {
            member.address = cleared(address);
        }
        if let Some(household) = update.household {
            member.household = cleared(household);
        }
        if let Some(post) = update.post {
            member.post = cleared(post);
        }
        if let Some(migrant) = update.migrant {
            member.migrant = migrant;
        }
        if let Some(notes) = update.notes {
            member.notes = cleared(notes);
        }
        self.write_roster(replicas, id, &member).await
    }

    pub async fn open_hardship_entry(
        &self,
        new: NewHardshipEntry,
    ) -> Result<RecordId, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        self.require_member(replicas, new.member_id).await?;
        let mut needs = BTreeMap::new();
        for description in new.needs {
            required("needs", "a need", &description)?;
            needs.insert(
                RecordId::new_v7(),
                Need {
                    description,
                    added_on: Some(new.opened_on),
                    met: false,
                },
            );
        }
        let entry = HardshipEntry {
            member_id: new.member_id,
            kind: new.kind,
            opened_on: new.opened_on,
            needs,
            status_history: BTreeMap::from([(
                RecordId::new_v7(),
                StatusChange {
                    status: HardshipStatus::Opened,
                    on: new.opened_on,
                    note: None,
                },
            )]),
        };
        let id = RecordId::new_v7();
        self.write_roster(replicas, id, &entry).await?;
        Ok(id)
    }

    /// Adds a need to an entry's needs file.
    pub async fn add_need(
        &self,
        entry_id: RecordId,
        description: &str,
        on: Date,
    ) -> Result<RecordId, ClientError> {
        required("description", "a need", description)?;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut entry = self
            .roster_record::<HardshipEntry>(replicas, entry_id, "hardship entry")
            .await?;
        let id = RecordId::new_v7();
        entry.needs.insert(
            id,
            Need {
                description: description.to_owned(),
                added_on: Some(on),
                met: false,
            },
        );
        self.write_roster(replicas, entry_id, &entry).await?;
        Ok(id)
    }

    /// Records a status change (helped, closed, reopened) with its date.
    pub async fn change_hardship_status(
        &self,
        entry_id: RecordId,
        status: HardshipStatus,
        on: Date,
        note: Option<String>,
    ) -> Result<RecordId, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut entry = self
            .roster_record::<HardshipEntry>(replicas, entry_id, "hardship entry")
            .await?;
        let id = RecordId::new_v7();
        entry
            .status_history
            .insert(id, StatusChange { status, on, note });
        self.write_roster(replicas, entry_id, &entry).await?;
        Ok(id)
    }

    /// A "hand in hand, one helps one" pairing.
    pub async fn pair_members(
        &self,
        helper_id: RecordId,
        helped_id: RecordId,
        since: Date,
        key_contact: bool,
    ) -> Result<RecordId, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        self.require_member(replicas, helper_id).await?;
        self.require_member(replicas, helped_id).await?;
        let pairing = Pairing {
            helper_id,
            helped_id,
            since,
            key_contact,
            ended_on: None,
            note: None,
        };
        let id = RecordId::new_v7();
        self.write_roster(replicas, id, &pairing).await?;
        Ok(id)
    }

    pub async fn create_team(&self, new: NewTeam) -> Result<RecordId, ClientError> {
        required("name", "a team's name", &new.name)?;
        required("category", "a team's category", &new.category)?;
        let team = Team {
            name: new.name,
            category: new.category,
            founded_on: new.founded_on,
            people: BTreeMap::new(),
        };
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let id = RecordId::new_v7();
        self.write_roster(replicas, id, &team).await?;
        Ok(id)
    }

    pub async fn add_to_team(
        &self,
        team_id: RecordId,
        person: TeamPerson,
    ) -> Result<RecordId, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut team = self
            .roster_record::<Team>(replicas, team_id, "team")
            .await?;
        let member = match person {
            TeamPerson::Member {
                member_id,
                backbone,
            } => {
                self.require_member(replicas, member_id).await?;
                TeamMember {
                    member_id: Some(member_id),
                    resident_name: None,
                    backbone,
                }
            }
            TeamPerson::Resident { name, backbone } => {
                required("name", "a resident's name", &name)?;
                TeamMember {
                    member_id: None,
                    resident_name: Some(name),
                    backbone,
                }
            }
        };
        let id = RecordId::new_v7();
        team.people.insert(id, member);
        self.write_roster(replicas, team_id, &team).await?;
        Ok(id)
    }

    /// A visit from the app's input, checked against the roster.
    async fn visit_from(
        &self,
        replicas: &mut Replicas,
        new: NewVisit,
        recorded_by: Option<String>,
    ) -> Result<Visit, ClientError> {
        self.require_member(replicas, new.member_id).await?;
        Ok(Visit {
            date: new.date,
            member_id: new.member_id,
            kind: new.kind,
            visitors: new.visitors.into_iter().collect(),
            aid_cash: new.aid_cash,
            aid_goods: new.aid_goods,
            goods_description: new.goods_description,
            notes: new.notes,
            follow_up: new.follow_up,
            recorded_by,
        })
    }

    async fn activity_from(
        &self,
        replicas: &mut Replicas,
        new: NewActivity,
    ) -> Result<Activity, ClientError> {
        required("title", "an activity's title", &new.title)?;
        if let Some(team) = new.team_id {
            self.roster_record::<Team>(replicas, team, "team").await?;
        }
        Ok(Activity {
            date: new.date,
            team_id: new.team_id,
            title: new.title,
            minutes: new.minutes.into_iter().collect(),
        })
    }

    fn training_from(new: NewTraining) -> Result<Training, ClientError> {
        required("topic", "a training's topic", &new.topic)?;
        Ok(Training {
            date: new.date,
            level: new.level,
            topic: new.topic,
            attendance: new.attendance,
            attendees: new.attendees.into_iter().collect(),
        })
    }

    async fn placement_from(
        &self,
        replicas: &mut Replicas,
        new: NewPlacement,
    ) -> Result<Placement, ClientError> {
        required("employer", "an employer", &new.employer)?;
        self.require_member(replicas, new.member_id).await?;
        Ok(Placement {
            date: new.date,
            member_id: new.member_id,
            employer: new.employer,
            job: new.job,
        })
    }

    async fn fund_entry_from(
        &self,
        replicas: &mut Replicas,
        new: NewFundEntry,
    ) -> Result<FundEntry, ClientError> {
        if let Some(member) = new.member_id {
            self.require_member(replicas, member).await?;
        }
        Ok(FundEntry {
            date: new.date,
            direction: new.direction,
            amount: new.amount,
            member_id: new.member_id,
            purpose: new.purpose,
            note: new.note,
        })
    }

    /// Records a visit in its month's log (opened offline if new).
    pub async fn record_visit(&self, new: NewVisit) -> Result<RecordId, ClientError> {
        self.record_visit_with_id(RecordId::new_v7(), new).await
    }

    /// [`Client::record_visit`] under the id the app made (a UUIDv7): the
    /// idempotency key of the write. A retry with the same id and date is
    /// an upsert of the same record (only fields that differ are written;
    /// an identical retry writes nothing), so a call the app cancelled, or
    /// whose answer it never saw, can be retried without recording the aid
    /// twice. The id names one record in its month: a retry must keep the
    /// date's month.
    pub async fn record_visit_with_id(
        &self,
        id: RecordId,
        new: NewVisit,
    ) -> Result<RecordId, ClientError> {
        let id = app_id(id)?;
        let device = self.identity()?.device_id.clone();
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let date = new.date;
        let visit = self.visit_from(replicas, new, Some(device)).await?;
        self.write_log(replicas, date, id, &visit).await?;
        Ok(id)
    }

    /// Marks a visit's follow-up as done.
    pub async fn complete_follow_up(&self, visit_id: RecordId) -> Result<(), ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let Some((_, mut visit)) = self.find_log_record::<Visit>(replicas, visit_id).await? else {
            return Err(ClientError::NotFound {
                what: "visit",
                id: visit_id.to_string(),
            });
        };
        let Some(follow_up) = visit.follow_up.as_mut() else {
            return Err(ClientError::invalid(
                "follow_up",
                "the visit has no follow-up",
            ));
        };
        follow_up.done = true;
        let date = visit.date;
        self.write_log(replicas, date, visit_id, &visit).await
    }

    pub async fn log_activity(&self, new: NewActivity) -> Result<RecordId, ClientError> {
        self.log_activity_with_id(RecordId::new_v7(), new).await
    }

    /// [`Client::log_activity`] under the app's id, an upsert like
    /// [`Client::record_visit_with_id`].
    pub async fn log_activity_with_id(
        &self,
        id: RecordId,
        new: NewActivity,
    ) -> Result<RecordId, ClientError> {
        let id = app_id(id)?;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let date = new.date;
        let activity = self.activity_from(replicas, new).await?;
        self.write_log(replicas, date, id, &activity).await?;
        Ok(id)
    }

    pub async fn record_training(&self, new: NewTraining) -> Result<RecordId, ClientError> {
        self.record_training_with_id(RecordId::new_v7(), new).await
    }

    /// [`Client::record_training`] under the app's id, an upsert like
    /// [`Client::record_visit_with_id`].
    pub async fn record_training_with_id(
        &self,
        id: RecordId,
        new: NewTraining,
    ) -> Result<RecordId, ClientError> {
        let id = app_id(id)?;
        let date = new.date;
        let training = Self::training_from(new)?;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        self.write_log(replicas, date, id, &training).await?;
        Ok(id)
    }

    pub async fn record_placement(&self, new: NewPlacement) -> Result<RecordId, ClientError> {
        self.record_placement_with_id(RecordId::new_v7(), new).await
    }

    /// [`Client::record_placement`] under the app's id, an upsert like
    /// [`Client::record_visit_with_id`].
    pub async fn record_placement_with_id(
        &self,
        id: RecordId,
        new: NewPlacement,
    ) -> Result<RecordId, ClientError> {
        let id = app_id(id)?;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let date = new.date;
        let placement = self.placement_from(replicas, new).await?;
        self.write_log(replicas, date, id, &placement).await?;
        Ok(id)
    }

    pub async fn record_fund_entry(&self, new: NewFundEntry) -> Result<RecordId, ClientError> {
        self.record_fund_entry_with_id(RecordId::new_v7(), new)
            .await
    }

    /// [`Client::record_fund_entry`] under the app's id, an upsert like
    /// [`Client::record_visit_with_id`].
    pub async fn record_fund_entry_with_id(
        &self,
        id: RecordId,
        new: NewFundEntry,
    ) -> Result<RecordId, ClientError> {
        let id = app_id(id)?;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let date = new.date;
        let entry = self.fund_entry_from(replicas, new).await?;
        self.write_log(replicas, date, id, &entry).await?;
        Ok(id)
    }

    /// Replaces a visit with `corrected` (checked as a new visit is), keeping
    /// who recorded it, and notes who corrected it, when and why.
    pub async fn correct_visit(
        &self,
        id: RecordId,
        corrected: NewVisit,
        why: &str,
    ) -> Result<(), ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let recorded_by = self
            .find_log_record::<Visit>(replicas, id)
            .await
            .ok()
            .flatten()
            .and_then(|(_, v)| v.recorded_by);
        let visit = self.visit_from(replicas, corrected, recorded_by).await?;
        self.correct_log(replicas, LogRecordKind::Visit, id, &visit, why)
            .await
    }

    pub async fn correct_activity(
        &self,
        id: RecordId,
        corrected: NewActivity,
        why: &str,
    ) -> Result<(), ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let activity = self.activity_from(replicas, corrected).await?;
        self.correct_log(replicas, LogRecordKind::Activity, id, &activity, why)
            .await
    }

    pub async fn correct_training(
        &self,
        id: RecordId,
        corrected: NewTraining,
        why: &str,
    ) -> Result<(), ClientError> {
        let training = Self::training_from(corrected)?;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        self.correct_log(replicas, LogRecordKind::Training, id, &training, why)
            .await
    }

    pub async fn correct_placement(
        &self,
        id: RecordId,
        corrected: NewPlacement,
        why: &str,
    ) -> Result<(), ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let placement = self.placement_from(replicas, corrected).await?;
        self.correct_log(replicas, LogRecordKind::Placement, id, &placement, why)
            .await
    }

    pub async fn correct_fund_entry(
        &self,
        id: RecordId,
        corrected: NewFundEntry,
        why: &str,
    ) -> Result<(), ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let entry = self.fund_entry_from(replicas, corrected).await?;
        self.correct_log(replicas, LogRecordKind::FundEntry, id, &entry, why)
            .await
    }

    /// Deletes a log record: it stops counting on this device and, after
    /// sync, in every rollup. The note keeps what it was, who deleted it,
    /// when and why (see [`Client::corrections`]).
    pub async fn delete_log_record(
        &self,
        kind: LogRecordKind,
        id: RecordId,
        why: &str,
    ) -> Result<(), ClientError> {
        required("why", "the reason for a deletion", why)?;
        let device = self.identity()?.device_id.clone();
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let month =
            self.month_of_log_record(replicas, kind, id)
                .await?
                .ok_or(ClientError::NotFound {
                    what: kind.what(),
                    id: id.to_string(),
                })?;
        let key = id.to_string();
        replicas
            .edit(self.log_id(month)?, DocumentKind::MonthlyLog(month), |tx| {
                let before = corrections::record_json(tx, kind.collection(), &key);
                if let Some((Value::Object(ObjType::Map), collection)) =
                    tx.get(automerge::ROOT, kind.collection())?
                {
                    tx.delete(&collection, key.as_str())?;
                }
                corrections::write(
                    tx,
                    &note(kind, id, CorrectionAction::Deleted, device, why, before),
                )?;
                Ok(())
            })
            .await?;
        self.inner.edited.notify_one();
        Ok(())
    }

    /// Writes a corrected log record in place, with its note, in one change.
    async fn correct_log<R: Record>(
        &self,
        replicas: &mut Replicas,
        kind: LogRecordKind,
        id: RecordId,
        record: &R,
        why: &str,
    ) -> Result<(), ClientError> {
        required("why", "the reason for a correction", why)?;
        check(record)?;
        let device = self.identity()?.device_id.clone();
        let month =
            self.month_of_log_record(replicas, kind, id)
                .await?
                .ok_or(ClientError::NotFound {
                    what: kind.what(),
                    id: id.to_string(),
                })?;
        if let Some(date) = record.dated()
            && date.month() != month
        {
            // Moving it is a delete in one document and a write in another,
            // which cannot be one change: a failure between would lose or
            // double-count it.
            return Err(ClientError::invalid(
                "date",
                format!(
                    "a correction cannot move a record out of {month}; delete it and record it again"
                ),
            ));
        }
        let key = id.to_string();
        replicas
            .edit(self.log_id(month)?, DocumentKind::MonthlyLog(month), |tx| {
                let before = corrections::record_json(tx, kind.collection(), &key);
                write_record(tx, id, record)?;
                corrections::write(
                    tx,
                    &note(kind, id, CorrectionAction::Corrected, device, why, before),
                )?;
                Ok(())
            })
            .await?;
        self.inner.edited.notify_one();
        Ok(())
    }
}

fn note(
    kind: LogRecordKind,
    record_id: RecordId,
    action: CorrectionAction,
    by_device: String,
    why: &str,
    before: String,
) -> Correction {
    Correction {
        id: RecordId::new_v7(),
        kind,
        record_id,
        action,
        by_device,
        at_unix_secs: time::OffsetDateTime::now_utc().unix_timestamp(),
        why: why.to_owned(),
        before,
    }
}
