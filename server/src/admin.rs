//! Operations an operator performs, shared by the CLI and the JSON API so
//! both enforce the same rules. Each writes its audit entry in the same
//! transaction as its change.
//!
//! Names stay in the branch by construction: a code that enrolls a device
//! at once comes from the branch's secretary (or the operator); an upper
//! level's code is a request the secretary approves before any device
//! gets a token. Users are invited and set their own password; an
//! upper level's invitee who would see names (a secretary) also waits for
//! the branch. Upper levels reach names only through a drill-down grant.

use doorstep_protocol::{DeviceId, DocumentId, Month, TenantId};
use serde::Serialize;

use crate::auth::{Secret, hash_secret};
use crate::store::{
    AuditEntry, CodeStatus, Device, DocumentKindRow, EnrollmentCode, Grant, Invitation,
    NewEnrollmentCode, NewInvitation, Store, StoreError, Tenant, User, now_ms,
};
use crate::tenancy::{Level, Role};

/// A document a device should keep in sync.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentEntry {
    pub document_id: String,
    /// `automerge:<id>`, what automerge-repo's `find` takes.
    pub url: String,
    pub kind: DocumentKindRow,
    pub month: Option<String>,
    /// The heads the rollups count this document up to: a change these
    /// cover is in every office's figures.
    pub counted_heads: Vec<String>,
}

/// A fresh enrollment code; the code itself is shown only here. Its
/// `status` is `ready`, or `pending_approval` when an upper level asked for
/// it: then a device presenting it waits until the branch approves.
#[derive(Debug, Serialize)]
pub struct IssuedCode {
    pub code: String,
    #[serde(flatten)]
    pub details: EnrollmentCode,
}

/// How long a code or an invitation may live.
const MAX_CODE_HOURS: u32 = 24 * 30;

/// Longest drill-down grant: seven days.
pub const MAX_GRANT_SECONDS: u32 = 7 * 24 * 3600;

/// Whether `user` may issue an enrollment code for `branch`, and if so
/// whether the code waits for the branch's approval: `Some(false)` for the
/// branch's own secretary, `Some(true)` for an admin above the branch, and
/// `None` for anyone else (volunteers, auditors, other branches).
pub fn enrollment_needs_approval(user: &User, branch: &Tenant) -> Option<bool> {
    if !user.tenant_path.contains(&branch.path) {
        None
    } else if user.role.keeps_branch() && user.tenant_id == branch.id {
        Some(false)
    } else if user.role.is_upper_admin() {
        Some(true)
    } else {
        None
    }
}

/// Issues a one-time enrollment code for a branch as the operator (the CLI
/// on the server's machine, trusted with everything): it works at once.
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
    issue_code(store, &tenant, label, ttl_hours, created_by, false).await
}

/// Issues a code as a logged-in user whose right to it
/// [`enrollment_needs_approval`] decided.
pub async fn issue_enrollment_code_as(
    store: &Store,
    user: &User,
    branch: &Tenant,
    label: &str,
    ttl_hours: u32,
    needs_approval: bool,
) -> Result<IssuedCode, StoreError> {
    issue_code(
        store,
        branch,
        label,
        ttl_hours,
        &user.username,
        needs_approval,
    )
    .await
}

