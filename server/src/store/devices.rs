//! Enrollment codes, devices, their tokens and their actor ids.

use doorstep_protocol::{DeviceId, TenantId};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::{AuditEntry, record};
use super::tenants::{serialize_display, serialize_opt_display};
use super::{Store, StoreError, now_ms, parse_column};
use crate::tenancy::TenantPath;

/// An enrolled device.
#[derive(Clone, Debug, Serialize)]
pub struct Device {
    #[serde(serialize_with = "serialize_display")]
    pub id: DeviceId,
    #[serde(serialize_with = "serialize_display")]
    pub branch_id: TenantId,
    #[serde(skip)]
    pub branch_path: TenantPath,
    /// What the branch calls the device, by convention its volunteer's name
    /// ("Li Na's phone"): shown to the branch's own secretary only
    /// ([`Device::for_viewer`]); upper levels see the id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen_at: Option<i64>,
}

impl Device {
    /// The device as `viewer` may see it: without its label unless they
    /// keep its branch.
    pub fn for_viewer(mut self, viewer: &crate::store::User) -> Self {
        if !crate::authority::sees_device_labels(viewer, self.branch_id) {
            self.label = None;
        }
        self
    }
}

/// Where a one-time code (an enrollment code or an invitation) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeStatus {
    /// Asked for by an upper level: waits for the branch secretary.
    PendingApproval,
    /// Works now.
    Ready,
    Used,
    Denied,
    Expired,
}

impl CodeStatus {
    pub(crate) fn of(
        needs_approval: bool,
        approved_at: Option<i64>,
        denied_at: Option<i64>,
        used_at: Option<i64>,
        expires_at: i64,
        now: i64,
    ) -> CodeStatus {
        if used_at.is_some() {
            CodeStatus::Used
        } else if denied_at.is_some() {
            CodeStatus::Denied
        } else if expires_at <= now {
            CodeStatus::Expired
        } else if needs_approval && approved_at.is_none() {
            CodeStatus::PendingApproval
        } else {
            CodeStatus::Ready
        }
    }
}

/// A one-time code, as listed (never the code itself).
#[derive(Clone, Debug, Serialize)]
pub struct EnrollmentCode {
    /// Names the code (or the request) in approvals and listings.
    #[serde(serialize_with = "serialize_display")]
    pub id: uuid::Uuid,
    #[serde(serialize_with = "serialize_display")]
    pub branch_id: TenantId,
    #[serde(skip)]
    pub branch_path: TenantPath,
    /// The device's label: for the branch's own secretary only
    /// ([`EnrollmentCode::for_viewer`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub status: CodeStatus,
    /// Who approved or denied it, if it needed approval.
    pub decided_by: Option<String>,
    /// When a device first presented it while it waited for approval.
    pub presented_at: Option<i64>,
    #[serde(serialize_with = "serialize_opt_display")]
    pub device_id: Option<DeviceId>,
}

impl EnrollmentCode {
    /// The code as `viewer` may see it: without the device's label unless
    /// they keep its branch.
    pub fn for_viewer(mut self, viewer: &crate::store::User) -> Self {
        if !crate::authority::sees_device_labels(viewer, self.branch_id) {
            self.label = None;
        }
        self
    }
}

/// What [`Store::create_enrollment_code`] stores.
#[derive(Debug)]
pub struct NewEnrollmentCode<'a> {
    pub branch: TenantId,
    pub label: &'a str,
    pub created_by: &'a str,
    pub code_hash: &'a [u8],
    pub expires_at: i64,
    /// Asked for by an upper level: enrolls nothing until the branch approves.
    pub needs_approval: bool,
}

/// What exchanging a code gave.
#[derive(Debug)]
pub enum Enrollment {
    /// A new device; its token was stored.
    Enrolled(Device),
    /// The code waits for the branch secretary's approval: nothing was
    /// issued and the code is not spent.
    PendingApproval(EnrollmentCode),
}

