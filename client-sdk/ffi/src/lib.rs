//! UniFFI bindings over `doorstep-client`, for Kotlin, Swift and Python.
//!
//! Thin wrappers only: values cross as strings (ids, dates `YYYY-MM-DD`,
//! months `YYYY-MM`, kinds in snake_case) and integers (money in fen), and
//! are parsed here into the SDK's types; every decision stays in the SDK.
//! Calls are async and run on one tokio runtime owned by this library; the
//! status observer is a foreign trait, and observing returns a handle that
//! cancels it.

use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};

use doorstep_client as sdk;
use sdk::{Client, ClientConfig, ClientError, RecordId};

uniffi::setup_scaffolding!();

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("doorstep-sdk")
        .enable_all()
        .build()
        .expect("the SDK's tokio runtime starts")
});

/// Runs an SDK future on the library's runtime, whatever drives the caller.
async fn run<T: Send + 'static>(
    future: impl std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
) -> Result<T, DoorstepError> {
    RUNTIME
        .spawn(future)
        .await
        .map_err(|e| DoorstepError::Internal(e.to_string()))?
        .map_err(DoorstepError::from)
}

/// The errors an app acts on; the message says the details.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum DoorstepError {
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("this device is not enrolled")]
    NotEnrolled,
    #[error("this device was revoked: {0}")]
    Revoked(String),
    #[error("network: {0}")]
    Network(String),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("local storage: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ClientError> for DoorstepError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Invalid(m) => DoorstepError::Invalid(m),
            ClientError::NotFound { what, id } => DoorstepError::NotFound(format!("{what} {id}")),
            ClientError::NotEnrolled => DoorstepError::NotEnrolled,
            ClientError::Revoked(m) => DoorstepError::Revoked(m),
            ClientError::Network(m) => DoorstepError::Network(m),
            ClientError::Refused(m) => DoorstepError::Refused(m),
            ClientError::Storage(m) => DoorstepError::Storage(m),
            e @ (ClientError::AlreadyOpen(_) | ClientError::WrongKey | ClientError::PendingApproval) => {
                DoorstepError::Storage(e.to_string())
            }
            ClientError::UnknownDevice(m) => DoorstepError::Network(m),
        }
    }
}

fn parse<T: FromStr>(what: &str, text: &str) -> Result<T, DoorstepError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| DoorstepError::Invalid(format!("{what}: {e}")))
}

fn parse_opt<T: FromStr>(what: &str, text: Option<String>) -> Result<Option<T>, DoorstepError>
where
    T::Err: std::fmt::Display,
{
    text.map(|t| parse(what, &t)).transpose()
}

#[derive(uniffi::Record, Debug)]
pub struct MemberInput {
    pub name: String,
    /// Any of `in_post`, `no_post`, `hardship`, `migrant`, `retired`.
    pub kinds: Vec<String>,
    pub birthday: Option<String>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub household: Option<String>,
    pub post: Option<String>,
    pub notes: Option<String>,
    /// Contact details of a migrant member working away from home.
    #[uniffi(default = None)]
    pub migrant: Option<MigrantInput>,
}

/// The mobile-member management card of a migrant member.
#[derive(uniffi::Record, Debug, Clone)]
pub struct MigrantInput {
    pub workplace: Option<String>,
    pub card_no: Option<String>,
    pub contact_phone: Option<String>,
    pub family_contact: Option<String>,
}

impl From<MigrantInput> for sdk::MigrantContact {
    fn from(m: MigrantInput) -> Self {
        sdk::MigrantContact {
            workplace: m.workplace,
            card_no: m.card_no,
            contact_phone: m.contact_phone,
            family_contact: m.family_contact,
        }
    }
}

impl From<sdk::MigrantContact> for MigrantInput {
    fn from(m: sdk::MigrantContact) -> Self {
        MigrantInput {
            workplace: m.workplace,
            card_no: m.card_no,
            contact_phone: m.contact_phone,
            family_contact: m.family_contact,
        }
    }
}

