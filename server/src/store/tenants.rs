//! Tenants and users (login sessions are in `logins.rs`).

use doorstep_protocol::schema::{DocumentKind, genesis};
use doorstep_protocol::{DocumentId, TenantId};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::{AuditEntry, record};
use super::devices::CodeStatus;
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

fn tenant_from_row(row: &AnyRow) -> Result<Tenant, StoreError> {
    let parent: Option<String> = row.try_get("parent_id")?;
    Ok(Tenant {
        id: parse_column(&row.try_get::<String, _>("id")?, "tenant id")?,
        parent_id: parent.map(|p| parse_column(&p, "tenant id")).transpose()?,
        level: parse_column(&row.try_get::<String, _>("level")?, "level")?,
        name: row.try_get("name")?,
        path: parse_column(&row.try_get::<String, _>("path")?, "tenant path")?,
    })
}

pub(super) fn user_from_row(row: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        id: parse_column(&row.try_get::<String, _>("id")?, "user id")?,
        username: row.try_get("username")?,
        role: parse_column(&row.try_get::<String, _>("role")?, "role")?,
        tenant_id: parse_column(&row.try_get::<String, _>("tenant_id")?, "tenant id")?,
        tenant_path: parse_column(&row.try_get::<String, _>("path")?, "tenant path")?,
    })
}

/// The stored password hash of an invited user who has not activated the
/// account: no password verifies against it, and login skips it.
const NO_PASSWORD: &str = "";

/// Names the system itself uses as audit actors.
const RESERVED_USERNAMES: &[&str] = &["cli", "anonymous"];