/// Why a code could not be exchanged for a token.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Unknown or denied. Unknown codes all look the same, so codes cannot
    /// be probed.
    #[error("the enrollment code is not valid")]
    InvalidCode,
    /// Already exchanged. Saying so tells only the code's holder what
    /// happened to it (a guess that hits a spent code gains nothing), and
    /// tells them to ask for a new code rather than retype this one.
    #[error("the enrollment code was already used")]
    AlreadyUsed,
    /// Past its expiry, likewise said only to its holder.
    #[error("the enrollment code has expired")]
    Expired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for EnrollError {
    fn from(e: sqlx::Error) -> Self {
        EnrollError::Store(e.into())
    }
}

/// How long after a code was spent the device that spent it may enroll
/// with it again (its answer was lost).
pub const REPEAT_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// The device a spent code enrolled, given again to the device that spent
/// it: its nonce matches the one stored with the code, the code was spent
/// within [`REPEAT_WINDOW_MS`], the device is not revoked, and it never
/// connected (a device that synced received its token; a nonce replayed
/// after that is refused as "code already used").
/// Its tokens are replaced by `token_hash`: the lost response carried the
/// only copy of the old one. `None`: not a retry by that device.
async fn repeat_enrollment(
    tx: &mut crate::store::Tx,
    code: &EnrollmentCode,
    nonce_hash: &[u8],
    token_hash: &[u8],
    now: i64,
) -> Result<Option<DeviceId>, EnrollError> {
    let Some(device) = code.device_id else {
        return Ok(None);
    };
    let (stored, used_at): (Option<Vec<u8>>, Option<i64>) =
        sqlx::query_as("select device_nonce_hash, used_at from enrollment_codes where id = $1")
            .bind(code.id.to_string())
            .fetch_one(&mut **tx)
            .await?;
    // Constant time is not needed: both sides are hashes of 128-bit
    // secrets, and a mismatch says nothing about the stored one.
    if stored.as_deref() != Some(nonce_hash) {
        return Ok(None);
    }
    // A lost answer is retried within minutes; a code and nonce found
    // later (an old backup of the phone) must not take the device's token.
    if used_at.is_none_or(|used| now.saturating_sub(used) > REPEAT_WINDOW_MS) {
        return Ok(None);
    }
    let fresh = 0 < sqlx::query_scalar::<_, i64>(
        "select count(*) from devices
         where id = $1 and revoked_at is null and last_seen_at is null",
    )
    .bind(device.to_string())
    .fetch_one(&mut **tx)
    .await?;
    if !fresh {
        return Ok(None);
    }
    sqlx::query("delete from device_tokens where device_id = $1")
        .bind(device.to_string())
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "insert into device_tokens (token_hash, device_id, created_at) values ($1, $2, $3)",
    )
    .bind(token_hash)
    .bind(device.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let entry = AuditEntry::new(
        format!("device:{device}"),
        "device.enroll",
        device.to_string(),
    )
    .tenant(code.branch_id, &code.branch_path)
    .detail(format!(
        "code {} again, same device nonce (response lost)",
        code.id
    ));
    record(tx, entry).await?;
    Ok(Some(device))
}

/// Actors a device may hold before explicit registration refuses more: an
/// app registers one per install, and a stock client's actors (one per
/// document handle) are bound on first use, under each document's limit.
pub const MAX_REGISTERED_ACTORS_PER_DEVICE: i64 = 1024;

const DEVICE_COLUMNS: &str =
    "d.id, d.branch_id, d.label, d.created_at, d.revoked_at, d.last_seen_at, t.path";

const CODE_COLUMNS: &str = "c.id, c.branch_id, c.label, c.created_by, c.created_at, c.expires_at,
     c.needs_approval, c.approved_at, c.approved_by, c.denied_at, c.denied_by, c.presented_at,
     c.used_at, c.device_id, t.path";