async fn issue_code(
    store: &Store,
    branch: &Tenant,
    label: &str,
    ttl_hours: u32,
    created_by: &str,
    needs_approval: bool,
) -> Result<IssuedCode, StoreError> {
    if branch.level != Level::Branch {
        return Err(StoreError::Invalid(
            "devices are enrolled to a branch".into(),
        ));
    }
    if !(1..=MAX_CODE_HOURS).contains(&ttl_hours) {
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
    let action = if needs_approval {
        "enrollment_request.create"
    } else {
        "enrollment_code.create"
    };
    let details = store
        .create_enrollment_code(
            NewEnrollmentCode {
                branch: branch.id,
                label,
                created_by,
                code_hash: &code.hash(),
                expires_at,
                needs_approval,
            },
            AuditEntry::new(created_by, action, branch.id.to_string()).on(branch),
        )
        .await?;
    Ok(IssuedCode {
        code: code.expose().to_owned(),
        details,
    })
}

/// Approves or denies an enrollment code an upper level asked for. `None`
/// if it is not waiting for a decision. Who may decide is the caller's
/// check: the branch's secretary, or the operator.
pub async fn decide_enrollment_code(
    store: &Store,
    code: &EnrollmentCode,
    approve: bool,
    by: &str,
) -> Result<Option<EnrollmentCode>, StoreError> {
    let action = if approve {
        "enrollment_request.approve"
    } else {
        "enrollment_request.deny"
    };
    let entry = AuditEntry::new(by, action, code.id.to_string())
        .tenant(code.branch_id, &code.branch_path)
        .detail(format!("{} (asked by {})", code.label, code.created_by));
    store
        .decide_enrollment_code(code.id, approve, by, entry)
        .await
}

/// Creates a user with a hashed password, as the operator. Through the API
/// users are invited instead ([`invite_user`]) and set their own password.
pub async fn create_user(
    store: &Store,
    username: &str,
    password: &str,
    role: Role,
    tenant: TenantId,
    created_by: &str,
) -> Result<User, StoreError> {
    // The operator's command line: one hash in its own process.
    let hash = crate::budget::PasswordWork::default()
        .hash("cli", password.to_owned())
        .await
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    store
        .create_user(
            username,
            &hash,
            role,
            tenant,
            AuditEntry::new(created_by, "user.create", username.trim()).detail(role.as_str()),
        )
        .await
}

/// Whether an invitation by `inviter` (`None`: the operator) for `role`
/// waits for the branch's approval: an upper level's invitee who would see
/// the branch's names (its secretary) does, so no one above can make
/// themselves a secretary.
pub fn invitation_needs_approval(inviter: Option<&User>, role: Role) -> bool {
    role.keeps_branch() && inviter.is_some_and(|u| !u.role.keeps_branch())
}

/// A new user and the one-time code with which they set their password;
/// the code is shown only here.
#[derive(Debug, Serialize)]
pub struct Invited {
    pub user: User,
    pub activation_code: String,
    pub invitation: Invitation,
}

/// Invites a user: the account exists without a password until the invitee
/// activates it with the code (`POST /api/v1/activate`).
pub async fn invite_user(
    store: &Store,
    username: &str,
    role: Role,
    tenant: TenantId,
    ttl_hours: u32,
    created_by: &str,
    needs_approval: bool,
) -> Result<Invited, StoreError> {
    if !(1..=MAX_CODE_HOURS).contains(&ttl_hours) {
        return Err(StoreError::Invalid(
            "an invitation lives 1 hour to 30 days".into(),
        ));
    }
    let code = Secret::generate_code();
    let (user, invitation) = store
        .invite_user(
            username,
            role,
            tenant,
            NewInvitation {
                code_hash: &code.hash(),
                created_by,
                expires_at: now_ms() + i64::from(ttl_hours) * 3_600_000,
                needs_approval,
            },
            AuditEntry::new(created_by, "user.invite", username.trim()),
        )
        .await?;
    Ok(Invited {
        user,
        activation_code: code.expose().to_owned(),
        invitation,
    })
}

/// Approves or denies an invitation that waits for the branch. `None` if it
/// is not waiting.
pub async fn decide_invitation(
    store: &Store,
    invitation: &Invitation,
    approve: bool,
    by: &str,
) -> Result<Option<Invitation>, StoreError> {
    let action = if approve {
        "invitation.approve"
    } else {
        "invitation.deny"
    };
    let entry = AuditEntry::new(by, action, invitation.username.clone())
        .tenant(invitation.tenant_id, &invitation.tenant_path)
        .detail(format!(
            "{} invited by {}",
            invitation.role.as_str(),
            invitation.created_by
        ));
    store
        .decide_invitation(invitation.id, approve, by, entry)
        .await
}

/// What activating an account gave.
#[derive(Debug)]
pub enum Activation {
    Activated(User),
    /// The invitation waits for the branch's approval; nothing was set and
    /// the code is not spent.
    PendingApproval,
}

/// Why an account could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// Unknown, spent, denied, expired, or for another username: they look
    /// the same, so codes cannot be probed.
    #[error("the activation code is not valid")]
    InvalidCode,
    /// Another activation with the same code is in progress.
    #[error("this activation code is being used right now; try again in a few seconds")]
    InUse,
    #[error(transparent)]
    Password(#[from] crate::auth::PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sets an invited user's password with their one-time code, asked from
/// `source` (the client's address key). The code is claimed for the
/// duration and the hash takes from the password budget, so many
/// concurrent calls with one code cost one hash; refusals reach the audit
/// log once per code and interval.
pub async fn activate(
    store: &Store,
    budgets: &crate::budget::Budgets,
    source: &str,
    code: &str,
    username: Option<&str>,
    password: &str,
) -> Result<Activation, ActivationError> {
    if password.chars().count() < 8 {
        // Refused before anything is looked up, claimed or hashed.
        return Err(crate::auth::PasswordError::TooShort.into());
    }
    let code_hash = hash_secret(code);
    let _claim = budgets
        .codes
        .claim(&code_hash)
        .ok_or(ActivationError::InUse)?;
    let Some(invitation) = store.invitation_for_code(&code_hash).await? else {
        return Err(ActivationError::InvalidCode);
    };
    let verdict = budgets
        .refusals
        .verdict("user.activate", &hex::encode(&code_hash), now_ms());
    let recorded = |entry: AuditEntry| {
        let detail = verdict.detail(entry.detail.clone().unwrap_or_default())?;
        Some(entry.detail(detail))
    };
    let entry = |detail: &str| {
        AuditEntry::new("anonymous", "user.activate", invitation.username.clone())
            .tenant(invitation.tenant_id, &invitation.tenant_path)
            .detail(format!("invitation {}: {detail}", invitation.id))
    };
    if username.is_some_and(|u| u.trim() != invitation.username) {
        if let Some(entry) = recorded(entry("for another username").refused()) {
            store.record_audit(entry).await?;
        }
        return Err(ActivationError::InvalidCode);
    }
    match invitation.status {
        CodeStatus::Ready => {}
        CodeStatus::PendingApproval => {
            // Recorded on the first presentation only.
            store
                .invitation_presented(
                    &invitation,
                    entry("pending the branch's approval").refused(),
                )
                .await?;
            return Ok(Activation::PendingApproval);
        }
        CodeStatus::Used | CodeStatus::Denied | CodeStatus::Expired => {
            let status = format!("{:?}", invitation.status).to_lowercase();
            if let Some(entry) = recorded(entry(&status).refused()) {
                store.record_audit(entry).await?;
            }
            return Err(ActivationError::InvalidCode);
        }
    }
    let hash = budgets.passwords.hash(source, password.to_owned()).await?;
    let mut done = entry("password set by the invitee");
    done.actor = invitation.username.clone();
    match store.activate_user(&code_hash, &hash, done).await? {
        Some(user) => Ok(Activation::Activated(user)),
        None => Err(ActivationError::InvalidCode),
    }
}

/// Opens a drill-down grant for `user` on `branch`: names for a stated
/// reason, for at most [`MAX_GRANT_SECONDS`]. Who may is the caller's check
/// (an upper-level admin whose scope holds the branch).
pub async fn open_grant(
    store: &Store,
    user: &User,
    branch: &Tenant,
    reason: &str,
    duration_seconds: u32,
) -> Result<Grant, StoreError> {
    if branch.level != Level::Branch {
        return Err(StoreError::Invalid(
            "a drill-down grant is for one branch".into(),
        ));
    }
    let reason = reason.trim();
    let length = reason.chars().count();
    if !(10..=1000).contains(&length) {
        return Err(StoreError::Invalid(
            "a drill-down grant needs a reason of 10 to 1000 characters".into(),
        ));
    }
    if !(1..=MAX_GRANT_SECONDS).contains(&duration_seconds) {
        return Err(StoreError::Invalid(format!(
            "a drill-down grant lasts 1 to {MAX_GRANT_SECONDS} seconds (7 days)"
        )));
    }
    let expires_at = now_ms() + i64::from(duration_seconds) * 1000;
    store
        .create_grant(
            user,
            branch,
            reason,
            expires_at,
            AuditEntry::by_user(user, "grant.create", branch.id.to_string())
                .on(branch)
                .detail(format!("for {duration_seconds} s: {reason}")),
        )
        .await
}

/// Ends a grant early. False if it was no longer in force.
pub async fn revoke_grant(store: &Store, grant: &Grant, by: &str) -> Result<bool, StoreError> {
    let entry = AuditEntry::new(by, "grant.revoke", grant.id.to_string())
        .tenant(grant.branch_id, &grant.branch_path)
        .detail(format!("grant of {}", grant.username));
    store.revoke_grant(grant.id, by, entry).await
}

/// Revokes a device; the caller closes its sockets.
pub async fn revoke_device(store: &Store, device: DeviceId, by: &str) -> Result<bool, StoreError> {
    let Some(found) = store.device(device).await? else {
        return Ok(false);
    };
    let entry = AuditEntry::new(by, "device.revoke", device.to_string())
        .tenant(found.branch_id, &found.branch_path)
        .detail(found.label.clone());
    store.revoke_device(device, entry).await
}

/// The documents a device should sync: its branch's roster, every monthly
/// log the server has, and this month's log even before anyone opened it.
pub async fn device_documents(
    store: &Store,
    device: &Device,
) -> Result<Vec<DocumentEntry>, StoreError> {
    let mut counted = store.counted_heads_of_branch(device.branch_id).await?;
    let mut entries: Vec<DocumentEntry> = store
        .documents_of_branch(device.branch_id)
        .await?
        .into_iter()
        .map(|d| DocumentEntry {
            document_id: d.id.to_string(),
            url: d.id.to_url(),
            counted_heads: counted.remove(&d.id.to_string()).unwrap_or_default(),
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
                counted_heads: Vec::new(),
            });
        }
    }
    Ok(entries)
}