/// Fields to change; `None` leaves a field alone, `""` clears it.
#[derive(uniffi::Record, Debug)]
pub struct MemberUpdateInput {
    pub name: Option<String>,
    /// `YYYY-MM-DD`, or `""` to clear.
    #[uniffi(default = None)]
    pub birthday: Option<String>,
    #[uniffi(default = None)]
    pub migrant: Option<MigrantInput>,
    pub kinds: Option<Vec<String>>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub household: Option<String>,
    pub post: Option<String>,
    pub notes: Option<String>,
}

#[derive(uniffi::Record, Debug)]
pub struct MemberRecord {
    pub id: String,
    pub name: String,
    pub kinds: Vec<String>,
    pub birthday: Option<String>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub household: Option<String>,
    pub post: Option<String>,
    pub notes: Option<String>,
    pub migrant: Option<MigrantInput>,
}

fn member_record(id: RecordId, m: sdk::Member) -> MemberRecord {
    MemberRecord {
        id: id.to_string(),
        name: m.name,
        kinds: m.kinds.iter().map(ToString::to_string).collect(),
        birthday: m.birthday.map(|d| d.to_string()),
        phone: m.phone,
        address: m.address,
        household: m.household,
        post: m.post,
        notes: m.notes,
        migrant: m.migrant.map(MigrantInput::from),
    }
}

#[derive(uniffi::Record, Debug)]
pub struct VisitInput {
    pub date: String,
    pub member_id: String,
    /// `holiday_condolence`, `special_difficulty`, `routine`,
    /// `migrant_phone`, `migrant_letter` or `migrant_home_visit`.
    pub kind: String,
    pub visitors: Vec<String>,
    pub aid_cash_fen: i64,
    pub aid_goods_fen: i64,
    pub goods_description: Option<String>,
    pub notes: Option<String>,
    pub follow_up_due: Option<String>,
    pub follow_up_action: Option<String>,
}

#[derive(uniffi::Record, Debug)]
pub struct VisitRecord {
    pub id: String,
    pub date: String,
    pub member_id: String,
    pub kind: String,
    pub visitors: Vec<String>,
    pub aid_cash_fen: i64,
    pub aid_goods_fen: i64,
    pub goods_description: Option<String>,
    pub notes: Option<String>,
    pub follow_up_due: Option<String>,
    pub follow_up_action: Option<String>,
    pub follow_up_done: bool,
    pub recorded_by: Option<String>,
}

fn visit_record(id: RecordId, v: sdk::Visit) -> VisitRecord {
    VisitRecord {
        id: id.to_string(),
        date: v.date.to_string(),
        member_id: v.member_id.to_string(),
        kind: v.kind.to_string(),
        visitors: v.visitors.into_iter().collect(),
        aid_cash_fen: v.aid_cash.as_i64(),
        aid_goods_fen: v.aid_goods.as_i64(),
        goods_description: v.goods_description,
        notes: v.notes,
        follow_up_due: v.follow_up.as_ref().map(|f| f.due.to_string()),
        follow_up_action: v.follow_up.as_ref().map(|f| f.action.clone()),
        follow_up_done: v.follow_up.as_ref().is_some_and(|f| f.done),
        recorded_by: v.recorded_by,
    }
}

#[derive(uniffi::Record, Debug)]
pub struct MemberHistoryRecord {
    pub member: MemberRecord,
    pub visits: Vec<VisitRecord>,
    pub aid_total_fen: i64,
    /// `opened`, `helped` or `closed`, if the member was ever registered.
    pub hardship_status: Option<String>,
}

#[derive(uniffi::Record, Debug)]
pub struct SyncReportRecord {
    pub documents: u64,
    pub changes_sent: u64,
    pub changes_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(uniffi::Enum, Debug, Clone, PartialEq, Eq)]
pub enum SyncState {
    Offline { reason: String },
    Syncing,
    UpToDate { at_unix_secs: i64 },
    Error { reason: String },
    Revoked { reason: String },
}

impl From<sdk::SyncStatus> for SyncState {
    fn from(s: sdk::SyncStatus) -> Self {
        match s {
            sdk::SyncStatus::Offline { reason } => SyncState::Offline { reason },
            sdk::SyncStatus::Syncing => SyncState::Syncing,
            sdk::SyncStatus::UpToDate { at_unix_secs } => SyncState::UpToDate { at_unix_secs },
            sdk::SyncStatus::Error { reason } => SyncState::Error { reason },
            sdk::SyncStatus::Unrecognised { reason } => SyncState::Offline { reason },
            sdk::SyncStatus::Revoked { reason } => SyncState::Revoked { reason },
        }
    }
}