fn code_from_row(row: &AnyRow, now: i64) -> Result<EnrollmentCode, StoreError> {
    let device: Option<String> = row.try_get("device_id")?;
    let approved_by: Option<String> = row.try_get("approved_by")?;
    let denied_by: Option<String> = row.try_get("denied_by")?;
    let expires_at = row.try_get("expires_at")?;
    Ok(EnrollmentCode {
        id: parse_column(&row.try_get::<String, _>("id")?, "code id")?,
        branch_id: parse_column(&row.try_get::<String, _>("branch_id")?, "tenant id")?,
        branch_path: parse_column(&row.try_get::<String, _>("path")?, "tenant path")?,
        label: Some(row.try_get("label")?),
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        expires_at,
        status: CodeStatus::of(
            row.try_get::<i64, _>("needs_approval")? == 1,
            row.try_get("approved_at")?,
            row.try_get("denied_at")?,
            row.try_get("used_at")?,
            expires_at,
            now,
        ),
        decided_by: approved_by.or(denied_by),
        presented_at: row.try_get("presented_at")?,
        device_id: device.map(|d| parse_column(&d, "device id")).transpose()?,
    })
}

fn device_from_row(row: &AnyRow) -> Result<Device, StoreError> {
    Ok(Device {
        id: parse_column(&row.try_get::<String, _>("id")?, "device id")?,
        branch_id: parse_column(&row.try_get::<String, _>("branch_id")?, "tenant id")?,
        branch_path: parse_column(&row.try_get::<String, _>("path")?, "tenant path")?,
        label: Some(row.try_get("label")?),
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
    })
}

impl Store {
    /// Stores a new code and its audit entry in one transaction. A code
    /// that `needs_approval` enrolls nothing until the branch approves it.
    pub async fn create_enrollment_code(
        &self,
        code: NewEnrollmentCode<'_>,
        audit: AuditEntry,
    ) -> Result<EnrollmentCode, StoreError> {
        let NewEnrollmentCode {
            branch,
            label,
            created_by,
            code_hash,
            expires_at,
            needs_approval,
        } = code;
        let id = uuid::Uuid::now_v7();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "insert into enrollment_codes (id, code_hash, branch_id, label, created_by, created_at, expires_at, needs_approval)
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.to_string())
        .bind(code_hash)
        .bind(branch.to_string())
        .bind(label)
        .bind(created_by)
        .bind(now_ms())
        .bind(expires_at)
        .bind(i64::from(needs_approval))
        .execute(&mut *tx)
        .await?;
        // The label stays out of the log: the district's auditors read it,
        // and a label is by convention a volunteer's name.
        record(&mut tx, audit.detail(format!("code {id}"))).await?;
        tx.commit().await?;
        self.enrollment_code(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a new enrollment code vanished".into()))
    }

