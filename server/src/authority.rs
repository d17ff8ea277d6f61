//! The authority rule, enforced here and only here:
//!
//! > An upper-level person reaches a branch's names only through a
//! > drill-down grant that the branch sees, that expires, and that its own
//! > holder cannot hide, disable the witnesses of, or approve for themselves.
//!
//! Every administrative action, whether from the JSON API or the operator's
//! command line, is an [`Action`]. [`authorize`] decides whether a
//! [`Caller`] may do it and, for actions that produce a credential (an
//! enrollment code, an activation code), who receives it. The functions in
//! [`crate::admin`] that change anything take the [`Permit`] it returns,
//! which nothing else can make: an endpoint that forgets to ask does not
//! compile.
//!
//! What follows from the rule:
//! - **Credentials go to the branch, never to whoever asked from above.** An
//!   upper level's enrollment code or branch-secretary invitation is a
//!   request; the code is made when the branch's secretary (or the operator,
//!   for a branch without one) approves it, and shown to the approver only.
//! - **Witnesses stay.** Through the API nobody disables or enables a user
//!   who witnesses their access to names: anyone who reads the audit log (a
//!   district auditor, a branch secretary) and admins at the caller's level
//!   or above (who see the grants). Only the operator, outside the chain
//!   being audited, may. Every attempt is recorded with the target's tenant.
//! - **Nobody approves for themselves.** Only the branch's own secretary (or
//!   the operator) decides what enters the branch.
//! - **Refusals are recorded** with the tenant they concern, so the branch
//!   and the district's auditors see the attempt.

use doorstep_protocol::TenantId;
use serde::Serialize;

use crate::store::{
    AuditEntry, Device, EnrollmentCode, Grant, Invitation, Store, StoreError, Tenant, User,
};
use crate::tenancy::{Role, TenantPath};

/// Who asks.
#[derive(Clone, Copy, Debug)]
pub enum Caller<'a> {
    /// The operator's command line on the server's machine: outside the
    /// chain of offices being audited, trusted with everything, audited as
    /// [`crate::store::audit::OPERATOR`].
    Operator,
    /// A logged-in user of the API.
    User(&'a User),
}

impl Caller<'_> {
    /// The name audit entries record.
    pub fn name(&self) -> &str {
        match self {
            Caller::Operator => crate::store::audit::OPERATOR,
            Caller::User(user) => &user.username,
        }
    }
}

/// An administrative action, with what it acts on.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// A sub-district or branch under `parent` (districts: the operator only).
    CreateTenant {
        parent: Option<&'a Tenant>,
    },
    /// Invite a user with `role` to `tenant`.
    InviteUser {
        tenant: &'a Tenant,
        role: Role,
    },
    DecideInvitation {
        invitation: &'a Invitation,
        approve: bool,
    },
    IssueEnrollmentCode {
        branch: &'a Tenant,
    },
    DecideEnrollmentRequest {
        code: &'a EnrollmentCode,
        approve: bool,
    },
    SetUserDisabled {
        target: &'a User,
        disable: bool,
    },
    OpenGrant {
        branch: &'a Tenant,
    },
    RevokeGrant {
        grant: &'a Grant,
    },
    RevokeDevice {
        device: &'a Device,
    },
    /// Users, devices, invitations, enrollment codes of a subtree (no names).
    ListAdministration {
        scope: &'a TenantPath,
    },
    ListGrants {
        branch: &'a Tenant,
    },
    ReadAudit {
        scope: &'a TenantPath,
    },
}

