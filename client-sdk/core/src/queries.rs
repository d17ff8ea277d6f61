//! What a field app lists. Reads only local documents, so everything works
//! offline.

use automerge::{Automerge, ObjType, ReadDoc, Value};
use doorstep_protocol::schema::log::{Activity, FundEntry, MonthlyLog, Placement, Training, Visit};
use doorstep_protocol::schema::roster::{
    HardshipEntry, HardshipStatus, Member, MemberKind, Pairing, Roster, Team,
};
use doorstep_protocol::schema::{
    Checked, DocumentKind, InvalidRecord, Record, RecordId, check_record, load_collection_of_month,
    read_record,
};
use doorstep_protocol::{Date, DocumentId, Fen, Month};

use crate::client::Client;
use crate::corrections::Correction;
use crate::error::ClientError;
use crate::replicas::Replicas;

/// Which members to list; every set condition must hold.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct MemberFilter {
    /// Members of the hardship kind, or with an entry in the register not closed.
    pub in_hardship: bool,
    pub migrant: bool,
    pub no_post: bool,
    pub name_contains: Option<String>,
}

/// One member's record and what the branch did for them.
#[derive(Debug, Clone)]
pub struct MemberHistory {
    pub member: Member,
    /// Visits, oldest first.
    pub visits: Vec<(RecordId, Visit)>,
    /// Cash and goods handed over in all those visits.
    pub aid_total: Fen,
    pub hardship_entries: Vec<(RecordId, HardshipEntry)>,
    /// The status of the most recent hardship entry, if any.
    pub hardship_status: Option<HardshipStatus>,
    /// Months the server holds that this device does not (yet), newest
    /// first: their visits are not in `visits`. Empty: complete as of the
    /// server's last list. [`Client::fetch_history`] brings them over.
    pub missing_months: Vec<Month>,
}

/// Which log records to read: one month's, or every month's on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Months {
    One(Month),
    All,
}

/// The days whose visits to list: "today's visits" is `Day(today)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum VisitDays {
    Day(Date),
    Month(Month),
}

/// A visit, activity, training, placement or fund entry: the records of a
/// monthly log, which can be corrected and deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum LogRecordKind {
    Visit,
    Activity,
    Training,
    Placement,
    FundEntry,
}

impl LogRecordKind {
    /// The log's root map holding records of this kind.
    pub fn collection(&self) -> &'static str {
        match self {
            LogRecordKind::Visit => Visit::COLLECTION,
            LogRecordKind::Activity => Activity::COLLECTION,
            LogRecordKind::Training => Training::COLLECTION,
            LogRecordKind::Placement => Placement::COLLECTION,
            LogRecordKind::FundEntry => FundEntry::COLLECTION,
        }
    }

    /// For error messages, in the domain's words.
    pub(crate) fn what(&self) -> &'static str {
        match self {
            LogRecordKind::Visit => "visit",
            LogRecordKind::Activity => "activity",
            LogRecordKind::Training => "training",
            LogRecordKind::Placement => "placement",
            LogRecordKind::FundEntry => "fund entry",
        }
    }
}

impl Client {
    async fn roster(&self, replicas: &mut Replicas) -> Result<Roster, ClientError> {
        let id = DocumentId::roster(self.identity()?.branch);
        Ok(Roster::load(
            replicas.get(id, DocumentKind::Roster).await?.doc(),
        ))
    }

    /// Calls `f` with every month's log on this device, one at a time.
    ///
    /// The one place that walks all logs: how many months stay in memory is
    /// the replicas' business, so no other code may list documents and then
    /// look each one up.
    pub(crate) async fn for_each_log(
        &self,
        replicas: &mut Replicas,
        mut f: impl FnMut(Month, &Automerge),
    ) -> Result<(), ClientError> {
        for (id, kind) in replicas.all().await? {
            if let DocumentKind::MonthlyLog(month) = kind {
                // One month that does not load must not hide the others.
                match replicas.get(id, kind).await {
                    Ok(replica) => f(month, replica.doc()),
                    Err(e) => {
                        tracing::warn!(document = %id, error = %e, "skipping a month that does not load")
                    }
                }
            }
        }
        Ok(())
    }

