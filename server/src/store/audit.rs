//! The audit log: who did what to people, devices and access, and every read
//! of a name-bearing resource, refused attempts included.
//!
//! Append-only: nothing here updates or deletes a row, and triggers in the
//! schema abort any statement that would. An entry is written with
//! [`record`] inside the transaction of the action it describes, so an
//! action without its entry never commits; a read is recorded (and
//! committed) before the data leaves the server. Entries never hold
//! secrets or members' personal data: usernames, device ids and labels,
//! tenant ids, counts.

use doorstep_protocol::TenantId;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::tenants::serialize_opt_display;
use super::{Device, Store, StoreError, Tenant, User, now_ms, parse_column};
use crate::tenancy::TenantPath;

/// Whether the recorded action happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// Not allowed (no grant, no approval, wrong role, wrong password...).
    Refused,
    /// Allowed, but it could not be done.
    Failed,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// What the operator's command line records as its actor.
pub const OPERATOR: &str = "cli";

/// Which tenant an entry concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Concern {
    /// Not said yet: [`record`] refuses the entry.
    Unnamed,
    Tenant(TenantId, TenantPath),
    /// Something no one tenant owns but every district's auditors should
    /// see: a failed login under a username that does not exist tells no
    /// branch, and is how password guessing shows. One row per district.
    EveryDistrict,
}

/// One entry, before it is written.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    /// A username, `device:<id>`, `cli` for the operator, or `anonymous`.
    pub actor: String,
    /// Dotted verb, e.g. `members.read`, `device.enroll`, `login`.
    pub action: String,
    /// What was acted on: a tenant, device, user or grant id, a username.
    pub subject: String,
    pub detail: Option<String>,
    /// The tenant the entry concerns: whose secretary and auditors see it.
    /// Every entry names one ([`record`] refuses an entry that does not):
    /// a row no auditor can see is a row nobody witnesses.
    pub tenant: Concern,
    pub outcome: Outcome,
}