impl Action<'_> {
    /// The dotted verb audit entries use for it.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::CreateTenant { .. } => "tenant.create",
            Action::InviteUser { .. } => "user.invite",
            Action::DecideInvitation { approve: true, .. } => "invitation.approve",
            Action::DecideInvitation { approve: false, .. } => "invitation.deny",
            Action::IssueEnrollmentCode { .. } => "enrollment_code.create",
            Action::DecideEnrollmentRequest { approve: true, .. } => "enrollment_request.approve",
            Action::DecideEnrollmentRequest { approve: false, .. } => "enrollment_request.deny",
            Action::SetUserDisabled { disable: true, .. } => "user.disable",
            Action::SetUserDisabled { disable: false, .. } => "user.enable",
            Action::OpenGrant { .. } => "grant.create",
            Action::RevokeGrant { .. } => "grant.revoke",
            Action::RevokeDevice { .. } => "device.revoke",
            Action::ListAdministration { .. } => "administration.list",
            Action::ListGrants { .. } => "grants.list",
            Action::ReadAudit { .. } => "audit.read",
        }
    }

    /// The tenant the action concerns (whose witnesses see it, and whose
    /// subtree the caller must hold), and the subject its audit entry names.
    fn concerns(&self) -> Option<(String, TenantId, &TenantPath)> {
        match *self {
            Action::CreateTenant { parent } => parent.map(|p| (p.id.to_string(), p.id, &p.path)),
            Action::InviteUser { tenant, .. }
            | Action::IssueEnrollmentCode { branch: tenant }
            | Action::OpenGrant { branch: tenant }
            | Action::ListGrants { branch: tenant } => {
                Some((tenant.id.to_string(), tenant.id, &tenant.path))
            }
            Action::DecideInvitation { invitation: i, .. } => {
                Some((i.username.clone(), i.tenant_id, &i.tenant_path))
            }
            Action::DecideEnrollmentRequest { code, .. } => {
                Some((code.id.to_string(), code.branch_id, &code.branch_path))
            }
            Action::SetUserDisabled { target, .. } => Some((
                target.username.clone(),
                target.tenant_id,
                &target.tenant_path,
            )),
            Action::RevokeGrant { grant } => {
                Some((grant.id.to_string(), grant.branch_id, &grant.branch_path))
            }
            Action::RevokeDevice { device } => {
                Some((device.id.to_string(), device.branch_id, &device.branch_path))
            }
            Action::ListAdministration { .. } | Action::ReadAudit { .. } => None,
        }
    }

    /// Whether a refusal of it is worth an audit entry: attempts to change
    /// something are; reads of listings without names are not.
    fn records_refusal(&self) -> bool {
        !matches!(
            self,
            Action::ListAdministration { .. }
                | Action::ListGrants { .. }
                | Action::ReadAudit { .. }
        )
    }
}

/// Who receives the one-time credential an action produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// The action produces none.
    None,
    /// The caller, at once: the branch's own secretary for their branch,
    /// the operator, or an invitation that gives no names.
    ToCaller,
    /// Nobody yet: it is a request, and the code is made when the branch's
    /// secretary (or the operator) approves, and shown to the approver.
    ToApprover,
}

/// Leave to do one action, from [`authorize`] only.
#[derive(Debug)]
pub struct Permit {
    verb: &'static str,
    actor: String,
    user: Option<User>,
    credential: Credential,
}

impl Permit {
    /// The name the action's audit entry records.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The logged-in user it was given to (`None`: the operator).
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }

    pub fn credential(&self) -> Credential {
        self.credential
    }

    /// An audit entry by the permit's holder.
    pub fn entry(&self, subject: impl Into<String>) -> AuditEntry {
        AuditEntry::new(self.actor.clone(), self.verb, subject)
    }

    /// Refuses a permit given for another action: a permit to revoke a
    /// device is no permit to disable a user.
    pub fn check(&self, verb: &'static str) -> Result<(), StoreError> {
        if self.verb == verb {
            Ok(())
        } else {
            Err(StoreError::WrongPermit {
                given: self.verb,
                wanted: verb,
            })
        }
    }
}

/// Why an action is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Outside the caller's subtree: answered exactly like something that
    /// does not exist.
    #[error("not found")]
    OutOfScope,
    #[error("you cannot disable or enable yourself")]
    Yourself,
    #[error("{0}")]
    Refused(&'static str),
}

const ONLY_THE_BRANCH_DECIDES: &str = "only the branch's secretary decides";
const WITNESS: &str = "this user witnesses your access to names (reads the audit log or sees the grants): only the operator may disable or enable them (doorstep user disable/enable)";

/// Whether `target` witnesses what `caller` does with names: they read the
/// audit log, or they are an admin at the caller's level or above and so see
/// the branches' grants.
pub fn witnesses(target: &User, caller: &User) -> bool {
    target.role.reads_audit()
        || (target.role.is_upper_admin() && target.role.level_rank() <= caller.role.level_rank())
}

/// Whether `user` is the secretary of `branch`: who sees its names and
/// device labels, issues its codes at once and decides what enters it.
pub fn keeps(user: &User, branch: &Tenant) -> bool {
    keeps_id(user, branch.id)
}

fn keeps_id(user: &User, branch: doorstep_protocol::TenantId) -> bool {
    user.role.keeps_branch() && user.tenant_id == branch
}

