//! What a field app lists. Reads only local documents, so everything works
//! offline.

use doorstep_protocol::schema::log::{MonthlyLog, Visit};
use doorstep_protocol::schema::roster::{
    HardshipEntry, HardshipStatus, Member, MemberKind, Roster,
};
use doorstep_protocol::schema::{DocumentKind, InvalidRecord, RecordId};
use doorstep_protocol::{Date, DocumentId, Fen, Month};

use crate::client::Client;
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
}

impl Client {
    async fn roster(&self, replicas: &mut Replicas) -> Result<Roster, ClientError> {
        let id = DocumentId::roster(self.identity()?.branch);
        Ok(Roster::load(
            replicas.get(id, DocumentKind::Roster).await?.doc(),
        ))
    }

    /// Every month's log on this device.
    async fn logs(&self, replicas: &mut Replicas) -> Result<Vec<MonthlyLog>, ClientError> {
        let mut logs = Vec::new();
        for id in replicas.all().await? {
            if let Some(replica) = replicas.replica(id)
                && matches!(replica.kind, DocumentKind::MonthlyLog(_))
            {
                logs.push(MonthlyLog::load(replica.doc()));
            }
        }
        Ok(logs)
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
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut roster = self.roster(replicas).await?;
        let member = roster.members.remove(&id).ok_or(ClientError::NotFound {
            what: "member",
            id: id.to_string(),
        })?;
        let mut visits: Vec<(RecordId, Visit)> = self
            .logs(replicas)
            .await?
            .into_iter()
            .flat_map(|log| log.visits.into_iter())
            .filter(|(_, v)| v.member_id == id)
            .collect();
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
        })
    }

    /// Visits whose follow-up is not done and is due on or before `on`.
    pub async fn follow_ups_due(&self, on: Date) -> Result<Vec<(RecordId, Visit)>, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut due: Vec<(RecordId, Visit)> = self
            .logs(replicas)
            .await?
            .into_iter()
            .flat_map(|log| log.visits.into_iter())
            .filter(|(_, v)| v.follow_up.as_ref().is_some_and(|f| !f.done && f.due <= on))
            .collect();
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
        crate::editing::check_month(month)?;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let id = DocumentId::monthly_log(self.identity()?.branch, month);
        replicas.get(id, DocumentKind::MonthlyLog(month)).await?;
        Ok(id)
    }
}