    pub async fn enrollment_code(
        &self,
        id: uuid::Uuid,
    ) -> Result<Option<EnrollmentCode>, StoreError> {
        sqlx::query(&format!(
            "select {CODE_COLUMNS} from enrollment_codes c join tenants t on t.id = c.branch_id where c.id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.every_branch())
        .await?
        .map(|r| code_from_row(&r, now_ms()))
        .transpose()
    }

    /// Codes of the branches within `scope`, newest first; with
    /// `pending_only`, only those waiting for approval.
    pub async fn enrollment_codes_within(
        &self,
        scope: &TenantPath,
        pending_only: bool,
    ) -> Result<Vec<EnrollmentCode>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_read_under(scope).await?;
        let rows = sqlx::query(&format!(
            "select {CODE_COLUMNS} from enrollment_codes c join tenants t on t.id = c.branch_id
             where (t.path = $1 or t.path like $2)
               and ($3 = 0 or (c.needs_approval = 1 and c.approved_at is null and c.denied_at is null
                              and c.used_at is null and c.expires_at > $4))
             order by c.created_at desc limit 1000"
        ))
        .bind(scope.as_str())
        .bind(scope.descendants_pattern())
        .bind(i64::from(pending_only))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        rows.iter().map(|r| code_from_row(r, now)).collect()
    }

    /// Approves or denies a code waiting for approval, with its audit entry.
    /// `None` if it is not waiting (never asked, decided, used or expired).
    pub async fn decide_enrollment_code(
        &self,
        id: uuid::Uuid,
        approve: bool,
        by: &str,
        new_code_hash: Option<&[u8]>,
        audit: AuditEntry,
    ) -> Result<Option<EnrollmentCode>, StoreError> {
        let now = now_ms();
        // Approval replaces the code: the one made with the request was
        // never shown to anyone (or, for a request made before codes went
        // to approvers, was shown to the requester), and the fresh one goes
        // to the approver only.
        let statement = match new_code_hash {
            Some(_) if approve => {
                "update enrollment_codes set approved_at = $2, approved_by = $3, code_hash = $4"
            }
            _ if approve => "update enrollment_codes set approved_at = $2, approved_by = $3",
            _ => "update enrollment_codes set denied_at = $2, denied_by = $3",
        };
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "{statement} where id = $1 and needs_approval = 1 and approved_at is null
             and denied_at is null and used_at is null and expires_at > $2"
        );
        // $1 and $2 serve both pieces; the optional hash binds last.
        let query = sqlx::query(&sql).bind(id.to_string()).bind(now).bind(by);
        let decided = match new_code_hash {
            Some(hash) if approve => query.bind(hash),
            _ => query,
        }
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !decided {
            return Ok(None);
        }
        record(&mut tx, audit).await?;
        tx.commit().await?;
        self.enrollment_code(id).await
    }