/// Whether `user` may see a device's label (by convention a volunteer's
/// name: "Li Na's phone"): the branch's own secretary only. Upper levels see
/// device ids.
pub fn sees_device_labels(user: &User, branch: doorstep_protocol::TenantId) -> bool {
    keeps_id(user, branch)
}

/// The rule itself, without side effects.
pub fn decide(caller: Caller<'_>, action: &Action<'_>) -> Result<Credential, Denied> {
    let user = match caller {
        // The operator is outside the chain; credentials they make are
        // theirs to hand over.
        Caller::Operator => {
            return Ok(match action {
                Action::InviteUser { .. }
                | Action::IssueEnrollmentCode { .. }
                | Action::DecideInvitation { approve: true, .. }
                | Action::DecideEnrollmentRequest { approve: true, .. } => Credential::ToCaller,
                _ => Credential::None,
            });
        }
        Caller::User(user) => user,
    };
    if let Some((_, _, path)) = action.concerns()
        && !user.tenant_path.contains(path)
    {
        return Err(Denied::OutOfScope);
    }
    let administers = || {
        if user.role.administers() {
            Ok(())
        } else {
            Err(Denied::Refused("this role administers nothing"))
        }
    };
    match *action {
        Action::CreateTenant { parent } => {
            administers()?;
            if parent.is_none() {
                return Err(Denied::Refused("districts are created by the operator"));
            }
            if user.role.keeps_branch() {
                return Err(Denied::Refused("a branch has no tenants below it"));
            }
            Ok(Credential::None)
        }
        Action::InviteUser { tenant, role } => {
            administers()?;
            if !user.role.may_grant(role) {
                return Err(Denied::Refused("only roles below your own"));
            }
            // A secretary sees the branch's names: invited from above, the
            // branch decides and the activation code goes to the approver.
            if role.keeps_branch() && !keeps(user, tenant) {
                Ok(Credential::ToApprover)
            } else {
                Ok(Credential::ToCaller)
            }
        }
        Action::DecideInvitation {
            invitation,
            approve,
        } => {
            if !keeps_id(user, invitation.tenant_id) {
                return Err(Denied::Refused(ONLY_THE_BRANCH_DECIDES));
            }
            Ok(if approve {
                Credential::ToCaller
            } else {
                Credential::None
            })
        }
        Action::IssueEnrollmentCode { branch } => {
            if keeps(user, branch) {
                Ok(Credential::ToCaller)
            } else if user.role.is_upper_admin() {
                Ok(Credential::ToApprover)
            } else {
                Err(Denied::Refused(
                    "only the branch's secretary, or an admin above it, asks for a device",
                ))
            }
        }
        Action::DecideEnrollmentRequest { code, approve } => {
            if !keeps_id(user, code.branch_id) {
                return Err(Denied::Refused(ONLY_THE_BRANCH_DECIDES));
            }
            Ok(if approve {
                Credential::ToCaller
            } else {
                Credential::None
            })
        }
        Action::SetUserDisabled { target, .. } => {
            administers()?;
            if !user.role.may_grant(target.role) {
                return Err(Denied::Refused("only roles below your own"));
            }
            if target.id == user.id {
                return Err(Denied::Yourself);
            }
            if witnesses(target, user) {
                return Err(Denied::Refused(WITNESS));
            }
            Ok(Credential::None)
        }
        Action::OpenGrant { .. } => {
            if !user.role.is_upper_admin() {
                return Err(Denied::Refused(
                    "drill-down grants are for admins above the branch",
                ));
            }
            Ok(Credential::None)
        }
        Action::RevokeGrant { grant } => {
            // The branch ends a grant on itself; the holder may give it up.
            if keeps_id(user, grant.branch_id) || user.id == grant.user_id {
                Ok(Credential::None)
            } else {
                Err(Denied::Refused(
                    "only the branch's secretary or the grant's holder ends it",
                ))
            }
        }
        Action::RevokeDevice { .. } => {
            administers()?;
            Ok(Credential::None)
        }
        Action::ListAdministration { scope } => {
            administers()?;
            if !user.tenant_path.contains(scope) {
                return Err(Denied::OutOfScope);
            }
            Ok(Credential::None)
        }
        Action::ListGrants { .. } => {
            if user.role == Role::Volunteer {
                return Err(Denied::Refused("volunteers see no grants"));
            }
            Ok(Credential::None)
        }
        Action::ReadAudit { scope } => {
            if !user.role.reads_audit() {
                return Err(Denied::Refused("this role does not read the audit log"));
            }
            if !user.tenant_path.contains(scope) {
                return Err(Denied::OutOfScope);
            }
            Ok(Credential::None)
        }
    }
}

