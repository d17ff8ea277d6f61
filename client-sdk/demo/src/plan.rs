//! What the demo generates: the report's figures for the district's year,
//! split exactly across the branches.

use serde::Serialize;

/// District-wide targets. At scale 1 these are the Yanshan report's figures.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Plan {
    /// Households visited, one visit each (one member per household).
    pub households: i64,
    /// Cash and goods handed over in those visits, in fen.
    pub aid_fen: i64,
    pub donations_fen: i64,
    pub trainings: i64,
    pub attendance: i64,
    pub placements: i64,
    pub teams: i64,
    pub categories: i64,
    /// Members of the branches in teams.
    pub team_members: i64,
    /// Everyone in teams: members are 20% of them.
    pub team_people: i64,
    /// Members who are team backbones: 70% of the members in teams.
    pub backbones: i64,
}

impl Plan {
    /// The report: 561 households, 874,000 yuan of aid, 142,000 yuan
    /// donated, 17 trainings with 1,760 attendances, 300 re-employed, 126
    /// teams in 56 categories with 700 members (20% of all team members,
    /// 70% of them backbones).
    pub const REPORT: Plan = Plan {
        households: 561,
        aid_fen: 87_400_000,
        donations_fen: 14_200_000,
        trainings: 17,
        attendance: 1_760,
        placements: 300,
        teams: 126,
        categories: 56,
        team_members: 700,
        team_people: 3_500,
        backbones: 490,
    };

    /// The report divided by `divisor` (for a quick demo and tests), keeping
    /// the shares: members 20% of team people, backbones 70% of members.
    pub fn scaled(divisor: i64) -> Plan {
        let r = Plan::REPORT;
        let d = divisor.max(1);
        let team_members = (r.team_members / d / 10).max(1) * 10;
        Plan {
            households: (r.households / d).max(1),
            aid_fen: r.aid_fen / d,
            donations_fen: r.donations_fen / d,
            trainings: (r.trainings / d).max(1),
            attendance: r.attendance / d,
            placements: (r.placements / d).max(1),
            teams: (r.teams / d).max(1),
            categories: (r.categories / d).clamp(1, (r.teams / d).max(1)),
            team_members,
            team_people: team_members * 5,
            backbones: team_members * 7 / 10,
        }
    }
}

/// Splits `total` into `parts` whole shares that add up to it exactly.
pub fn split(total: i64, parts: usize) -> Vec<i64> {
    let parts = parts.max(1) as i64;
    (0..parts)
        .map(|i| total / parts + i64::from(i < total % parts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_add_up_exactly() {
        assert_eq!(split(87_400_000, 561).iter().sum::<i64>(), 87_400_000);
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 5), vec![1, 1, 0, 0, 0]);
    }

    #[test]
    fn the_report_keeps_its_shares_at_every_scale() {
        for plan in [Plan::REPORT, Plan::scaled(7), Plan::scaled(20)] {
            assert_eq!(plan.team_members * 5, plan.team_people, "{plan:?}");
            assert_eq!(plan.backbones * 10, plan.team_members * 7, "{plan:?}");
            assert!(plan.categories <= plan.teams);
        }
    }
}