async fn insert_user(
    tx: &mut crate::store::Tx,
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
    crate::authority::plain_text("a username", username)?;
    if username.contains(':') || RESERVED_USERNAMES.contains(&username) {
        return Err(StoreError::Invalid(format!(
            "{username:?} is reserved; a username has no ':' and is not {RESERVED_USERNAMES:?}"
        )));
    }
    let t = sqlx::query("select id, parent_id, level, name, path from tenants where id = $1")
        .bind(tenant.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(tenant_from_row)
        .transpose()?
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
    let result = sqlx::query("insert into users (id, username, password_hash, role, tenant_id, created_at) values ($1, $2, $3, $4, $5, $6)")
        .bind(id.to_string())
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(tenant.to_string())
        .bind(now_ms())
        .execute(&mut **tx)
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

/// What [`Store::invite_user`] stores besides the user.
#[derive(Debug)]
pub struct NewInvitation<'a> {
    pub code_hash: &'a [u8],
    pub created_by: &'a str,
    pub expires_at: i64,
    /// An upper level's invitee who would see names: waits for the branch.
    pub needs_approval: bool,
}

/// An invitation, as listed (never the code itself).
#[derive(Clone, Debug, Serialize)]
pub struct Invitation {
    #[serde(serialize_with = "serialize_display")]
    pub id: uuid::Uuid,
    #[serde(serialize_with = "serialize_display")]
    pub user_id: uuid::Uuid,
    pub username: String,
    pub role: Role,
    #[serde(serialize_with = "serialize_display")]
    pub tenant_id: TenantId,
    #[serde(skip)]
    pub tenant_path: TenantPath,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub status: CodeStatus,
    pub decided_by: Option<String>,
    /// When the invitee first tried it while it waited for approval.
    pub presented_at: Option<i64>,
}

const INVITATION_COLUMNS: &str = "i.id, i.user_id, u.username, u.role, u.tenant_id, t.path,
     i.created_by, i.created_at, i.expires_at, i.needs_approval, i.approved_at, i.approved_by,
     i.denied_at, i.denied_by, i.presented_at, i.used_at";

fn invitation_from_row(row: &AnyRow, now: i64) -> Result<Invitation, StoreError> {
    let approved_by: Option<String> = row.try_get("approved_by")?;
    let denied_by: Option<String> = row.try_get("denied_by")?;
    let expires_at = row.try_get("expires_at")?;
    Ok(Invitation {
        id: parse_column(&row.try_get::<String, _>("id")?, "invitation id")?,
        user_id: parse_column(&row.try_get::<String, _>("user_id")?, "user id")?,
        username: row.try_get("username")?,
        role: parse_column(&row.try_get::<String, _>("role")?, "role")?,
        tenant_id: parse_column(&row.try_get::<String, _>("tenant_id")?, "tenant id")?,
        tenant_path: parse_column(&row.try_get::<String, _>("path")?, "tenant path")?,
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
    })
}

/// A drill-down grant: one upper-level user's reasoned, time-limited
/// access to one branch's names ("break the glass").
#[derive(Clone, Debug, Serialize)]
pub struct Grant {
    #[serde(serialize_with = "serialize_display")]
    pub id: uuid::Uuid,
    #[serde(serialize_with = "serialize_display")]
    pub branch_id: TenantId,
    #[serde(skip)]
    pub branch_path: TenantPath,
    #[serde(serialize_with = "serialize_display")]
    pub user_id: uuid::Uuid,
    pub username: String,
    pub reason: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    /// In force now: neither expired nor revoked.
    pub active: bool,
}

const GRANT_COLUMNS: &str = "g.id, g.branch_id, t.path, g.user_id, u.username, g.reason,
     g.created_at, g.expires_at, g.revoked_at, g.revoked_by";

fn grant_from_row(row: &AnyRow, now: i64) -> Result<Grant, StoreError> {
    let expires_at: i64 = row.try_get("expires_at")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    Ok(Grant {
        id: parse_column(&row.try_get::<String, _>("id")?, "grant id")?,
        branch_id: parse_column(&row.try_get::<String, _>("branch_id")?, "tenant id")?,
        branch_path: parse_column(&row.try_get::<String, _>("path")?, "tenant path")?,
        user_id: parse_column(&row.try_get::<String, _>("user_id")?, "user id")?,
        username: row.try_get("username")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        expires_at,
        revoked_at,
        revoked_by: row.try_get("revoked_by")?,
        active: revoked_at.is_none() && expires_at > now,
    })
}

/// Ends every grant in force that `holder` has, each with its audit entry
/// on the grant's branch. Returns how many ended.
pub(super) async fn end_grants_of_holder(
    tx: &mut crate::store::Tx,
    holder: &User,
    by: &str,
) -> Result<usize, StoreError> {
    let now = now_ms();
    let ended: Vec<(String, String, String)> = sqlx::query_as(
        "update drilldown_grants set revoked_at = $1, revoked_by = $2
         where user_id = $3 and revoked_at is null and expires_at > $4
         returning id, branch_id, (select path from tenants t where t.id = branch_id)",
    )
    .bind(now)
    .bind(by)
    .bind(holder.id.to_string())
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    for (id, branch, path) in &ended {
        record(
            tx,
            AuditEntry::new(by, "grant.revoke", id.clone())
                .tenant(
                    parse_column(branch, "tenant id")?,
                    &parse_column(path, "tenant path")?,
                )
                .detail(format!(
                    "grant of {}: its holder was disabled",
                    holder.username
                )),
        )
        .await?;
    }
    Ok(ended.len())
}

impl Store {
    /// Creates a tenant under `parent`. A branch gets its roster document,
    /// stored as its deterministic genesis, in the same transaction.
    /// Unaudited: for fixtures; operators and admins go through
    /// [`Store::create_tenant_audited`].
    pub async fn create_tenant(
        &self,
        parent: Option<TenantId>,
        level: Level,
        name: &str,
    ) -> Result<Tenant, StoreError> {
        self.create_tenant_inner(parent, level, name, None).await
    }

    /// Creates a tenant with `audit`'s entry in the same transaction,
    /// concerning the new tenant (so its auditors and, for a branch, its
    /// secretary see who made it).
    pub async fn create_tenant_audited(
        &self,
        parent: Option<TenantId>,
        level: Level,
        name: &str,
        audit: AuditEntry,
    ) -> Result<Tenant, StoreError> {
        self.create_tenant_inner(parent, level, name, Some(audit))
            .await
    }

    async fn create_tenant_inner(
        &self,
        parent: Option<TenantId>,
        level: Level,
        name: &str,
        audit: Option<AuditEntry>,
    ) -> Result<Tenant, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(StoreError::Invalid(
                "a tenant name is 1 to 200 characters".into(),
            ));
        }
        crate::authority::plain_text("a tenant name", name)?;
        let id = TenantId::new_v7();
        let mut tx = self.begin_write().await?;
        let path = match (parent, level.parent()) {
            (None, None) => TenantPath::root(id),
            (Some(parent), Some(parent_level)) => {
                let row = sqlx::query("select level, path from tenants where id = $1")
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
        sqlx::query("insert into tenants (id, parent_id, level, name, path, created_at) values ($1, $2, $3, $4, $5, $6)")
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
        let tenant = Tenant {
            id,
            parent_id: parent,
            level,
            name: name.to_owned(),
            path,
        };
        if let Some(mut audit) = audit {
            audit.subject = id.to_string();
            record(
                &mut tx,
                audit
                    .on(&tenant)
                    .detail(format!("{} {}", level.as_str(), tenant.name)),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(tenant)
    }

    pub async fn tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        sqlx::query("select id, parent_id, level, name, path from tenants where id = $1")
            .bind(id.to_string())
            .fetch_optional(self.every_branch())
            .await?
            .as_ref()
            .map(tenant_from_row)
            .transpose()
    }

    /// The tenant at `scope` and every tenant below it, by path.
    pub async fn tenants_within(&self, scope: &TenantPath) -> Result<Vec<Tenant>, StoreError> {
        sqlx::query("select id, parent_id, level, name, path from tenants where path = $1 or path like $2 order by path")
            .bind(scope.as_str())
            .bind(scope.descendants_pattern())
            .fetch_all(self.every_branch())
            .await?
            .iter()
            .map(tenant_from_row)
            .collect()
    }

    pub async fn tenant_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("select count(*) from tenants")
            .fetch_one(self.every_branch())
            .await?)
    }

    pub async fn user_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("select count(*) from users")
            .fetch_one(self.every_branch())
            .await?)
    }

    /// Creates a user whose role fits the level of its tenant, with its
    /// audit entry in the same transaction. Only the operator sets a
    /// password this way; the API invites ([`Store::invite_user`]).
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        tenant: TenantId,
        audit: AuditEntry,
    ) -> Result<User, StoreError> {
        let mut tx = self.begin_write().await?;
        let user = insert_user(&mut tx, username, password_hash, role, tenant).await?;
        record(&mut tx, audit.tenant(user.tenant_id, &user.tenant_path)).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Creates a user without a password and their one-time activation
    /// code (stored as its hash), with the audit entry, in one transaction.
    pub async fn invite_user(
        &self,
        username: &str,
        role: Role,
        tenant: TenantId,
        invitation: NewInvitation<'_>,
        audit: AuditEntry,
    ) -> Result<(User, Invitation), StoreError> {
        let mut tx = self.begin_write().await?;
        let user = insert_user(&mut tx, username, NO_PASSWORD, role, tenant).await?;
        let id = uuid::Uuid::now_v7();
        sqlx::query(
            "insert into user_invitations (id, user_id, code_hash, created_by, created_at, expires_at, needs_approval)
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.to_string())
        .bind(user.id.to_string())
        .bind(invitation.code_hash)
        .bind(invitation.created_by)
        .bind(now_ms())
        .bind(invitation.expires_at)
        .bind(i64::from(invitation.needs_approval))
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            audit
                .tenant(user.tenant_id, &user.tenant_path)
                .detail(format!("{} invitation {id}", role.as_str())),
        )
        .await?;
        tx.commit().await?;
        let invitation = self
            .invitation(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a new invitation vanished".into()))?;
        Ok((user, invitation))
    }

    pub async fn invitation(&self, id: uuid::Uuid) -> Result<Option<Invitation>, StoreError> {
        sqlx::query(&format!(
            "select {INVITATION_COLUMNS} from user_invitations i
             join users u on u.id = i.user_id join tenants t on t.id = u.tenant_id where i.id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.every_branch())
        .await?
        .map(|r| invitation_from_row(&r, now_ms()))
        .transpose()
    }

    pub async fn invitation_for_code(
        &self,
        code_hash: &[u8],
    ) -> Result<Option<Invitation>, StoreError> {
        sqlx::query(&format!(
            "select {INVITATION_COLUMNS} from user_invitations i
             join users u on u.id = i.user_id join tenants t on t.id = u.tenant_id where i.code_hash = $1"
        ))
        .bind(code_hash)
        .fetch_optional(self.every_branch())
        .await?
        .map(|r| invitation_from_row(&r, now_ms()))
        .transpose()
    }

    /// Invitations of users within `scope`, newest first; with
    /// `pending_only`, only those waiting for approval.
    pub async fn invitations_within(
        &self,
        scope: &TenantPath,
        pending_only: bool,
    ) -> Result<Vec<Invitation>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_read_under(scope).await?;
        let rows = sqlx::query(&format!(
            "select {INVITATION_COLUMNS} from user_invitations i
             join users u on u.id = i.user_id join tenants t on t.id = u.tenant_id
             where (t.path = $1 or t.path like $2)
               and ($3 = 0 or (i.needs_approval = 1 and i.approved_at is null and i.denied_at is null
                              and i.used_at is null and i.expires_at > $4))
             order by i.created_at desc limit 1000"
        ))
        .bind(scope.as_str())
        .bind(scope.descendants_pattern())
        .bind(i64::from(pending_only))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        rows.iter().map(|r| invitation_from_row(r, now)).collect()
    }

    /// Approves or denies an invitation waiting for approval, with its
    /// audit entry. `None` if it is not waiting.
    pub async fn decide_invitation(
        &self,
        id: uuid::Uuid,
        approve: bool,
        by: &str,
        new_code_hash: Option<&[u8]>,
        audit: AuditEntry,
    ) -> Result<Option<Invitation>, StoreError> {
        let now = now_ms();
        // Approval replaces the code: the one made with the request was
        // never shown to anyone (or, for a request made before codes went
        // to approvers, was shown to the requester), and the fresh one goes
        // to the approver only.
        let statement = match new_code_hash {
            Some(_) if approve => {
                "update user_invitations set approved_at = $2, approved_by = $3, code_hash = $4"
            }
            _ if approve => "update user_invitations set approved_at = $2, approved_by = $3",
            _ => "update user_invitations set denied_at = $2, denied_by = $3",
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
        self.invitation(id).await
    }

    /// Records that an invitation waiting for approval was presented, the
    /// first time only (an invitee who retries does not fill the log).
    pub async fn invitation_presented(
        &self,
        invitation: &Invitation,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let first = sqlx::query(
            "update user_invitations set presented_at = $1 where id = $2 and presented_at is null",
        )
        .bind(now_ms())
        .bind(invitation.id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if first {
            record(&mut tx, audit).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Spends a ready invitation and sets the user's password, with the
    /// audit entry, in one transaction. `None` if the code is no longer
    /// ready (spent, denied, expired, or not approved) or the user already
    /// has a password.
    pub async fn activate_user(
        &self,
        code_hash: &[u8],
        password_hash: &str,
        audit: AuditEntry,
    ) -> Result<Option<User>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let user: Option<String> = sqlx::query_scalar(
            "update user_invitations set used_at = $1
             where code_hash = $2 and used_at is null and denied_at is null and expires_at > $3
               and (needs_approval = 0 or approved_at is not null)
             returning user_id",
        )
        .bind(now)
        .bind(code_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = user else {
            return Ok(None);
        };
        let set =
            sqlx::query("update users set password_hash = $1 where id = $2 and password_hash = $3")
                .bind(password_hash)
                .bind(&user)
                .bind(NO_PASSWORD)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if set == 0 {
            return Ok(None);
        }
        let user = sqlx::query(
            "select u.id, u.username, u.role, u.tenant_id, t.path
             from users u join tenants t on t.id = u.tenant_id where u.id = $1",
        )
        .bind(&user)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)
        .and_then(|r| user_from_row(&r))?;
        record(&mut tx, audit.tenant(user.tenant_id, &user.tenant_path)).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    /// The user a login token was issued to, whether or not its session is
    /// still live: to record an official's attempt to use one where only a
    /// device token works.
    pub async fn user_of_login_token(&self, token_hash: &[u8]) -> Result<Option<User>, StoreError> {
        sqlx::query(
            "select u.id, u.username, u.role, u.tenant_id, t.path
             from user_sessions s join users u on u.id = s.user_id join tenants t on t.id = u.tenant_id
             where s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.every_branch())
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    /// A user by id.
    pub async fn user(&self, id: uuid::Uuid) -> Result<Option<User>, StoreError> {
        sqlx::query(
            "select u.id, u.username, u.role, u.tenant_id, t.path
             from users u join tenants t on t.id = u.tenant_id where u.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.every_branch())
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    /// Opens a drill-down grant, with its audit entry.
    pub async fn create_grant(
        &self,
        user: &User,
        branch: &Tenant,
        reason: &str,
        expires_at: i64,
        audit: AuditEntry,
    ) -> Result<Grant, StoreError> {
        let id = uuid::Uuid::now_v7();
        let mut tx = self.begin_write().await?;
        // Under the write lock, the holder must still be enabled: a disable
        // that committed since the request read the user would otherwise
        // leave a grant that comes back in force on re-enabling.
        let inserted = sqlx::query(
            "insert into drilldown_grants (id, branch_id, user_id, reason, created_at, expires_at)
             select $1, $2, $3, $4, $5, $6 where exists
                 (select 1 from users where id = $7 and disabled_at is null)",
        )
        .bind(id.to_string())
        .bind(branch.id.to_string())
        .bind(user.id.to_string())
        .bind(reason)
        .bind(now_ms())
        .bind(expires_at)
        .bind(user.id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Invalid("this account is disabled".into()));
        }
        let mut audit = audit;
        audit.subject = id.to_string();
        record(&mut tx, audit).await?;
        tx.commit().await?;
        self.grant(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a new grant vanished".into()))
    }

    pub async fn grant(&self, id: uuid::Uuid) -> Result<Option<Grant>, StoreError> {
        sqlx::query(&format!(
            "select {GRANT_COLUMNS} from drilldown_grants g join users u on u.id = g.user_id
             join tenants t on t.id = g.branch_id where g.id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.every_branch())
        .await?
        .map(|r| grant_from_row(&r, now_ms()))
        .transpose()
    }

    /// Every grant on a branch, newest first.
    pub async fn grants_of_branch(&self, branch: TenantId) -> Result<Vec<Grant>, StoreError> {
        let now = now_ms();
        let rows = sqlx::query(&format!(
            "select {GRANT_COLUMNS} from drilldown_grants g join users u on u.id = g.user_id
             join tenants t on t.id = g.branch_id where g.branch_id = $1 order by g.created_at desc"
        ))
        .bind(branch.to_string())
        .fetch_all(self.every_branch())
        .await?;
        rows.iter().map(|r| grant_from_row(r, now)).collect()
    }

    /// The user's grant on the branch that is in force now, if any.
    pub async fn active_grant(
        &self,
        user: uuid::Uuid,
        branch: TenantId,
    ) -> Result<Option<Grant>, StoreError> {
        let now = now_ms();
        sqlx::query(&format!(
            "select {GRANT_COLUMNS} from drilldown_grants g join users u on u.id = g.user_id
             join tenants t on t.id = g.branch_id
             where g.user_id = $1 and g.branch_id = $2 and g.revoked_at is null and g.expires_at > $3
               and u.disabled_at is null
             order by g.expires_at desc limit 1"
        ))
        .bind(user.to_string())
        .bind(branch.to_string())
        .bind(now)
        .fetch_optional(self.every_branch())
        .await?
        .map(|r| grant_from_row(&r, now))
        .transpose()
    }

    /// Ends a grant early, with its audit entry. False if it was not in force.
    pub async fn revoke_grant(
        &self,
        id: uuid::Uuid,
        by: &str,
        audit: AuditEntry,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let revoked = sqlx::query(
            "update drilldown_grants set revoked_at = $1, revoked_by = $2
             where id = $3 and revoked_at is null and expires_at > $4",
        )
        .bind(now)
        .bind(by)
        .bind(id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if revoked {
            record(&mut tx, audit).await?;
            tx.commit().await?;
        }
        Ok(revoked)
    }

    pub async fn users_within(&self, scope: &TenantPath) -> Result<Vec<User>, StoreError> {
        let mut tx = self.begin_read_under(scope).await?;
        sqlx::query(
            "select u.id, u.username, u.role, u.tenant_id, t.path
             from users u join tenants t on t.id = u.tenant_id
             where t.path = $1 or t.path like $2 order by t.path, u.username",
        )
        .bind(scope.as_str())
        .bind(scope.descendants_pattern())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }
}