/// Decides, and records a refused attempt to change something with the
/// tenant it concerns (an attempt outside the caller's scope is answered
/// like a missing thing and not recorded there: the caller cannot see it).
/// With `refusals`, a caller repeating the same refused attempt writes one
/// row per interval, the next one saying how many were left out (the
/// budget on audit rows; the first attempt is always seen).
pub async fn authorize(
    store: &Store,
    refusals: Option<&crate::budget::RefusalLog>,
    caller: Caller<'_>,
    action: Action<'_>,
) -> Result<Result<Permit, Denied>, StoreError> {
    match decide(caller, &action) {
        Ok(credential) => Ok(Ok(Permit {
            verb: action.verb(),
            actor: caller.name().to_owned(),
            user: match caller {
                Caller::Operator => None,
                Caller::User(user) => Some(user.clone()),
            },
            credential,
        })),
        Err(denied) => {
            if denied != Denied::OutOfScope
                && action.records_refusal()
                && let Some((subject, tenant, path)) = action.concerns()
            {
                let detail = match action {
                    Action::InviteUser { role, .. } => format!("{}: {denied}", role.as_str()),
                    _ => denied.to_string(),
                };
                let detail = match refusals {
                    Some(log) => log
                        .verdict(
                            action.verb(),
                            &format!("{}\u{0}{subject}", caller.name()),
                            crate::store::now_ms(),
                        )
                        .detail(detail),
                    None => Some(detail),
                };
                if let Some(detail) = detail {
                    store
                        .record_audit(
                            AuditEntry::new(caller.name(), action.verb(), subject)
                                .tenant(tenant, path)
                                .detail(detail)
                                .refused(),
                        )
                        .await?;
                }
            }
            Ok(Err(denied))
        }
    }
}

/// Why someone may read a branch's names now.
#[derive(Clone, Debug)]
pub enum NamesGround {
    /// The branch's own secretary.
    OwnBranch,
    /// An admin above it, under this grant in force.
    Grant(Grant),
}

/// Whether `user` may read `branch`'s names now: its secretary, or an admin
/// above it holding a grant in force (a grant ends at its expiry, when the
/// branch or its holder revokes it, and when its holder is disabled).
/// `Err` says why not, for the refusal's audit entry.
pub async fn names_ground(
    store: &Store,
    user: &User,
    branch: &Tenant,
) -> Result<Result<NamesGround, &'static str>, StoreError> {
    if !user.tenant_path.contains(&branch.path) {
        return Ok(Err("outside the caller's scope"));
    }
    if keeps(user, branch) {
        return Ok(Ok(NamesGround::OwnBranch));
    }
    if !user.role.is_upper_admin() {
        return Ok(Err("this role reads no names"));
    }
    Ok(match store.active_grant(user.id, branch.id).await? {
        Some(grant) => Ok(NamesGround::Grant(grant)),
        None => Err("no drill-down grant in force"),
    })
}

