//! The organisation tree and who may see which part of it.
//!
//! Tenants form district > sub-district > branch. Each stores a materialized
//! path of ids; a scope contains a tenant when the tenant's path equals the
//! scope's or continues it at a segment boundary, so `/d1/s1` never sees
//! `/d1/s10`.

use std::fmt;
use std::str::FromStr;

use doorstep_protocol::TenantId;
use serde::{Deserialize, Serialize};

/// A level of the organisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum Level {
    District,
    SubDistrict,
    Branch,
}

impl Level {
    pub fn as_str(&self) -> &'static str {
        match self {
            Level::District => "district",
            Level::SubDistrict => "sub_district",
            Level::Branch => "branch",
        }
    }

    /// The level a tenant of this level must sit under.
    pub fn parent(&self) -> Option<Level> {
        match self {
            Level::District => None,
            Level::SubDistrict => Some(Level::District),
            Level::Branch => Some(Level::SubDistrict),
        }
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "district" => Ok(Level::District),
            "sub_district" => Ok(Level::SubDistrict),
            "branch" => Ok(Level::Branch),
            other => Err(format!("unknown level {other:?}")),
        }
    }
}

/// What a user may do, at the tenant the user belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum Role {
    DistrictAdmin,
    /// Reads the district's audit log; administers nothing, sees no names.
    DistrictAuditor,
    SubDistrictAdmin,
    BranchSecretary,
    Volunteer,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::DistrictAdmin => "district_admin",
            Role::DistrictAuditor => "district_auditor",
            Role::SubDistrictAdmin => "sub_district_admin",
            Role::BranchSecretary => "branch_secretary",
            Role::Volunteer => "volunteer",
        }
    }

    /// The level of tenant this role belongs at.
    pub fn level(&self) -> Level {
        match self {
            Role::DistrictAdmin | Role::DistrictAuditor => Level::District,
            Role::SubDistrictAdmin => Level::SubDistrict,
            Role::BranchSecretary | Role::Volunteer => Level::Branch,
        }
    }

    /// Whether this role may manage tenants, users, codes and devices in
    /// its subtree. Volunteers only use devices; auditors only read the log.
    pub fn administers(&self) -> bool {
        !matches!(self, Role::Volunteer | Role::DistrictAuditor)
    }

    /// Whether this role sees its own branch's names: the branch secretary,
    /// who also issues its enrollment codes and approves what upper levels
    /// ask of the branch.
    pub fn keeps_branch(&self) -> bool {
        *self == Role::BranchSecretary
    }

    /// Whether this role administers from above the branches: it sees
    /// figures, and reaches names only through a drill-down grant.
    pub fn is_upper_admin(&self) -> bool {
        matches!(self, Role::DistrictAdmin | Role::SubDistrictAdmin)
    }

    /// Whether this role reads the audit log (of its branch, or of its
    /// district's subtree).
    pub fn reads_audit(&self) -> bool {
        matches!(self, Role::BranchSecretary | Role::DistrictAuditor)
    }

    /// Whether a user with this role may create a user with `other`.
    /// Only roles below one's own, and district admins their peers (a
    /// district needs more than one admin): a secretary adds volunteers.
    pub fn may_grant(&self, other: Role) -> bool {
        self.administers() && other.rank() > self.rank()
            || (*self == Role::DistrictAdmin && other == Role::DistrictAdmin)
    }

    /// How high the role's level sits: 0 for the district, 1 for a
    /// sub-district, 2 for a branch.
    pub fn level_rank(&self) -> u8 {
        match self.level() {
            Level::District => 0,
            Level::SubDistrict => 1,
            Level::Branch => 2,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Role::DistrictAdmin => 0,
            Role::DistrictAuditor | Role::SubDistrictAdmin => 1,
            Role::BranchSecretary => 2,
            Role::Volunteer => 3,
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "district_admin" => Ok(Role::DistrictAdmin),
            "district_auditor" => Ok(Role::DistrictAuditor),
            "sub_district_admin" => Ok(Role::SubDistrictAdmin),
            "branch_secretary" => Ok(Role::BranchSecretary),
            "volunteer" => Ok(Role::Volunteer),
            other => Err(format!("unknown role {other:?}")),
        }
    }
}

/// A tenant's materialized path: `/<district>/<sub-district>/<branch>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TenantPath(String);

