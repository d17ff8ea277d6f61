//! Operations an operator performs, shared by the CLI and the JSON API so
//! both enforce the same rules.

use doorstep_protocol::{DeviceId, DocumentId, Month, TenantId};
use serde::Serialize;

use crate::auth::{Secret, hash_password};
use crate::store::{Device, DocumentKindRow, EnrollmentCode, Store, StoreError, User, now_ms};
use crate::tenancy::{Level, Role};

/// A document a device should keep in sync.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentEntry {
    pub document_id: String,
    /// `automerge:<id>`, what automerge-repo's `find` takes.
    pub url: String,
    pub kind: DocumentKindRow,
    pub month: Option<String>,
}

/// A fresh enrollment code; the code itself is shown only here.
#[derive(Debug, Serialize)]
pub struct IssuedCode {
    pub code: String,
    #[serde(flatten)]
    pub details: EnrollmentCode,
}

/// Issues a one-time enrollment code for a branch.
pub async fn issue_enrollment_code(
    store: &Store,
    branch: TenantId,
    label: &str,
    ttl_hours: u32,
    created_by: &str,
) -> Result<IssuedCode, StoreError> {
    let tenant = store
        .tenant(branch)
        .await?
        .ok_or_else(|| StoreError::Invalid(format!("no tenant {branch}")))?;
    if tenant.level != Level::Branch {
        return Err(StoreError::Invalid(
            "devices are enrolled to a branch".into(),
        ));
    }
    if !(1..=24 * 30).contains(&ttl_hours) {
        return Err(StoreError::Invalid("a code lives 1 hour to 30 days".into()));
    }
    let label = label.trim();
    if label.is_empty() || label.chars().count() > 200 {
        return Err(StoreError::Invalid(
            "a device label is 1 to 200 characters".into(),
        ));
    }
    let code = Secret::generate_code();
    let expires_at = now_ms() + i64::from(ttl_hours) * 3_600_000;
    let details = store
        .create_enrollment_code(branch, label, created_by, &code.hash(), expires_at)
        .await?;
    store
        .audit(
            created_by,
            "enrollment_code.create",
            &branch.to_string(),
            Some(label),
        )
        .await?;
    Ok(IssuedCode {
        code: code.expose().to_owned(),
        details,
    })
}

/// Creates a user with a hashed password.
pub async fn create_user(
    store: &Store,
    username: &str,
    password: &str,
    role: Role,
    tenant: TenantId,
    created_by: &str,
) -> Result<User, StoreError> {
    let password = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| StoreError::Invalid(format!("password hashing failed: {e}")))?
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let user = store.create_user(username, &hash, role, tenant).await?;
    store
        .audit(
            created_by,
            "user.create",
            &user.username,
            Some(role.as_str()),
        )
        .await?;
    Ok(user)
}

/// Revokes a device; the caller closes its sockets.
pub async fn revoke_device(store: &Store, device: DeviceId, by: &str) -> Result<bool, StoreError> {
    let revoked = store.revoke_device(device).await?;
    if revoked {
        store
            .audit(by, "device.revoke", &device.to_string(), None)
            .await?;
    }
    Ok(revoked)
}

/// The documents a device should sync: its branch's roster, every monthly
/// log the server has, and this month's log even before anyone opened it.
pub async fn device_documents(
    store: &Store,
    device: &Device,
) -> Result<Vec<DocumentEntry>, StoreError> {
    let mut entries: Vec<DocumentEntry> = store
        .documents_of_branch(device.branch_id)
        .await?
        .into_iter()
        .map(|d| DocumentEntry {
            document_id: d.id.to_string(),
            url: d.id.to_url(),
            kind: d.kind,
            month: d.month,
        })
        .collect();
    let now = time::OffsetDateTime::now_utc();
    if let Some(month) = Month::new(now.year(), now.month() as u8) {
        let id = DocumentId::monthly_log(device.branch_id, month);
        if !entries.iter().any(|e| e.document_id == id.to_string()) {
            entries.push(DocumentEntry {
                document_id: id.to_string(),
                url: id.to_url(),
                kind: DocumentKindRow::Log,
                month: Some(month.to_string()),
            });
        }
    }
    Ok(entries)
}