/// Free text a person types that others read (a grant's reason, a device's
/// label, a tenant's name, a username): refused if it holds characters that
/// could hide or rewrite what a reader sees (control characters, ANSI
/// escapes, bidirectional overrides). Audit output is escaped as well
/// ([`escape_for_terminal`]), for rows written before this check.
pub fn plain_text(what: &str, text: &str) -> Result<(), StoreError> {
    match text.chars().find(|c| hides_text(*c)) {
        Some(c) => Err(StoreError::Invalid(format!(
            "{what} may not contain control or direction characters (found U+{:04X})",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

/// Characters that change how surrounding text shows rather than showing
/// themselves: C0 and C1 controls (ESC starts ANSI sequences, CR rewrites a
/// line), DEL, bidirectional marks, embeddings, overrides and isolates, and
/// the line and paragraph separators.
fn hides_text(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `text` as a terminal may show it: every character of [`hides_text`] as
/// `\u{..}` (and `\` as `\\`, so an escape cannot be forged), the rest as is.
pub fn escape_for_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c == '\\' || hides_text(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if hides_text(c) {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::Level;

    fn tenant(path: &TenantPath, level: Level) -> Tenant {
        let id: TenantId = path
            .as_str()
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("a path ends with an id");
        Tenant {
            id,
            parent_id: None,
            level,
            name: "t".into(),
            path: path.clone(),
        }
    }

    fn user(name: &str, role: Role, at: &Tenant) -> User {
        User {
            id: uuid::Uuid::now_v7(),
            username: name.into(),
            role,
            tenant_id: at.id,
            tenant_path: at.path.clone(),
        }
    }

    #[test]
    fn nobody_in_the_chain_disables_a_witness_of_their_access() {
        let d = TenantPath::root(TenantId::new_v7());
        let s = d.child(TenantId::new_v7());
        let b = s.child(TenantId::new_v7());
        let (d, s, b) = (
            tenant(&d, Level::District),
            tenant(&s, Level::SubDistrict),
            tenant(&b, Level::Branch),
        );
        let admin = user("admin", Role::DistrictAdmin, &d);
        let peer = user("peer", Role::DistrictAdmin, &d);
        let auditor = user("auditor", Role::DistrictAuditor, &d);
        let sub = user("sub", Role::SubDistrictAdmin, &s);
        let secretary = user("sec", Role::BranchSecretary, &b);
        let volunteer = user("vol", Role::Volunteer, &b);
        let disable = |caller: &User, target: &User| {
            decide(
                Caller::User(caller),
                &Action::SetUserDisabled {
                    target,
                    disable: true,
                },
            )
        };
        for target in [&peer, &auditor, &secretary] {
            assert!(
                matches!(disable(&admin, target), Err(Denied::Refused(_))),
                "{}",
                target.username
            );
        }
        assert!(matches!(disable(&sub, &secretary), Err(Denied::Refused(_))));
        assert_eq!(disable(&admin, &sub), Ok(Credential::None));
        assert_eq!(disable(&secretary, &volunteer), Ok(Credential::None));
        assert_eq!(disable(&admin, &admin), Err(Denied::Yourself));
        assert_eq!(
            decide(
                Caller::Operator,
                &Action::SetUserDisabled {
                    target: &auditor,
                    disable: true
                }
            ),
            Ok(Credential::None)
        );
    }

    #[test]
    fn credentials_go_to_the_branch_never_to_whoever_asked_from_above() {
        let d = TenantPath::root(TenantId::new_v7());
        let s = d.child(TenantId::new_v7());
        let b = s.child(TenantId::new_v7());
        let (d, s, b) = (
            tenant(&d, Level::District),
            tenant(&s, Level::SubDistrict),
            tenant(&b, Level::Branch),
        );
        let admin = user("admin", Role::DistrictAdmin, &d);
        let sub = user("sub", Role::SubDistrictAdmin, &s);
        let secretary = user("sec", Role::BranchSecretary, &b);
        let auditor = user("auditor", Role::DistrictAuditor, &d);
        let issue = Action::IssueEnrollmentCode { branch: &b };
        let invite = |role| Action::InviteUser { tenant: &b, role };
        for upper in [&admin, &sub] {
            assert_eq!(
                decide(Caller::User(upper), &issue),
                Ok(Credential::ToApprover)
            );
            assert_eq!(
                decide(Caller::User(upper), &invite(Role::BranchSecretary)),
                Ok(Credential::ToApprover)
            );
            // A volunteer's account reads no names: the inviter may hold it.
            assert_eq!(
                decide(Caller::User(upper), &invite(Role::Volunteer)),
                Ok(Credential::ToCaller)
            );
        }
        assert_eq!(
            decide(Caller::User(&secretary), &issue),
            Ok(Credential::ToCaller)
        );
        assert!(decide(Caller::User(&auditor), &issue).is_err());
        assert_eq!(decide(Caller::Operator, &issue), Ok(Credential::ToCaller));
        let permit = Permit {
            verb: "device.revoke",
            actor: "x".into(),
            user: None,
            credential: Credential::None,
        };
        assert!(permit.check("user.disable").is_err());
    }

    #[test]
    fn text_that_hides_text_is_refused_and_escaped() {
        for bad in [
            "reason\u{1b}[2K",
            "a\rb",
            "\u{202e}evil",
            "x\u{85}y",
            "x\u{2066}y",
        ] {
            assert!(plain_text("a reason", bad).is_err(), "{bad:?}");
            let shown = escape_for_terminal(bad);
            assert!(!shown.chars().any(hides_text), "{shown:?}");
        }
        assert!(plain_text("a label", "李娜的手机 (Li Na's phone)").is_ok());
        assert_eq!(escape_for_terminal("a\\u{1b}"), "a\\\\u{1b}");
        assert_eq!(escape_for_terminal("\u{1b}[31m"), "\\u{001b}[31m");
    }
}