#[derive(uniffi::Record, Debug)]
pub struct ConflictValueRecord {
    pub value: String,
    pub actor: String,
    pub mine: bool,
    pub at_unix_secs: i64,
}

#[derive(uniffi::Record, Debug)]
pub struct ConflictRecord {
    pub document: String,
    pub collection: String,
    pub record: String,
    pub field: String,
    /// The field's keys, outer first; pass the record back unchanged.
    pub path: Vec<String>,
    pub values: Vec<ConflictValueRecord>,
}

/// Receives every change of sync status, on an SDK thread.
#[uniffi::export(foreign)]
pub trait StatusObserver: Send + Sync {
    fn on_status(&self, status: SyncState);
}

/// Keeps an observation alive; `cancel` ends it.
#[derive(uniffi::Object, Debug)]
pub struct Subscription {
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[uniffi::export]
impl Subscription {
    pub fn cancel(&self) {
        if let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

/// A device's Doorstep client.
#[derive(uniffi::Object, Debug)]
pub struct DoorstepClient {
    client: Client,
    background: Mutex<Option<sdk::sync::BackgroundSync>>,
}

#[uniffi::export(async_runtime = "tokio")]
impl DoorstepClient {
    /// Opens the device store in `data_dir` for the server at `server_url`
    /// (`https://host:port`); `extra_ca_pem` adds a CA to the system roots.
    #[uniffi::constructor]
    pub async fn open(
        data_dir: String,
        server_url: String,
        store_key: Vec<u8>,
        extra_ca_pem: Option<Vec<u8>>,
    ) -> Result<Arc<Self>, DoorstepError> {
        let store_key = sdk::StoreKey::from_bytes(&store_key)?;
        let mut config = ClientConfig::new(data_dir, server_url, store_key);
        config.extra_ca_pem = extra_ca_pem;
        let client = run(Client::open(config)).await?;
        Ok(Arc::new(DoorstepClient {
            client,
            background: Mutex::new(None),
        }))
    }

    /// Exchanges a one-time code for this device's credentials; returns the device id.
    pub async fn enroll(&self, code: String) -> Result<String, DoorstepError> {
        let client = self.client.clone();
        Ok(run(async move { client.enroll(&code).await })
            .await?
            .device_id)
    }

    pub fn is_enrolled(&self) -> bool {
        self.client.is_enrolled()
    }

    pub async fn add_member(&self, member: MemberInput) -> Result<String, DoorstepError> {
        let new = sdk::NewMember {
            name: member.name,
            kinds: member
                .kinds
                .iter()
                .map(|k| parse("member kind", k))
                .collect::<Result<_, _>>()?,
            birthday: parse_opt("birthday", member.birthday)?,
            phone: member.phone,
            address: member.address,
            household: member.household,
            post: member.post,
            migrant: member.migrant.map(sdk::MigrantContact::from),
            notes: member.notes,
        };
        let client = self.client.clone();
        Ok(run(async move { client.add_member(new).await })
            .await?
            .to_string())
    }

    pub async fn update_member(
        &self,
        member_id: String,
        update: MemberUpdateInput,
    ) -> Result<(), DoorstepError> {
        let id: RecordId = parse("member id", &member_id)?;
        let kinds = update
            .kinds
            .map(|kinds| {
                kinds
                    .iter()
                    .map(|k| parse("member kind", k))
                    .collect::<Result<_, _>>()
            })
            .transpose()?;
        let birthday = match update.birthday.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(text) => Some(Some(parse("birthday", text)?)),
        };
        let update = sdk::MemberUpdate {
            name: update.name,
            birthday,
            migrant: update.migrant.map(|m| Some(m.into())),
            kinds,
            phone: update.phone,
            address: update.address,
            household: update.household,
            post: update.post,
            notes: update.notes,
        };
        let client = self.client.clone();
        run(async move { client.update_member(id, update).await }).await
    }

    pub async fn record_visit(&self, visit: VisitInput) -> Result<String, DoorstepError> {
        let follow_up = match (visit.follow_up_due, visit.follow_up_action) {
            (Some(due), Some(action)) => Some(sdk::FollowUp {
                due: parse("follow-up date", &due)?,
                action,
                done: false,
            }),
            (None, None) => None,
            _ => {
                return Err(DoorstepError::Invalid(
                    "a follow-up needs both a due date and an action".into(),
                ));
            }
        };
        let new = sdk::NewVisit {
            date: parse("visit date", &visit.date)?,
            member_id: parse("member id", &visit.member_id)?,
            kind: parse("visit kind", &visit.kind)?,
            visitors: visit.visitors,
            aid_cash: sdk::Fen(visit.aid_cash_fen),
            aid_goods: sdk::Fen(visit.aid_goods_fen),
            goods_description: visit.goods_description,
            notes: visit.notes,
            follow_up,
        };
        let client = self.client.clone();
        Ok(run(async move { client.record_visit(new).await })
            .await?
            .to_string())
    }

    pub async fn complete_follow_up(&self, visit_id: String) -> Result<(), DoorstepError> {
        let id: RecordId = parse("visit id", &visit_id)?;
        let client = self.client.clone();
        run(async move { client.complete_follow_up(id).await }).await
    }

    /// Opens a hardship register entry; returns its id.
    pub async fn open_hardship_entry(
        &self,
        member_id: String,
        kind: String,
        opened_on: String,
        needs: Vec<String>,
    ) -> Result<String, DoorstepError> {
        let new = sdk::NewHardshipEntry {
            member_id: parse("member id", &member_id)?,
            kind: parse("hardship kind", &kind)?,
            opened_on: parse("date", &opened_on)?,
            needs,
        };
        let client = self.client.clone();
        Ok(run(async move { client.open_hardship_entry(new).await })
            .await?
            .to_string())
    }

    pub async fn add_need(
        &self,
        entry_id: String,
        description: String,
        on: String,
    ) -> Result<String, DoorstepError> {
        let (id, on): (RecordId, sdk::Date) = (parse("entry id", &entry_id)?, parse("date", &on)?);
        let client = self.client.clone();
        Ok(
            run(async move { client.add_need(id, &description, on).await })
                .await?
                .to_string(),
        )
    }

    /// `status` is `opened`, `helped` or `closed`.
    pub async fn change_hardship_status(
        &self,
        entry_id: String,
        status: String,
        on: String,
        note: Option<String>,
    ) -> Result<(), DoorstepError> {
        let (id, status, on): (RecordId, sdk::HardshipStatus, sdk::Date) = (
            parse("entry id", &entry_id)?,
            parse("status", &status)?,
            parse("date", &on)?,
        );
        let client = self.client.clone();
        run(async move { client.change_hardship_status(id, status, on, note).await })
            .await
            .map(|_| ())
    }

    pub async fn pair_members(
        &self,
        helper_id: String,
        helped_id: String,
        since: String,
        key_contact: bool,
    ) -> Result<String, DoorstepError> {
        let (helper, helped, since): (RecordId, RecordId, sdk::Date) = (
            parse("member id", &helper_id)?,
            parse("member id", &helped_id)?,
            parse("date", &since)?,
        );
        let client = self.client.clone();
        Ok(run(async move {
            client
                .pair_members(helper, helped, since, key_contact)
                .await
        })
        .await?
        .to_string())
    }

    pub async fn create_team(
        &self,
        name: String,
        category: String,
        founded_on: Option<String>,
    ) -> Result<String, DoorstepError> {
        let new = sdk::NewTeam {
            name,
            category,
            founded_on: parse_opt("date", founded_on)?,
        };
        let client = self.client.clone();
        Ok(run(async move { client.create_team(new).await })
            .await?
            .to_string())
    }

    /// Adds a member (by id) or a resident who is not a member (by name).
    pub async fn add_to_team(
        &self,
        team_id: String,
        member_id: Option<String>,
        resident_name: Option<String>,
        backbone: bool,
    ) -> Result<String, DoorstepError> {
        let team: RecordId = parse("team id", &team_id)?;
        let person = match (member_id, resident_name) {
            (Some(id), None) => sdk::TeamPerson::Member {
                member_id: parse("member id", &id)?,
                backbone,
            },
            (None, Some(name)) => sdk::TeamPerson::Resident { name, backbone },
            _ => {
                return Err(DoorstepError::Invalid(
                    "give a member id or a resident's name".into(),
                ));
            }
        };
        let client = self.client.clone();
        Ok(run(async move { client.add_to_team(team, person).await })
            .await?
            .to_string())
    }

    /// `minutes` pairs a participant (member id or name) with minutes volunteered.
    pub async fn log_activity(
        &self,
        date: String,
        team_id: Option<String>,
        title: String,
        participants: Vec<String>,
        minutes: Vec<i64>,
    ) -> Result<String, DoorstepError> {
        if participants.len() != minutes.len() {
            return Err(DoorstepError::Invalid(
                "one number of minutes per participant".into(),
            ));
        }
        let new = sdk::NewActivity {
            date: parse("date", &date)?,
            team_id: parse_opt("team id", team_id)?,
            title,
            minutes: participants.into_iter().zip(minutes).collect(),
        };
        let client = self.client.clone();
        Ok(run(async move { client.log_activity(new).await })
            .await?
            .to_string())
    }

    /// `level` is `district`, `sub_district` or `community`.
    pub async fn record_training(
        &self,
        date: String,
        level: String,
        topic: String,
        attendance: i64,
        attendees: Vec<String>,
    ) -> Result<String, DoorstepError> {
        let new = sdk::NewTraining {
            date: parse("date", &date)?,
            level: parse("training level", &level)?,
            topic,
            attendance,
            attendees,
        };
        let client = self.client.clone();
        Ok(run(async move { client.record_training(new).await })
            .await?
            .to_string())
    }

    pub async fn record_placement(
        &self,
        date: String,
        member_id: String,
        employer: String,
        job: Option<String>,
    ) -> Result<String, DoorstepError> {
        let new = sdk::NewPlacement {
            date: parse("date", &date)?,
            member_id: parse("member id", &member_id)?,
            employer,
            job,
        };
        let client = self.client.clone();
        Ok(run(async move { client.record_placement(new).await })
            .await?
            .to_string())
    }

    /// `direction` is `donation` or `payment`.
    pub async fn record_fund_entry(
        &self,
        date: String,
        direction: String,
        amount_fen: i64,
        member_id: Option<String>,
        purpose: Option<String>,
        note: Option<String>,
    ) -> Result<String, DoorstepError> {
        let new = sdk::NewFundEntry {
            date: parse("date", &date)?,
            direction: parse("direction", &direction)?,
            amount: sdk::Fen(amount_fen),
            member_id: parse_opt("member id", member_id)?,
            purpose,
            note,
        };
        let client = self.client.clone();
        Ok(run(async move { client.record_fund_entry(new).await })
            .await?
            .to_string())
    }

    pub async fn members(
        &self,
        in_hardship: bool,
        migrant: bool,
        no_post: bool,
        name_contains: Option<String>,
    ) -> Result<Vec<MemberRecord>, DoorstepError> {
        let filter = sdk::MemberFilter {
            in_hardship,
            migrant,
            no_post,
            name_contains,
        };
        let client = self.client.clone();
        let members = run(async move { client.members(&filter).await }).await?;
        Ok(members
            .into_iter()
            .map(|(id, m)| member_record(id, m))
            .collect())
    }

    pub async fn member_history(
        &self,
        member_id: String,
    ) -> Result<MemberHistoryRecord, DoorstepError> {
        let id: RecordId = parse("member id", &member_id)?;
        let client = self.client.clone();
        let history = run(async move { client.member_history(id).await }).await?;
        Ok(MemberHistoryRecord {
            member: member_record(id, history.member),
            visits: history
                .visits
                .into_iter()
                .map(|(vid, v)| visit_record(vid, v))
                .collect(),
            aid_total_fen: history.aid_total.as_i64(),
            hardship_status: history.hardship_status.map(|s| s.to_string()),
        })
    }

    /// Visits of a month (`YYYY-MM`); `only_mine` keeps this device's.
    pub async fn visits(
        &self,
        month: String,
        only_mine: bool,
    ) -> Result<Vec<VisitRecord>, DoorstepError> {
        let month: sdk::Month = parse("month", &month)?;
        let client = self.client.clone();
        let visits = run(async move { client.visits(month, only_mine).await }).await?;
        Ok(visits
            .into_iter()
            .map(|(id, v)| visit_record(id, v))
            .collect())
    }

    pub async fn follow_ups_due(&self, on: String) -> Result<Vec<VisitRecord>, DoorstepError> {
        let on: sdk::Date = parse("date", &on)?;
        let client = self.client.clone();
        let due = run(async move { client.follow_ups_due(on).await }).await?;
        Ok(due.into_iter().map(|(id, v)| visit_record(id, v)).collect())
    }

    pub async fn conflicts(&self) -> Result<Vec<ConflictRecord>, DoorstepError> {
        let client = self.client.clone();
        let conflicts = run(async move { client.conflicts().await }).await?;
        Ok(conflicts
            .into_iter()
            .map(|c| ConflictRecord {
                document: c.document.to_string(),
                collection: c.collection,
                record: c.record,
                field: c.field,
                path: c.path,
                values: c
                    .values
                    .into_iter()
                    .map(|v| ConflictValueRecord {
                        value: v.value,
                        actor: v.actor,
                        mine: v.mine,
                        at_unix_secs: v.at_unix_secs,
                    })
                    .collect(),
            })
            .collect())
    }

    /// Settles a conflict: keep the value at `chosen_index`, or enter `value`.
    pub async fn resolve_conflict(
        &self,
        conflict: ConflictRecord,
        chosen_index: Option<u32>,
        value: Option<String>,
    ) -> Result<(), DoorstepError> {
        let resolution = match (chosen_index, value) {
            (Some(i), None) => sdk::Resolution::Choose(i as usize),
            (None, Some(v)) => sdk::Resolution::Enter(v),
            _ => {
                return Err(DoorstepError::Invalid(
                    "choose an index or enter a value".into(),
                ));
            }
        };
        let conflict = sdk::Conflict {
            document: parse("document id", &conflict.document)?,
            collection: conflict.collection,
            record: conflict.record,
            field: conflict.field,
            path: conflict.path,
            values: Vec::new(),
        };
        let client = self.client.clone();
        run(async move { client.resolve_conflict(&conflict, resolution).await }).await
    }

    pub async fn sync_now(&self) -> Result<SyncReportRecord, DoorstepError> {
        let client = self.client.clone();
        let report = run(async move { client.sync_now().await }).await?;
        Ok(SyncReportRecord {
            documents: report.documents as u64,
            changes_sent: report.changes_sent as u64,
            changes_received: report.changes_received as u64,
            bytes_sent: report.bytes_sent as u64,
            bytes_received: report.bytes_received as u64,
        })
    }

    /// Local changes the server has not acknowledged yet.
    pub async fn pending_changes(&self) -> Result<u64, DoorstepError> {
        let client = self.client.clone();
        Ok(run(async move { client.pending_changes().await }).await? as u64)
    }

    pub fn status(&self) -> SyncState {
        self.client.status().into()
    }

    /// Calls `observer` with the current status and every change after it.
    pub fn observe_status(&self, observer: Arc<dyn StatusObserver>) -> Arc<Subscription> {
        let mut statuses = self.client.subscribe_status();
        let task = RUNTIME.spawn(async move {
            loop {
                let status = statuses.borrow_and_update().clone();
                observer.on_status(status.into());
                if statuses.changed().await.is_err() {
                    return;
                }
            }
        });
        Arc::new(Subscription {
            task: Mutex::new(Some(task)),
        })
    }

    /// Syncs by itself from now on: after edits, on an interval, and with
    /// backoff after failures.
    pub fn start_background_sync(&self) {
        let _runtime = RUNTIME.enter();
        let handle = self.client.start_background_sync();
        if let Ok(mut slot) = self.background.lock() {
            *slot = Some(handle);
        }
    }

    pub async fn stop_background_sync(&self) {
        let handle = self.background.lock().ok().and_then(|mut slot| slot.take());
        if let Some(handle) = handle {
            let _ = RUNTIME.spawn(handle.stop()).await;
        }
    }

    /// Deletes this device's data; for a revoked or handed-over phone.
    pub async fn wipe(&self) -> Result<(), DoorstepError> {
        self.stop_background_sync().await;
        let client = self.client.clone();
        run(async move { client.wipe().await }).await
    }
}