impl AuditEntry {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
    ) -> Self {
        AuditEntry {
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            detail: None,
            tenant: Concern::Unnamed,
            outcome: Outcome::Ok,
        }
    }

    /// An action of a logged-in user; it concerns the user's own tenant
    /// unless [`AuditEntry::on`] names another.
    pub fn by_user(user: &User, action: impl Into<String>, subject: impl Into<String>) -> Self {
        AuditEntry::new(user.username.clone(), action, subject)
            .tenant(user.tenant_id, &user.tenant_path)
    }

    /// An action of a device; it concerns the device's branch.
    pub fn by_device(
        device: &Device,
        action: impl Into<String>,
        subject: impl Into<String>,
    ) -> Self {
        AuditEntry::new(format!("device:{}", device.id), action, subject)
            .tenant(device.branch_id, &device.branch_path)
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn tenant(mut self, id: TenantId, path: &TenantPath) -> Self {
        self.tenant = Concern::Tenant(id, path.clone());
        self
    }

    /// The entry concerns every district (see [`Concern::EveryDistrict`]).
    pub fn every_district(mut self) -> Self {
        self.tenant = Concern::EveryDistrict;
        self
    }

    /// The entry concerns `tenant`.
    pub fn on(self, tenant: &Tenant) -> Self {
        self.tenant(tenant.id, &tenant.path)
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn refused(self) -> Self {
        self.outcome(Outcome::Refused)
    }

    pub fn failed(self) -> Self {
        self.outcome(Outcome::Failed)
    }
}

/// Appends `entry` inside the caller's transaction: it commits with the
/// action, or neither does.
pub async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    entry: AuditEntry,
) -> Result<(), StoreError> {
    let tenants: Vec<(Option<String>, Option<String>)> = match &entry.tenant {
        Concern::Tenant(id, path) => vec![(Some(id.to_string()), Some(path.as_str().to_owned()))],
        Concern::EveryDistrict => {
            let roots: Vec<(String, String)> =
                sqlx::query_as("select id, path from tenants where parent_id is null")
                    .fetch_all(&mut **tx)
                    .await?;
            if roots.is_empty() {
                // No district exists yet, so no auditor either: the
                // operator's `doorstep audit list` still shows the row.
                vec![(None, None)]
            } else {
                roots
                    .into_iter()
                    .map(|(id, path)| (Some(id), Some(path)))
                    .collect()
            }
        }
        Concern::Unnamed => return Err(StoreError::Unconcerned(entry.action.clone())),
    };
    for (tenant_id, tenant_path) in tenants {
        sqlx::query(
            "insert into audit (at, actor, action, subject, detail, tenant_id, tenant_path, outcome)
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(now_ms())
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.subject)
        .bind(&entry.detail)
        .bind(tenant_id)
        .bind(tenant_path)
        .bind(entry.outcome.as_str())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// An entry as read back.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: Option<String>,
    #[serde(serialize_with = "serialize_opt_display")]
    pub tenant_id: Option<TenantId>,
    pub outcome: Outcome,
}

fn record_from_row(row: &AnyRow) -> Result<AuditRecord, StoreError> {
    let tenant: Option<String> = row.try_get("tenant_id")?;
    let outcome: String = row.try_get("outcome")?;
    Ok(AuditRecord {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        subject: row.try_get("subject")?,
        detail: row.try_get("detail")?,
        tenant_id: tenant.map(|t| parse_column(&t, "tenant id")).transpose()?,
        outcome: match outcome.as_str() {
            "ok" => Outcome::Ok,
            "refused" => Outcome::Refused,
            "failed" => Outcome::Failed,
            other => return Err(StoreError::Corrupt(format!("audit outcome {other:?}"))),
        },
    })
}

/// Which entries to read, newest first.
#[derive(Clone, Debug)]
pub struct AuditQuery {
    /// Entries about this tenant and everything below it; `None` is every
    /// entry (the operator only).
    pub scope: Option<TenantPath>,
    /// Only entries with an id below this one (the next page).
    pub before: Option<i64>,
    pub limit: u32,
}

/// Most entries one read returns.
pub const MAX_AUDIT_PAGE: u32 = 10_000;

impl Store {
    /// Appends one entry in a transaction of its own, for actions that
    /// write nothing else (a read, a refusal).
    pub async fn record_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        record(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Entries newest first.
    pub async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = i64::from(query.limit.clamp(1, MAX_AUDIT_PAGE));
        let before = query.before.unwrap_or(i64::MAX);
        let rows =
            match &query.scope {
                Some(scope) => {
                    let mut tx = self.begin_read_under(scope).await?;
                    // Bounds, not `like`: under row-level security only
                    // leakproof operators reach the (tenant_path, id) index.
                    let (low, high) = scope.descendants_bounds();
                    sqlx::query(
                    "select id, at, actor, action, subject, detail, tenant_id, outcome from audit
                         where (tenant_path = $1 or (tenant_path >= $2 and tenant_path < $3))
                           and id < $4
                         order by id desc limit $5",
                )
                .bind(scope.as_str())
                .bind(low)
                .bind(high)
                .bind(before)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?
                }
                None => sqlx::query(
                    "select id, at, actor, action, subject, detail, tenant_id, outcome from audit
                     where id < $1 order by id desc limit $2",
                )
                .bind(before)
                .bind(limit)
                .fetch_all(self.every_branch())
                .await?,
            };
        rows.iter().map(record_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::Level;

    #[tokio::test]
    async fn entries_are_scoped_and_cannot_be_changed_or_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_at(&crate::store::testing::test_location(dir.path()).await)
            .await
            .expect("open");
        let district = store
            .create_tenant(None, Level::District, "d")
            .await
            .expect("district");
        let sub = store
            .create_tenant(Some(district.id), Level::SubDistrict, "s")
            .await
            .expect("sub");
        let a = store
            .create_tenant(Some(sub.id), Level::Branch, "a")
            .await
            .expect("a");
        let b = store
            .create_tenant(Some(sub.id), Level::Branch, "b")
            .await
            .expect("b");
        for (branch, outcome) in [(&a, Outcome::Ok), (&b, Outcome::Refused)] {
            store
                .record_audit(
                    AuditEntry::new("someone", "members.read", branch.id.to_string())
                        .on(branch)
                        .outcome(outcome),
                )
                .await
                .expect("record");
        }
        let page = |scope: Option<TenantPath>| AuditQuery {
            scope,
            before: None,
            limit: 100,
        };
        let of_a = store
            .audit_entries(&page(Some(a.path.clone())))
            .await
            .expect("read");
        assert_eq!(of_a.len(), 1);
        assert_eq!(of_a[0].tenant_id, Some(a.id));
        assert_eq!(of_a[0].outcome, Outcome::Ok);
        let of_district = store
            .audit_entries(&page(Some(district.path.clone())))
            .await
            .expect("read");
        assert_eq!(of_district.len(), 2);
        assert_eq!(of_district[0].outcome, Outcome::Refused, "newest first");

        for statement in ["update audit set actor = 'nobody'", "delete from audit"] {
            let err = sqlx::query(statement)
                .execute(store.every_branch())
                .await
                .expect_err("the audit log is append-only");
            assert!(err.to_string().contains("append-only"), "{err}");
        }
        assert_eq!(
            store.audit_entries(&page(None)).await.expect("read").len(),
            2
        );
    }
}