    /// Calls `f` with the logs `months` names: one month's (if it is on
    /// this device) without touching the others, or all of them.
    pub(crate) async fn for_logs(
        &self,
        replicas: &mut Replicas,
        months: Months,
        mut f: impl FnMut(Month, &Automerge),
    ) -> Result<(), ClientError> {
        match months {
            Months::All => self.for_each_log(replicas, f).await,
            Months::One(month) => {
                let id = DocumentId::monthly_log(self.identity()?.branch, month);
                if let Some(replica) = replicas.existing(id).await? {
                    f(month, replica.doc());
                }
                Ok(())
            }
        }
    }

    /// Every month's log on this device, typed.
    async fn logs(&self, replicas: &mut Replicas) -> Result<Vec<MonthlyLog>, ClientError> {
        let mut logs = Vec::new();
        self.for_each_log(replicas, |_, doc| logs.push(MonthlyLog::load(doc)))
            .await?;
        Ok(logs)
    }

    /// The valid records of one log collection in `months`, oldest first.
    async fn log_records<R: Record + Clone>(
        &self,
        months: Months,
    ) -> Result<Vec<(RecordId, R)>, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut records: Vec<(Date, RecordId, R)> = Vec::new();
        self.for_logs(replicas, months, |month, doc| {
            let loaded = load_collection_of_month::<R, _>(doc, Some(month));
            records.extend(loaded.records.into_iter().map(|(id, r)| {
                // Every log record is dated; the month is a fallback only.
                let date = r.dated().unwrap_or_else(|| month.first_day());
                (date, id, r)
            }));
        })
        .await?;
        records.sort_by_key(|(date, id, _)| (*date, *id));
        Ok(records.into_iter().map(|(_, id, r)| (id, r)).collect())
    }

    /// The logs the record index says hold `collection`/`key`, loaded one
    /// by one: each with its month (logs that do not load are skipped).
    async fn logs_holding(
        &self,
        replicas: &mut Replicas,
        collection: &str,
        key: &str,
        mut f: impl FnMut(Month, &Automerge),
    ) -> Result<(), ClientError> {
        replicas.ensure_indexed().await?;
        for id in self.inner.store.logs_holding(collection, key).await? {
            match replicas.existing(id).await {
                Ok(Some(replica)) => {
                    if let DocumentKind::MonthlyLog(month) = replica.kind {
                        f(month, replica.doc());
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(document = %id, error = %e, "skipping a month that does not load")
                }
            }
        }
        Ok(())
    }

    /// Finds a log record by id in whichever month holds it (the record
    /// index says which): its month and the record as stored (read, not
    /// validated: a record to correct may be one that fails validation).
    pub(crate) async fn find_log_record<R: Record>(
        &self,
        replicas: &mut Replicas,
        id: RecordId,
    ) -> Result<Option<(Month, R)>, ClientError> {
        let mut found = None;
        let mut failed = None;
        self.logs_holding(replicas, R::COLLECTION, &id.to_string(), |month, doc| {
            if found.is_some() {
                return;
            }
            match read_record::<R, _>(doc, id) {
                Ok(Some(record)) => found = Some((month, record)),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        })
        .await?;
        match (found, failed) {
            (Some(found), _) => Ok(Some(found)),
            (None, Some(e)) => Err(ClientError::Storage(e.to_string())),
            (None, None) => Ok(None),
        }
    }

    /// Finds which month's log holds a record of `kind` at `id`, present
    /// whatever its shape (so a broken record can still be deleted).
    pub(crate) async fn month_of_log_record(
        &self,
        replicas: &mut Replicas,
        kind: LogRecordKind,
        id: RecordId,
    ) -> Result<Option<Month>, ClientError> {
        let key = id.to_string();
        let mut found = None;
        self.logs_holding(replicas, kind.collection(), &key, |month, doc| {
            if found.is_none()
                && let Ok(Some((Value::Object(ObjType::Map), collection))) =
                    doc.get(automerge::ROOT, kind.collection())
                && let Ok(Some(_)) = doc.get(&collection, key.as_str())
            {
                found = Some(month);
            }
        })
        .await?;
        Ok(found)
    }

    /// The visits the record index named (log and key) that `keep` keeps,
    /// each read and checked on its own: a log is read one at a time, with
    /// the replicas lock released in between, so an edit waits for a few
    /// records' read at most, never a walk of months.
    async fn visits_at(
        &self,
        keys: Vec<(DocumentId, String)>,
        keep: impl Fn(&Visit) -> bool,
    ) -> Result<Vec<(RecordId, Visit)>, ClientError> {
        let mut by_log: std::collections::BTreeMap<DocumentId, Vec<String>> = Default::default();
        for (log, key) in keys {
            by_log.entry(log).or_default().push(key);
        }
        let mut visits = Vec::new();
        for (id, keys) in by_log {
            let mut guard = self.replicas().await?;
            let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
            let replica = match replicas.existing(id).await {
                Ok(Some(replica)) => replica,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(document = %id, error = %e, "skipping a month that does not load");
                    continue;
                }
            };
            let DocumentKind::MonthlyLog(month) = replica.kind else {
                continue;
            };
            let doc = replica.doc();
            let Ok(Some((Value::Object(ObjType::Map), map))) =
                doc.get(automerge::ROOT, Visit::COLLECTION)
            else {
                continue;
            };
            for key in keys {
                if let Checked::Valid(id, visit) =
                    check_record::<Visit, _>(doc, &map, &key, Some(month))
                    && keep(&visit)
                {
                    visits.push((id, visit));
                }
            }
        }
        Ok(visits)
    }

    pub async fn visit(&self, id: RecordId) -> Result<Visit, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        self.find_log_record::<Visit>(replicas, id)
            .await?
            .map(|(_, visit)| visit)
            .ok_or(ClientError::NotFound {
                what: "visit",
                id: id.to_string(),
            })
    }

    /// Visits of one day (today's visits) or month, oldest first. A day's
    /// are read through the record index, not the whole month's log.
    pub async fn visits_on(&self, days: VisitDays) -> Result<Vec<(RecordId, Visit)>, ClientError> {
        let date = match days {
            VisitDays::Month(month) => return self.log_records::<Visit>(Months::One(month)).await,
            VisitDays::Day(date) => date,
        };
        let keys = {
            let mut guard = self.replicas().await?;
            let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
            replicas.ensure_indexed().await?;
            self.inner.store.visits_on_day(date).await?
        };
        let mut visits = self.visits_at(keys, |v| v.date == date).await?;
        visits.sort_by_key(|(id, _)| *id);
        Ok(visits)
    }

    pub async fn activities(
        &self,
        months: Months,
    ) -> Result<Vec<(RecordId, Activity)>, ClientError> {
        self.log_records(months).await
    }

    pub async fn trainings(
        &self,
        months: Months,
    ) -> Result<Vec<(RecordId, Training)>, ClientError> {
        self.log_records(months).await
    }

    pub async fn placements(
        &self,
        months: Months,
    ) -> Result<Vec<(RecordId, Placement)>, ClientError> {
        self.log_records(months).await
    }

    pub async fn fund_entries(
        &self,
        months: Months,
    ) -> Result<Vec<(RecordId, FundEntry)>, ClientError> {
        self.log_records(months).await
    }

    /// The corrections and deletions of log records in `months`, oldest
    /// first: who changed what, when and why, and what the record was.
    pub async fn corrections(&self, months: Months) -> Result<Vec<Correction>, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut corrections = Vec::new();
        self.for_logs(replicas, months, |_, doc| {
            corrections.extend(crate::corrections::load(doc));
        })
        .await?;
        corrections.sort_by_key(|c| (c.at_unix_secs, c.id));
        Ok(corrections)
    }

    /// The corrections and deletion (if any) of one log record, oldest first.
    pub async fn corrections_of(&self, record: RecordId) -> Result<Vec<Correction>, ClientError> {
        let mut all = self.corrections(Months::All).await?;
        all.retain(|c| c.record_id == record);
        Ok(all)
    }

    /// Every team with its people, by name.
    pub async fn teams(&self) -> Result<Vec<(RecordId, Team)>, ClientError> {
        let mut teams: Vec<_> = self.roster_now().await?.teams.into_iter().collect();
        teams.sort_by(|(a_id, a), (b_id, b)| (&a.name, a_id).cmp(&(&b.name, b_id)));
        Ok(teams)
    }

    pub async fn team(&self, id: RecordId) -> Result<Team, ClientError> {
        self.roster_now()
            .await?
            .teams
            .remove(&id)
            .ok_or(ClientError::NotFound {
                what: "team",
                id: id.to_string(),
            })
    }

    /// Every mutual-aid pairing, oldest first.
    pub async fn pairings(&self) -> Result<Vec<(RecordId, Pairing)>, ClientError> {
        let mut pairings: Vec<_> = self.roster_now().await?.pairings.into_iter().collect();
        pairings.sort_by_key(|(id, p)| (p.since, *id));
        Ok(pairings)
    }

    /// The hardship register, oldest entry first; `member` keeps one
    /// member's entries.
    pub async fn hardship_entries(
        &self,
        member: Option<RecordId>,
    ) -> Result<Vec<(RecordId, HardshipEntry)>, ClientError> {
        let mut entries: Vec<_> = self
            .roster_now()
            .await?
            .hardship
            .into_iter()
            .filter(|(_, e)| member.is_none_or(|m| e.member_id == m))
            .collect();
        entries.sort_by_key(|(id, e)| (e.opened_on, *id));
        Ok(entries)
    }

    pub async fn hardship_entry(&self, id: RecordId) -> Result<HardshipEntry, ClientError> {
        self.roster_now()
            .await?
            .hardship
            .remove(&id)
            .ok_or(ClientError::NotFound {
                what: "hardship entry",
                id: id.to_string(),
            })
    }

    async fn roster_now(&self) -> Result<Roster, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        self.roster(replicas).await
    }

    pub async fn member(&self, id: RecordId) -> Result<Member, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        self.roster(replicas)
            .await?
            .members
            .remove(&id)
            .ok_or(ClientError::NotFound {
                what: "member",
                id: id.to_string(),
            })
    }

    pub async fn members(
        &self,
        filter: &MemberFilter,
    ) -> Result<Vec<(RecordId, Member)>, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let roster = self.roster(replicas).await?;
        let open_hardship: std::collections::BTreeSet<RecordId> = roster
            .hardship
            .values()
            .filter(|e| e.current_status() != HardshipStatus::Closed)
            .map(|e| e.member_id)
            .collect();
        let needle = filter.name_contains.as_deref().map(str::to_lowercase);
        Ok(roster
            .members
            .into_iter()
            .filter(|(id, m)| {
                (!filter.in_hardship
                    || m.kinds.contains(&MemberKind::Hardship)
                    || open_hardship.contains(id))
                    && (!filter.migrant || m.kinds.contains(&MemberKind::Migrant))
                    && (!filter.no_post || m.kinds.contains(&MemberKind::NoPost))
                    && needle
                        .as_ref()
                        .is_none_or(|n| m.name.to_lowercase().contains(n))
            })
            .collect())
    }

    pub async fn member_history(&self, id: RecordId) -> Result<MemberHistory, ClientError> {
        let (mut roster, keys) = {
            let mut guard = self.replicas().await?;
            let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
            let roster = self.roster(replicas).await?;
            replicas.ensure_indexed().await?;
            (roster, self.inner.store.visits_to(id).await?)
        };
        let member = roster.members.remove(&id).ok_or(ClientError::NotFound {
            what: "member",
            id: id.to_string(),
        })?;
        // Only the visits the record index says are theirs.
        let mut visits = self.visits_at(keys, |v| v.member_id == id).await?;
        visits.sort_by_key(|(vid, v)| (v.date, *vid));
        let aid_total = Fen(visits
            .iter()
            .map(|(_, v)| v.aid_cash.as_i64().saturating_add(v.aid_goods.as_i64()))
            .fold(0i64, i64::saturating_add));
        let mut hardship_entries: Vec<(RecordId, HardshipEntry)> = roster
            .hardship
            .into_iter()
            .filter(|(_, e)| e.member_id == id)
            .collect();
        hardship_entries.sort_by_key(|(eid, e)| (e.opened_on, *eid));
        let hardship_status = hardship_entries.last().map(|(_, e)| e.current_status());
        Ok(MemberHistory {
            member,
            visits,
            aid_total,
            hardship_entries,
            hardship_status,
            missing_months: self.missing_months().await?,
        })
    }

    /// Visits whose follow-up is not done and is due on or before `on`.
    /// Only the visits the record index names are read.
    pub async fn follow_ups_due(&self, on: Date) -> Result<Vec<(RecordId, Visit)>, ClientError> {
        let keys = {
            let mut guard = self.replicas().await?;
            let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
            replicas.ensure_indexed().await?;
            self.inner.store.visits_due(on).await?
        };
        let mut due = self
            .visits_at(keys, |v| {
                v.follow_up.as_ref().is_some_and(|f| !f.done && f.due <= on)
            })
            .await?;
        due.sort_by_key(|(id, v)| (v.follow_up.as_ref().map(|f| f.due), *id));
        Ok(due)
    }

    /// Visits of one month; `only_mine` keeps those recorded on this device.
    pub async fn visits(
        &self,
        month: Month,
        only_mine: bool,
    ) -> Result<Vec<(RecordId, Visit)>, ClientError> {
        let me = self.identity()?.device_id.clone();
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let id = DocumentId::monthly_log(self.identity()?.branch, month);
        let Some(replica) = replicas.existing(id).await? else {
            return Ok(Vec::new());
        };
        let mut visits: Vec<(RecordId, Visit)> = MonthlyLog::load(replica.doc())
            .visits
            .into_iter()
            .filter(|(_, v)| !only_mine || v.recorded_by.as_deref() == Some(me.as_str()))
            .collect();
        visits.sort_by_key(|(vid, v)| (v.date, *vid));
        Ok(visits)
    }

    /// Records on this device that fail validation (e.g. written by another
    /// client), for the branch secretary to fix.
    pub async fn invalid_records(&self) -> Result<Vec<InvalidRecord>, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut invalid = self.roster(replicas).await?.invalid;
        for log in self.logs(replicas).await? {
            invalid.extend(log.invalid);
        }
        Ok(invalid)
    }

    /// The current heads of a document on this device (hex change hashes),
    /// to compare replicas.
    pub async fn heads(&self, document: DocumentId) -> Result<Vec<String>, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let replica = replicas
            .existing(document)
            .await?
            .ok_or(ClientError::NotFound {
                what: "document",
                id: document.to_string(),
            })?;
        Ok(replica
            .session
            .heads()
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    /// Opens (offline, from its genesis) the log of a month so it can be
    /// synced or read; recording into it opens it too.
    pub async fn open_month(&self, month: Month) -> Result<DocumentId, ClientError> {
        crate::editing::check_month(month, self.server_now().await?)?;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let id = DocumentId::monthly_log(self.identity()?.branch, month);
        replicas.get(id, DocumentKind::MonthlyLog(month)).await?;
        Ok(id)
    }
}