impl TenantPath {
    pub fn root(id: TenantId) -> Self {
        TenantPath(format!("/{id}"))
    }

    pub fn child(&self, id: TenantId) -> Self {
        TenantPath(format!("{}/{id}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` is this tenant or below it, comparing whole segments.
    pub fn contains(&self, other: &TenantPath) -> bool {
        other.0 == self.0
            || (other.0.starts_with(&self.0) && other.0.as_bytes().get(self.0.len()) == Some(&b'/'))
    }

    /// The `like` pattern matching strict descendants, for SQL. Ids are
    /// UUIDs, which contain no `%` or `_` wildcards.
    pub fn descendants_pattern(&self) -> String {
        format!("{}/%", self.0)
    }

    /// The bounds of strict descendants' paths, `[low, high)`, for SQL on
    /// a table under row-level security: `like` is not leakproof, so
    /// PostgreSQL would not use an index for it there; `>=` and `<` are.
    /// With bytewise collation (both backends), `0` follows `/`.
    pub fn descendants_bounds(&self) -> (String, String) {
        (format!("{}/", self.0), format!("{}0", self.0))
    }

    pub fn depth(&self) -> usize {
        self.0.matches('/').count()
    }
}

impl fmt::Display for TenantPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TenantPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let segments: Vec<&str> = s.split('/').collect();
        if segments.len() < 2 || segments.len() > 4 || !segments[0].is_empty() {
            return Err(format!("not a tenant path: {s:?}"));
        }
        for segment in &segments[1..] {
            segment
                .parse::<TenantId>()
                .map_err(|_| format!("not a tenant path: {s:?}"))?;
        }
        Ok(TenantPath(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn id(n: u128) -> TenantId {
        TenantId::from_uuid(Uuid::from_u128(n))
    }

    #[test]
    fn scope_compares_whole_segments() {
        let d = TenantPath::root(id(1));
        let s1 = d.child(id(0x1));
        let s10 = d.child(id(0x10));
        let b = s1.child(id(0x100));
        assert!(d.contains(&s1) && d.contains(&b) && s1.contains(&b) && s1.contains(&s1));
        assert!(!s1.contains(&d));
        assert!(!s1.contains(&s10) && !s10.contains(&b));
        // A path that merely starts with the scope's text is not inside it.
        let lookalike = TenantPath(format!("{}0", s1.as_str()));
        assert!(!s1.contains(&lookalike));
    }

    #[test]
    fn paths_parse_strictly() {
        let b = TenantPath::root(id(1)).child(id(2)).child(id(3));
        assert_eq!(b.as_str().parse::<TenantPath>(), Ok(b.clone()));
        assert_eq!(b.depth(), 3);
        for bad in ["", "/", "x/y", "/not-a-uuid", &format!("{}/{}", b, id(4))] {
            assert!(bad.parse::<TenantPath>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles_grant_only_below_themselves() {
        assert!(Role::DistrictAdmin.may_grant(Role::SubDistrictAdmin));
        assert!(Role::BranchSecretary.may_grant(Role::Volunteer));
        assert!(!Role::BranchSecretary.may_grant(Role::BranchSecretary));
        assert!(!Role::SubDistrictAdmin.may_grant(Role::DistrictAdmin));
        assert!(!Role::Volunteer.may_grant(Role::Volunteer));
        assert!(Role::DistrictAdmin.may_grant(Role::DistrictAuditor));
        assert!(!Role::SubDistrictAdmin.may_grant(Role::DistrictAuditor));
        assert!(!Role::DistrictAuditor.may_grant(Role::Volunteer));
    }

    #[test]
    fn roles_parse_as_they_print() {
        for role in [
            Role::DistrictAdmin,
            Role::DistrictAuditor,
            Role::SubDistrictAdmin,
            Role::BranchSecretary,
            Role::Volunteer,
        ] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(
                serde_json::to_value(role).expect("json"),
                serde_json::json!(role.as_str())
            );
        }
        assert_eq!(Role::DistrictAuditor.level(), Level::District);
        assert!(!Role::DistrictAuditor.administers());
        assert!(Role::DistrictAuditor.reads_audit() && Role::BranchSecretary.reads_audit());
        assert!(!Role::DistrictAdmin.reads_audit() && !Role::SubDistrictAdmin.reads_audit());
    }
}
