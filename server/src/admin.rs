//! Operations an operator performs, shared by the CLI and the JSON API so
//! both enforce the same rules. Each writes its audit entry in the same
//! transaction as its change.
//!
//! Who may do what is [`crate::authority`]'s decision: every function here
//! that changes something takes the [`Permit`] it gives. Names stay in the
//! branch by construction: a code that enrolls a device at once comes from
//! the branch's secretary (or the operator); an upper level's code is a
//! request, and its code is made for whoever approves it. Users are invited
//! and set their own password; a secretary invited from above waits for the
//! branch, and the approver receives the activation code. Upper levels
//! reach names only through a drill-down grant.

use doorstep_protocol::{DocumentId, Month, TenantId};
use serde::Serialize;

use crate::auth::{Secret, hash_secret};
use crate::authority::{self, Action, Caller, Credential, Permit};
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

/// An enrollment code as issued or decided. `code` is present only for
/// whom [`crate::authority`] gives it to: the branch's secretary issuing
/// for their own branch, the operator, and whoever approves a request.
/// Whoever asked from above gets the request (`status: pending_approval`)
/// and never the code.
#[derive(Debug, Serialize)]
pub struct IssuedCode {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(flatten)]
    pub details: EnrollmentCode,
}

/// How long a code or an invitation may live.
const MAX_CODE_HOURS: u32 = 24 * 30;

/// Longest drill-down grant: seven days.
pub const MAX_GRANT_SECONDS: u32 = 7 * 24 * 3600;

/// Creates a tenant under `parent` (a district: `None`, the operator only),
/// audited on the new tenant.
pub async fn create_tenant(
    store: &Store,
    permit: &Permit,
    parent: Option<&Tenant>,
    level: Level,
    name: &str,
) -> Result<Tenant, StoreError> {
    permit.check("tenant.create")?;
    store
        .create_tenant_audited(parent.map(|p| p.id), level, name, permit.entry(name.trim()))
        .await
}

/// A code the operator issued: it works at once, and the operator hands it
/// to the device.
#[derive(Debug, Serialize)]
pub struct ReadyCode {
    pub code: String,
    #[serde(flatten)]
    pub details: EnrollmentCode,
}

/// Issues a one-time enrollment code for a branch as the operator (the CLI
/// on the server's machine, trusted with everything, or a test fixture
/// standing in for it): it works at once. `created_by` names who the log
/// records.
pub async fn issue_enrollment_code(
    store: &Store,
    branch: TenantId,
    label: &str,
    ttl_hours: u32,
    created_by: &str,
) -> Result<ReadyCode, StoreError> {
    let tenant = store
        .tenant(branch)
        .await?
        .ok_or_else(|| StoreError::Invalid(format!("no tenant {branch}")))?;
    let permit = authorize_operator(store, Action::IssueEnrollmentCode { branch: &tenant }).await?;
    let issued = issue_code(store, &permit, &tenant, label, ttl_hours, created_by).await?;
    match issued.code {
        Some(code) => Ok(ReadyCode {
            code,
            details: issued.details,
        }),
        None => Err(StoreError::Corrupt(
            "the operator's code was issued as a request".into(),
        )),
    }
}

/// The operator's permit: the rule never refuses the operator, but asking
/// keeps one path for everyone.
pub async fn authorize_operator(store: &Store, action: Action<'_>) -> Result<Permit, StoreError> {
    authority::authorize(store, None, Caller::Operator, action)
        .await?
        .map_err(|denied| StoreError::Invalid(denied.to_string()))
}

/// Issues a code under `permit`: a code that works at once, shown to the
/// caller, or a request the branch approves, whose code nobody sees until
/// then.
pub async fn issue_enrollment_code_with(
    store: &Store,
    permit: &Permit,
    branch: &Tenant,
    label: &str,
    ttl_hours: u32,
) -> Result<IssuedCode, StoreError> {
    issue_code(store, permit, branch, label, ttl_hours, permit.actor()).await
}

async fn issue_code(
    store: &Store,
    permit: &Permit,
    branch: &Tenant,
    label: &str,
    ttl_hours: u32,
    created_by: &str,
) -> Result<IssuedCode, StoreError> {
    permit.check("enrollment_code.create")?;
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
    authority::plain_text("a device label", label)?;
    let needs_approval = permit.credential() == Credential::ToApprover;
    // A request still stores the hash of a code, which nobody is shown:
    // approval replaces it with one for the approver.
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
        code: (!needs_approval).then(|| code.expose().to_owned()),
        details,
    })
}

