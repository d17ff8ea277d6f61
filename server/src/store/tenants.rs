//! Tenants, users and login sessions.

use doorstep_protocol::schema::{DocumentKind, genesis};
use doorstep_protocol::{DocumentId, TenantId};
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{Store, StoreError, now_ms, parse_column};
use crate::tenancy::{Level, Role, TenantPath};

/// A district, sub-district or branch.
#[derive(Clone, Debug, Serialize)]
pub struct Tenant {
    #[serde(serialize_with = "serialize_display")]
    pub id: TenantId,
    #[serde(serialize_with = "serialize_opt_display")]
    pub parent_id: Option<TenantId>,
    pub level: Level,
    pub name: String,
    #[serde(serialize_with = "serialize_display")]
    pub path: TenantPath,
}

pub(crate) fn serialize_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub(crate) fn serialize_opt_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A person who logs in to the API.
#[derive(Clone, Debug, Serialize)]
pub struct User {
    #[serde(serialize_with = "serialize_display")]
    pub id: uuid::Uuid,
    pub username: String,
    pub role: Role,
    #[serde(serialize_with = "serialize_display")]
    pub tenant_id: TenantId,
    #[serde(serialize_with = "serialize_display")]
    pub tenant_path: TenantPath,
}

fn tenant_from_row(row: &SqliteRow) -> Result<Tenant, StoreError> {
    let parent: Option<String> = row.try_get("parent_id")?;
    Ok(Tenant {
        id: parse_column(&row.try_get::<String, _>("id")?, "tenant id")?,
        parent_id: parent.map(|p| parse_column(&p, "tenant id")).transpose()?,
        level: parse_column(&row.try_get::<String, _>("level")?, "level")?,
        name: row.try_get("name")?,
        path: parse_column(&row.try_get::<String, _>("path")?, "tenant path")?,
    })
}

fn user_from_row(row: &SqliteRow) -> Result<User, StoreError> {
    Ok(User {
        id: parse_column(&row.try_get::<String, _>("id")?, "user id")?,
        username: row.try_get("username")?,
        role: parse_column(&row.try_get::<String, _>("role")?, "role")?,
        tenant_id: parse_column(&row.try_get::<String, _>("tenant_id")?, "tenant id")?,
        tenant_path: parse_column(&row.try_get::<String, _>("path")?, "tenant path")?,
    })
}

