//! Enrollment codes, devices, their tokens and their actor ids.

use doorstep_protocol::{DeviceId, TenantId};
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

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
    pub label: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen_at: Option<i64>,
}

/// A one-time code, as listed (never the code itself).
#[derive(Clone, Debug, Serialize)]
pub struct EnrollmentCode {
    #[serde(serialize_with = "serialize_display")]
    pub branch_id: TenantId,
    pub label: String,
    pub expires_at: i64,
    #[serde(serialize_with = "serialize_opt_display")]
    pub device_id: Option<DeviceId>,
}

/// Why a code could not be exchanged for a token.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Unknown, used or expired: the three look the same to the caller, so
    /// codes cannot be probed.
    #[error("the enrollment code is not valid")]
    InvalidCode,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for EnrollError {
    fn from(e: sqlx::Error) -> Self {
        EnrollError::Store(e.into())
    }
}

const DEVICE_COLUMNS: &str =
    "d.id, d.branch_id, d.label, d.created_at, d.revoked_at, d.last_seen_at, t.path";

fn device_from_row(row: &SqliteRow) -> Result<Device, StoreError> {
    Ok(Device {
        id: parse_column(&row.try_get::<String, _>("id")?, "device id")?,
        branch_id: parse_column(&row.try_get::<String, _>("branch_id")?, "tenant id")?,
        branch_path: parse_column(&row.try_get::<String, _>("path")?, "tenant path")?,
        label: row.try_get("label")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
    })
}

impl Store {
    pub async fn create_enrollment_code(
        &self,
        branch: TenantId,
        label: &str,
        created_by: &str,
        code_hash: &[u8],
        expires_at: i64,
    ) -> Result<EnrollmentCode, StoreError> {
        sqlx::query(
            "insert into enrollment_codes (code_hash, branch_id, label, created_by, created_at, expires_at)
             values (?, ?, ?, ?, ?, ?)",
        )
        .bind(code_hash)
        .bind(branch.to_string())
        .bind(label)
        .bind(created_by)
        .bind(now_ms())
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(EnrollmentCode {
            branch_id: branch,
            label: label.to_owned(),
            expires_at,
            device_id: None,
        })
    }

    /// Exchanges a code for a new device and its token, once.
    pub async fn enroll(&self, code_hash: &[u8], token_hash: &[u8]) -> Result<Device, EnrollError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        // Claim the code first: the `used_at is null` guard makes a second
        // concurrent exchange of the same code update nothing.
        let device_id = DeviceId::new_v7();
        let claimed = sqlx::query(
            "update enrollment_codes set used_at = ?, device_id = ?
             where code_hash = ? and used_at is null and expires_at > ?
             returning branch_id, label",
        )
        .bind(now)
        .bind(device_id.to_string())
        .bind(code_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(claimed) = claimed else {
            return Err(EnrollError::InvalidCode);
        };
        let branch: String = claimed.try_get("branch_id")?;
        let label: String = claimed.try_get("label")?;
        sqlx::query("insert into devices (id, branch_id, label, created_at) values (?, ?, ?, ?)")
            .bind(device_id.to_string())
            .bind(&branch)
            .bind(&label)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "insert into device_tokens (token_hash, device_id, created_at) values (?, ?, ?)",
        )
        .bind(token_hash)
        .bind(device_id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(self
            .device(device_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("enrolled device vanished".into()))?)
    }

    /// The live (not revoked) device a token belongs to.
    pub async fn device_for_token(&self, token_hash: &[u8]) -> Result<Option<Device>, StoreError> {
        sqlx::query(&format!(
            "select {DEVICE_COLUMNS} from device_tokens k
             join devices d on d.id = k.device_id join tenants t on t.id = d.branch_id
             where k.token_hash = ? and d.revoked_at is null"
        ))
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(device_from_row)
        .transpose()
    }

    pub async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        sqlx::query(&format!(
            "select {DEVICE_COLUMNS} from devices d join tenants t on t.id = d.branch_id where d.id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(device_from_row)
        .transpose()
    }

    pub async fn devices_within(&self, scope: &TenantPath) -> Result<Vec<Device>, StoreError> {
        sqlx::query(&format!(
            "select {DEVICE_COLUMNS} from devices d join tenants t on t.id = d.branch_id
             where t.path = ? or t.path like ? order by t.path, d.created_at"
        ))
        .bind(scope.as_str())
        .bind(scope.descendants_pattern())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(device_from_row)
        .collect()
    }

    /// Revokes a device and deletes its tokens. True if it was live.
    pub async fn revoke_device(&self, id: DeviceId) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked =
            sqlx::query("update devices set revoked_at = ? where id = ? and revoked_at is null")
                .bind(now_ms())
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
        sqlx::query("delete from device_tokens where device_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Devices revoked at or after `since` (ms), for processes that did not
    /// revoke them themselves.
    pub async fn revoked_since(&self, since: i64) -> Result<Vec<(DeviceId, i64)>, StoreError> {
        let rows = sqlx::query("select id, revoked_at from devices where revoked_at >= ?")
            .bind(since)
            .fetch_all(self.pool())
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
            "select count(*) from devices where id = ? and revoked_at is null",
        )
        .bind(id.to_string())
        .fetch_one(self.pool())
        .await?
            > 0)
    }

    pub async fn touch_device(&self, id: DeviceId) -> Result<(), StoreError> {
        sqlx::query("update devices set last_seen_at = ? where id = ?")
            .bind(now_ms())
            .bind(id.to_string())
            .execute(self.pool())
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
        sqlx::query(
            "insert into device_actors (actor_id, device_id, registered_at) values (?, ?, ?)
             on conflict (actor_id) do nothing",
        )
        .bind(actor_hex)
        .bind(device.to_string())
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        match self.actor_owner(actor_hex).await? {
            Some(owner) if owner == device => Ok(()),
            _ => Err(StoreError::Conflict(format!("actor {actor_hex}"))),
        }
    }

    pub async fn actor_owner(&self, actor_hex: &str) -> Result<Option<DeviceId>, StoreError> {
        sqlx::query_scalar::<_, String>("select device_id from device_actors where actor_id = ?")
            .bind(actor_hex)
            .fetch_optional(self.pool())
            .await?
            .map(|d| parse_column(&d, "device id"))
            .transpose()
    }
}