    /// Exchanges a code for a new device and its token, once, with the
    /// audit entry in the same transaction. A code waiting for approval
    /// issues nothing and stays unspent; the first time a device presents
    /// it is recorded (later polls are not, so a waiting phone does not
    /// fill the log). Presenting a spent, denied or expired code is
    /// recorded as refused once per code and interval (`refusals`): anyone
    /// holding an old code could otherwise fill the append-only log, each
    /// row a write that contends with acknowledgements.
    ///
    /// `nonce_hash` is the SHA-256 of a random nonce the device made and
    /// kept before its first attempt. It is stored with the spent code, and
    /// the same code presented with the same nonce again is the same device
    /// retrying after the response was lost: it gets its enrollment again
    /// with `token_hash` as its token (see [`Store::repeat_enrollment`]).
    pub async fn enroll(
        &self,
        code_hash: &[u8],
        nonce_hash: Option<&[u8]>,
        token_hash: &[u8],
        refusals: &crate::budget::RefusalLog,
    ) -> Result<Enrollment, EnrollError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        // The write lock is held from here: nobody can decide, spend or
        // enroll with this code between the read and the writes below.
        let row = sqlx::query(&format!(
            "select {CODE_COLUMNS} from enrollment_codes c join tenants t on t.id = c.branch_id
             where c.code_hash = $1"
        ))
        .bind(code_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(code) = row.map(|r| code_from_row(&r, now)).transpose()? else {
            return Err(EnrollError::InvalidCode);
        };
        let entry = |outcome_detail: &str| {
            AuditEntry::new("anonymous", "device.enroll", code.id.to_string())
                .tenant(code.branch_id, &code.branch_path)
                .detail(outcome_detail.to_owned())
        };
        match code.status {
            CodeStatus::Ready => {}
            CodeStatus::PendingApproval => {
                if code.presented_at.is_none() {
                    sqlx::query("update enrollment_codes set presented_at = $1 where id = $2")
                        .bind(now)
                        .bind(code.id.to_string())
                        .execute(&mut *tx)
                        .await?;
                    record(&mut tx, entry("pending the branch's approval").refused()).await?;
                    tx.commit().await?;
                }
                return Ok(Enrollment::PendingApproval(code));
            }
            CodeStatus::Used | CodeStatus::Denied | CodeStatus::Expired => {
                if code.status == CodeStatus::Used
                    && let Some(nonce_hash) = nonce_hash
                    && let Some(device) =
                        repeat_enrollment(&mut tx, &code, nonce_hash, token_hash, now).await?
                {
                    tx.commit().await?;
                    return Ok(Enrollment::Enrolled(
                        self.device(device).await?.ok_or_else(|| {
                            StoreError::Corrupt("a re-enrolled device vanished".into())
                        })?,
                    ));
                }
                let why = match code.status {
                    CodeStatus::Used => "code already used",
                    CodeStatus::Denied => "request denied",
                    _ => "code expired",
                };
                let verdict = refusals.verdict("device.enroll", &code.id.to_string(), now);
                if let Some(detail) = verdict.detail(why) {
                    record(&mut tx, entry(&detail).refused()).await?;
                    tx.commit().await?;
                }
                return Err(match code.status {
                    CodeStatus::Used => EnrollError::AlreadyUsed,
                    CodeStatus::Expired => EnrollError::Expired,
                    _ => EnrollError::InvalidCode,
                });
            }
        }
        let device_id = DeviceId::new_v7();
        // The `used_at is null` guard keeps a code single-use even if the
        // status read above were ever taken outside the write lock.
        let claimed = sqlx::query(
            "update enrollment_codes set used_at = $1, device_id = $2, device_nonce_hash = $3
             where id = $4 and used_at is null",
        )
        .bind(now)
        .bind(device_id.to_string())
        .bind(nonce_hash)
        .bind(code.id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !claimed {
            return Err(EnrollError::AlreadyUsed);
        }
        sqlx::query(
            "insert into devices (id, branch_id, label, created_at) values ($1, $2, $3, $4)",
        )
        .bind(device_id.to_string())
        .bind(code.branch_id.to_string())
        .bind(code.label.as_deref().unwrap_or_default())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into device_tokens (token_hash, device_id, created_at) values ($1, $2, $3)",
        )
        .bind(token_hash)
        .bind(device_id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut enrolled = entry(&format!("code {}", code.id));
        enrolled.actor = format!("device:{device_id}");
        enrolled.subject = device_id.to_string();
        record(&mut tx, enrolled).await?;
        tx.commit().await?;
        Ok(Enrollment::Enrolled(
            self.device(device_id)
                .await?
                .ok_or_else(|| StoreError::Corrupt("enrolled device vanished".into()))?,
        ))
    }

    /// The live (not revoked) device a token belongs to.
    pub async fn device_for_token(&self, token_hash: &[u8]) -> Result<Option<Device>, StoreError> {
        sqlx::query(&format!(
            "select {DEVICE_COLUMNS} from device_tokens k
             join devices d on d.id = k.device_id join tenants t on t.id = d.branch_id
             where k.token_hash = $1 and d.revoked_at is null"
        ))
        .bind(token_hash)
        .fetch_optional(self.every_branch())
        .await?
        .as_ref()
        .map(device_from_row)
        .transpose()
    }

    /// Whether a token belongs to a device that was revoked. Only the token's
    /// holder can ask, so saying so leaks nothing; it lets the phone tell an
    /// explicit revocation (stop, offer a wipe) from a server that does not
    /// know it (restored from a backup, a wrong URL), where its unsynced
    /// edits must not be written off.
    pub async fn token_was_revoked(&self, token_hash: &[u8]) -> Result<bool, StoreError> {
        let revoked: Option<i64> = sqlx::query_scalar(
            "select 1 from device_tokens k join devices d on d.id = k.device_id
             where k.token_hash = $1 and d.revoked_at is not null",
        )
        .bind(token_hash)
        .fetch_optional(self.every_branch())
        .await?;
        Ok(revoked.is_some())
    }

    pub async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        sqlx::query(&format!(
            "select {DEVICE_COLUMNS} from devices d join tenants t on t.id = d.branch_id where d.id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.every_branch())
        .await?
        .as_ref()
        .map(device_from_row)
        .transpose()
    }

    pub async fn devices_within(&self, scope: &TenantPath) -> Result<Vec<Device>, StoreError> {
        let mut tx = self.begin_read_under(scope).await?;
        sqlx::query(&format!(
            "select {DEVICE_COLUMNS} from devices d join tenants t on t.id = d.branch_id
             where t.path = $1 or t.path like $2 order by t.path, d.created_at"
        ))
        .bind(scope.as_str())
        .bind(scope.descendants_pattern())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(device_from_row)
        .collect()
    }

    /// Revokes a device, with the audit entry in the same transaction. True
    /// if it was live (nothing is recorded otherwise). Its token hashes
    /// stay: they no longer authenticate (`device_for_token` wants an
    /// unrevoked device), and a phone that was offline at the time still
    /// learns, when it next connects, that it was revoked rather than
    /// forgotten.
    pub async fn revoke_device(&self, id: DeviceId, audit: AuditEntry) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked =
            sqlx::query("update devices set revoked_at = $1 where id = $2 and revoked_at is null")
                .bind(now_ms())
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
        if revoked {
            record(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(revoked)
    }

    /// Devices revoked at or after `since` (ms), for processes that did not
    /// revoke them themselves.
    pub async fn revoked_since(&self, since: i64) -> Result<Vec<(DeviceId, i64)>, StoreError> {
        let rows = sqlx::query("select id, revoked_at from devices where revoked_at >= $1")
            .bind(since)
            .fetch_all(self.every_branch())
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse_column(&r.try_get::<String, _>("id")?, "device id")?,
                    r.try_get("revoked_at")?,
                ))
            })
            .collect()
    }

    /// Whether the device is still live; checked on every sync message.
    pub async fn device_is_live(&self, id: DeviceId) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>(
            "select count(*) from devices where id = $1 and revoked_at is null",
        )
        .bind(id.to_string())
        .fetch_one(self.every_branch())
        .await?
            > 0)
    }

    pub async fn touch_device(&self, id: DeviceId) -> Result<(), StoreError> {
        sqlx::query("update devices set last_seen_at = $1 where id = $2")
            .bind(now_ms())
            .bind(id.to_string())
            .execute(self.every_branch())
            .await?;
        Ok(())
    }

    /// Binds an Automerge actor id to a device. Registering an actor twice
    /// for the same device is fine; an actor of another device is refused.
    pub async fn register_actor(
        &self,
        device: DeviceId,
        actor_hex: &str,
    ) -> Result<(), StoreError> {
        // Each registration is a row kept for good; a device registers one
        // actor per install, so a bound far above that stops a loop of
        // random ids from growing `device_actors` without end. (Actors
        // bound on first use are bounded by the documents' actor limit.)
        let held: i64 =
            sqlx::query_scalar("select count(*) from device_actors where device_id = $1")
                .bind(device.to_string())
                .fetch_one(self.every_branch())
                .await?;
        if held >= MAX_REGISTERED_ACTORS_PER_DEVICE
            && self.actor_owner(actor_hex).await? != Some(device)
        {
            return Err(StoreError::Invalid(format!(
                "this device already holds {held} actors; the limit is {MAX_REGISTERED_ACTORS_PER_DEVICE}"
            )));
        }
        sqlx::query(
            "insert into device_actors (actor_id, device_id, registered_at) values ($1, $2, $3)
             on conflict (actor_id) do nothing",
        )
        .bind(actor_hex)
        .bind(device.to_string())
        .bind(now_ms())
        .execute(self.every_branch())
        .await?;
        match self.actor_owner(actor_hex).await? {
            Some(owner) if owner == device => Ok(()),
            _ => Err(StoreError::Conflict(format!("actor {actor_hex}"))),
        }
    }

    pub async fn actor_owner(&self, actor_hex: &str) -> Result<Option<DeviceId>, StoreError> {
        sqlx::query_scalar::<_, String>("select device_id from device_actors where actor_id = $1")
            .bind(actor_hex)
            .fetch_optional(self.every_branch())
            .await?
            .map(|d| parse_column(&d, "device id"))
            .transpose()
    }
}