/// Approves or denies an enrollment code an upper level asked for. `None`
/// if it is not waiting for a decision. An approval makes the code, for the
/// approver only.
pub async fn decide_enrollment_code(
    store: &Store,
    permit: &Permit,
    code: &EnrollmentCode,
    approve: bool,
) -> Result<Option<IssuedCode>, StoreError> {
    permit.check(if approve {
        "enrollment_request.approve"
    } else {
        "enrollment_request.deny"
    })?;
    let fresh =
        (approve && permit.credential() == Credential::ToCaller).then(Secret::generate_code);
    let entry = permit
        .entry(code.id.to_string())
        .tenant(code.branch_id, &code.branch_path)
        .detail(format!("asked by {}", code.created_by));
    let decided = store
        .decide_enrollment_code(
            code.id,
            approve,
            permit.actor(),
            fresh.as_ref().map(|c| c.hash()).as_deref(),
            entry,
        )
        .await?;
    Ok(decided.map(|details| IssuedCode {
        code: fresh.map(|c| c.expose().to_owned()),
        details,
    }))
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

/// A new user and, for whom the rule gives it to, the one-time code with
/// which they set their password (shown only here). A secretary invited
/// from above has no code yet: the branch's approval makes it.
#[derive(Debug, Serialize)]
pub struct Invited {
    pub user: User,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_code: Option<String>,
    pub invitation: Invitation,
}

/// Invites a user: the account exists without a password until the invitee
/// activates it with the code (`POST /api/v1/activate`).
pub async fn invite_user(
    store: &Store,
    permit: &Permit,
    username: &str,
    role: Role,
    tenant: &Tenant,
    ttl_hours: u32,
) -> Result<Invited, StoreError> {
    permit.check("user.invite")?;
    if !(1..=MAX_CODE_HOURS).contains(&ttl_hours) {
        return Err(StoreError::Invalid(
            "an invitation lives 1 hour to 30 days".into(),
        ));
    }
    let needs_approval = permit.credential() == Credential::ToApprover;
    let code = Secret::generate_code();
    let (user, invitation) = store
        .invite_user(
            username,
            role,
            tenant.id,
            NewInvitation {
                code_hash: &code.hash(),
                created_by: permit.actor(),
                expires_at: now_ms() + i64::from(ttl_hours) * 3_600_000,
                needs_approval,
            },
            permit.entry(username.trim()),
        )
        .await?;
    Ok(Invited {
        user,
        activation_code: (!needs_approval).then(|| code.expose().to_owned()),
        invitation,
    })
}

/// An invitation as decided; the activation code goes to the approver,
/// who hands it to the invitee.
#[derive(Debug, Serialize)]
pub struct DecidedInvitation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_code: Option<String>,
    #[serde(flatten)]
    pub invitation: Invitation,
}

/// Approves or denies an invitation that waits for the branch. `None` if it
/// is not waiting.
pub async fn decide_invitation(
    store: &Store,
    permit: &Permit,
    invitation: &Invitation,
    approve: bool,
) -> Result<Option<DecidedInvitation>, StoreError> {
    permit.check(if approve {
        "invitation.approve"
    } else {
        "invitation.deny"
    })?;
    let fresh =
        (approve && permit.credential() == Credential::ToCaller).then(Secret::generate_code);
    let entry = permit
        .entry(invitation.username.clone())
        .tenant(invitation.tenant_id, &invitation.tenant_path)
        .detail(format!(
            "{} invited by {}",
            invitation.role.as_str(),
            invitation.created_by
        ));
    let decided = store
        .decide_invitation(
            invitation.id,
            approve,
            permit.actor(),
            fresh.as_ref().map(|c| c.hash()).as_deref(),
            entry,
        )
        .await?;
    Ok(decided.map(|invitation| DecidedInvitation {
        activation_code: fresh.map(|c| c.expose().to_owned()),
        invitation,
    }))
}

/// Disables (or enables) a user; disabling ends their sessions and their
/// drill-down grants. Returns whether anything changed and how many
/// sessions ended.
pub async fn set_user_disabled(
    store: &Store,
    permit: &Permit,
    target: &User,
    disable: bool,
    now: i64,
) -> Result<(bool, u64), StoreError> {
    permit.check(if disable {
        "user.disable"
    } else {
        "user.enable"
    })?;
    store
        .set_user_disabled(target, disable, permit.actor(), now)
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
    // Asked only when a refusal is to be recorded: a successful use or a
    // poll of a pending code must not use up the code's slot.
    let recorded = |entry: AuditEntry| {
        let verdict = budgets
            .refusals
            .verdict("user.activate", &hex::encode(&code_hash), now_ms());
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

/// Opens a drill-down grant for the permit's holder on `branch`: names
/// for a stated reason, for at most [`MAX_GRANT_SECONDS`].
pub async fn open_grant(
    store: &Store,
    permit: &Permit,
    branch: &Tenant,
    reason: &str,
    duration_seconds: u32,
) -> Result<Grant, StoreError> {
    permit.check("grant.create")?;
    let user = permit
        .user()
        .ok_or_else(|| StoreError::Invalid("grants are held by users".into()))?;
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
    // The branch reads the reason, in the dashboard and in a terminal:
    // nothing in it may hide the rest.
    authority::plain_text("a grant's reason", reason)?;
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
pub async fn revoke_grant(
    store: &Store,
    permit: &Permit,
    grant: &Grant,
) -> Result<bool, StoreError> {
    permit.check("grant.revoke")?;
    let entry = permit
        .entry(grant.id.to_string())
        .tenant(grant.branch_id, &grant.branch_path)
        .detail(format!("grant of {}", grant.username));
    store.revoke_grant(grant.id, permit.actor(), entry).await
}

/// Revokes a device; the caller closes its sockets. The entry names the
/// device by id: its label is for the branch.
pub async fn revoke_device_with(
    store: &Store,
    permit: &Permit,
    device: &Device,
) -> Result<bool, StoreError> {
    permit.check("device.revoke")?;
    let entry = permit
        .entry(device.id.to_string())
        .tenant(device.branch_id, &device.branch_path);
    store.revoke_device(device.id, entry).await
}

/// Revokes a device as the operator (or a test fixture standing in for
/// them, named `by`). False if it was already revoked or does not exist.
pub async fn revoke_device(
    store: &Store,
    device: doorstep_protocol::DeviceId,
    by: &str,
) -> Result<bool, StoreError> {
    let Some(found) = store.device(device).await? else {
        return Ok(false);
    };
    let permit = authorize_operator(store, Action::RevokeDevice { device: &found }).await?;
    permit.check("device.revoke")?;
    let entry = AuditEntry::new(by, "device.revoke", device.to_string())
        .tenant(found.branch_id, &found.branch_path);
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