impl Store {
    /// Creates a tenant under `parent`. A branch gets its roster document,
    /// stored as its deterministic genesis, in the same transaction.
    pub async fn create_tenant(
        &self,
        parent: Option<TenantId>,
        level: Level,
        name: &str,
    ) -> Result<Tenant, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(StoreError::Invalid(
                "a tenant name is 1 to 200 characters".into(),
            ));
        }
        let id = TenantId::new_v7();
        let mut tx = self.begin_write().await?;
        let path = match (parent, level.parent()) {
            (None, None) => TenantPath::root(id),
            (Some(parent), Some(parent_level)) => {
                let row = sqlx::query("select level, path from tenants where id = ?")
                    .bind(parent.to_string())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| StoreError::Invalid(format!("no tenant {parent}")))?;
                let actual: Level = parse_column(&row.try_get::<String, _>("level")?, "level")?;
                if actual != parent_level {
                    return Err(StoreError::Invalid(format!(
                        "a {} belongs under a {}, not a {}",
                        level.as_str(),
                        parent_level.as_str(),
                        actual.as_str()
                    )));
                }
                parse_column::<TenantPath>(&row.try_get::<String, _>("path")?, "tenant path")?
                    .child(id)
            }
            (None, Some(parent_level)) => {
                return Err(StoreError::Invalid(format!(
                    "a {} needs a parent {}",
                    level.as_str(),
                    parent_level.as_str()
                )));
            }
            (Some(_), None) => return Err(StoreError::Invalid("a district has no parent".into())),
        };
        let now = now_ms();
        sqlx::query("insert into tenants (id, parent_id, level, name, path, created_at) values (?, ?, ?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(parent.map(|p| p.to_string()))
            .bind(level.as_str())
            .bind(name)
            .bind(path.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if level == Level::Branch {
            let roster = genesis(id, DocumentKind::Roster);
            super::documents::insert_document(
                &mut tx,
                DocumentId::roster(id),
                id,
                DocumentKind::Roster,
                &roster.save(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Tenant {
            id,
            parent_id: parent,
            level,
            name: name.to_owned(),
            path,
        })
    }

    pub async fn tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        sqlx::query("select id, parent_id, level, name, path from tenants where id = ?")
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(tenant_from_row)
            .transpose()
    }

    /// The tenant at `scope` and every tenant below it, by path.
    pub async fn tenants_within(&self, scope: &TenantPath) -> Result<Vec<Tenant>, StoreError> {
        sqlx::query("select id, parent_id, level, name, path from tenants where path = ? or path like ? order by path")
            .bind(scope.as_str())
            .bind(scope.descendants_pattern())
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(tenant_from_row)
            .collect()
    }

    pub async fn tenant_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("select count(*) from tenants")
            .fetch_one(self.pool())
            .await?)
    }

    pub async fn user_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("select count(*) from users")
            .fetch_one(self.pool())
            .await?)
    }

    /// Creates a user whose role fits the level of its tenant.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        tenant: TenantId,
    ) -> Result<User, StoreError> {
        let username = username.trim();
        if username.is_empty() || username.chars().count() > 100 {
            return Err(StoreError::Invalid(
                "a username is 1 to 100 characters".into(),
            ));
        }
        let t = self
            .tenant(tenant)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("no tenant {tenant}")))?;
        if t.level != role.level() {
            return Err(StoreError::Invalid(format!(
                "a {} belongs to a {}, not a {}",
                role.as_str(),
                role.level().as_str(),
                t.level.as_str()
            )));
        }
        let id = uuid::Uuid::now_v7();
        let result = sqlx::query("insert into users (id, username, password_hash, role, tenant_id, created_at) values (?, ?, ?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(username)
            .bind(password_hash)
            .bind(role.as_str())
            .bind(tenant.to_string())
            .bind(now_ms())
            .execute(self.pool())
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Conflict(format!("user {username}")))
            }
            other => {
                other?;
                Ok(User {
                    id,
                    username: username.to_owned(),
                    role,
                    tenant_id: tenant,
                    tenant_path: t.path,
                })
            }
        }
    }

    /// A user and their password hash, for login.
    pub async fn user_for_login(
        &self,
        username: &str,
    ) -> Result<Option<(User, String)>, StoreError> {
        let row = sqlx::query(
            "select u.id, u.username, u.role, u.tenant_id, u.password_hash, t.path
             from users u join tenants t on t.id = u.tenant_id where u.username = ?",
        )
        .bind(username.trim())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((user_from_row(&r)?, r.try_get("password_hash")?)))
            .transpose()
    }

    pub async fn users_within(&self, scope: &TenantPath) -> Result<Vec<User>, StoreError> {
        sqlx::query(
            "select u.id, u.username, u.role, u.tenant_id, t.path
             from users u join tenants t on t.id = u.tenant_id
             where t.path = ? or t.path like ? order by t.path, u.username",
        )
        .bind(scope.as_str())
        .bind(scope.descendants_pattern())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }

    pub async fn create_session(
        &self,
        user: uuid::Uuid,
        token_hash: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query("delete from user_sessions where expires_at < ?")
            .bind(now)
            .execute(self.pool())
            .await?;
        sqlx::query("insert into user_sessions (token_hash, user_id, created_at, expires_at) values (?, ?, ?, ?)")
            .bind(token_hash)
            .bind(user.to_string())
            .bind(now)
            .bind(expires_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The user behind an unexpired session token.
    pub async fn user_for_session(&self, token_hash: &[u8]) -> Result<Option<User>, StoreError> {
        sqlx::query(
            "select u.id, u.username, u.role, u.tenant_id, t.path
             from user_sessions s join users u on u.id = s.user_id join tenants t on t.id = u.tenant_id
             where s.token_hash = ? and s.expires_at > ?",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    pub async fn delete_session(&self, token_hash: &[u8]) -> Result<(), StoreError> {
        sqlx::query("delete from user_sessions where token_hash = ?")
            .bind(token_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
