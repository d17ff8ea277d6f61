//! Rollups: the figures an office sees for its subtree and a period.
//!
//! Every figure is SQL over the projection rows of the branches under a
//! tenant, grouped by branch and then folded into the tenant's children (a
//! district sees its sub-districts, a sub-district its branches). Nothing
//! here returns a person's name, address or phone: only counts and sums.

pub mod calendar;
pub mod csv;
mod period;

use std::collections::BTreeMap;

use doorstep_protocol::{Date, TenantId};
use serde::Serialize;
use sqlx::Row;

pub use calendar::Holiday;
pub use period::{
    NamedPeriod, ORGANISATION_UTC_OFFSET_HOURS, Period, PeriodError, PeriodQuery, PeriodRef,
    organisation_today,
};

use crate::store::{Store, StoreError, Tenant, Tx};
use crate::tenancy::Level;

/// One row of the rollup table: a child tenant (or the total).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Figures {
    pub tenant_id: String,
    pub tenant: String,
    pub level: String,
    pub visits: i64,
    pub households_visited: i64,
    pub aid_cash_fen: i64,
    pub aid_goods_fen: i64,
    pub aid_total_fen: i64,
    /// Hardship entries open at the end of the period.
    pub hardship_registered: i64,
    pub hardship_new: i64,
    pub hardship_closed: i64,
    /// Members with a hardship entry open at some time in the period.
    pub hardship_members: i64,
    /// Of those, how many were visited in the period.
    pub hardship_members_visited: i64,
    pub hardship_visited_pct: f64,
    /// Follow-ups due before the end of the period and not done.
    pub follow_ups_overdue: i64,
    pub migrants: i64,
    pub migrants_contacted_30d: i64,
    pub migrants_contacted_60d: i64,
    pub migrants_contacted_90d: i64,
    pub trainings: i64,
    pub training_attendance: i64,
    pub placements: i64,
    pub fund_donations_fen: i64,
    pub fund_payments_fen: i64,
    pub teams: i64,
    pub team_categories: i64,
    /// Everyone in teams: members and residents who are not members.
    pub team_people: i64,
    pub team_members: i64,
    pub team_member_pct: f64,
    pub team_backbone_members: i64,
    pub team_backbone_pct: f64,
    pub volunteer_hours: f64,
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        self.visits += o.visits;
        self.households_visited += o.households_visited;
        self.aid_cash_fen += o.aid_cash_fen;
        self.aid_goods_fen += o.aid_goods_fen;
        self.hardship_registered += o.hardship_registered;
        self.hardship_new += o.hardship_new;
        self.hardship_closed += o.hardship_closed;
        self.hardship_members += o.hardship_members;
        self.hardship_members_visited += o.hardship_members_visited;
        self.follow_ups_overdue += o.follow_ups_overdue;
        self.migrants += o.migrants;
        self.migrants_contacted_30d += o.migrants_contacted_30d;
        self.migrants_contacted_60d += o.migrants_contacted_60d;
        self.migrants_contacted_90d += o.migrants_contacted_90d;
        self.trainings += o.trainings;
        self.training_attendance += o.training_attendance;
        self.placements += o.placements;
        self.fund_donations_fen += o.fund_donations_fen;
        self.fund_payments_fen += o.fund_payments_fen;
        self.teams += o.teams;
        self.team_people += o.team_people;
        self.team_members += o.team_members;
        self.team_backbone_members += o.team_backbone_members;
        self.volunteer_hours += o.volunteer_hours;
    }

    /// Totals and shares that are not sums of the branches' values.
    fn finish(&mut self, categories: i64) {
        let pct = |part: i64, whole: i64| {
            if whole == 0 {
                0.0
            } else {
                (part as f64 * 1000.0 / whole as f64).round() / 10.0
            }
        };
        self.aid_total_fen = self.aid_cash_fen + self.aid_goods_fen;
        self.hardship_visited_pct = pct(self.hardship_members_visited, self.hardship_members);
        self.team_member_pct = pct(self.team_members, self.team_people);
        self.team_backbone_pct = pct(self.team_backbone_members, self.team_members);
        self.team_categories = categories;
        self.volunteer_hours = (self.volunteer_hours * 10.0).round() / 10.0;
    }
}

/// The rollup table for a tenant and a period.
#[derive(Debug, Clone, Serialize)]
pub struct Rollup {
    pub tenant_id: String,
    pub tenant: String,
    pub period: Period,
    pub rows: Vec<Figures>,
    pub total: Figures,
}

/// A breakdown row: one group, one category, its counts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Breakdown {
    pub tenant_id: String,
    pub tenant: String,
    pub category: String,
    pub count: i64,
    pub amount: i64,
}

/// Offline-data health of a group.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Health {
    pub tenant_id: String,
    pub tenant: String,
    pub devices: i64,
    /// Devices enrolled more than `stale_days` ago and not synced for
    /// `stale_days` (or never): a phone enrolled this morning is not one
    /// that fell silent.
    pub devices_stale: i64,
    pub open_conflicts: i64,
    pub invalid_records: i64,
    /// Visits dated after today (the organisation's day, UTC+8): a phone's
    /// wrong date, or a visit recorded ahead. They count in the period of
    /// their date, as every visit does; this says they are there.
    pub future_visits: i64,
}

/// Which group (child of the target) each branch below it belongs to.
struct Groups {
    order: Vec<Tenant>,
    of_branch: BTreeMap<String, String>,
}

async fn groups(store: &Store, target: &Tenant) -> Result<Groups, StoreError> {
    let below = store.tenants_within(&target.path).await?;
    let order: Vec<Tenant> = if target.level == Level::Branch {
        vec![target.clone()]
    } else {
        below
            .iter()
            .filter(|t| t.parent_id == Some(target.id))
            .cloned()
            .collect()
    };
    let depth = target.path.depth();
    let mut of_branch = BTreeMap::new();
    for t in below.iter().filter(|t| t.level == Level::Branch) {
        let group = if target.level == Level::Branch {
            target.id.to_string()
        } else {
            // Path segments are ids; the group is the one just below the target.
            t.path
                .as_str()
                .split('/')
                .nth(depth + 1)
                .unwrap_or_default()
                .to_owned()
        };
        of_branch.insert(t.id.to_string(), group);
    }
    Ok(Groups { order, of_branch })
}

/// Per-branch values of one query, as (branch id, columns).
async fn per_branch(
    tx: &mut Tx,
    sql: &str,
    target: &Tenant,
    binds: &[String],
) -> Result<Vec<(String, Vec<f64>)>, StoreError> {
    let mut query = sqlx::query(sql)
        .bind(target.path.as_str())
        .bind(target.path.descendants_pattern());
    for b in binds {
        query = query.bind(b);
    }
    let rows = query.fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|r| {
            let branch: String = r.try_get(0)?;
            let values = (1..r.len())
                .map(|i| {
                    r.try_get::<Option<f64>, _>(i)
                        .or_else(|_| r.try_get::<Option<i64>, _>(i).map(|v| v.map(|v| v as f64)))
                        .map(|v| v.unwrap_or(0.0))
                })
                .collect::<Result<Vec<f64>, sqlx::Error>>()?;
            Ok((branch, values))
        })
        .collect()
}

/// Writes one query's per-branch columns into a branch's figures.
type Setter = fn(&mut Figures, &[f64]);

/// Branches under the target, for `in (...)`: bound as path and path/%.
const BRANCHES: &str =
    "select id from tenants where level = 'branch' and (path = $1 or path like $2)";

pub async fn rollup(store: &Store, target: &Tenant, period: Period) -> Result<Rollup, StoreError> {
    let groups = groups(store, target).await?;
    let mut tx = store.begin_read_within(target.id).await?;
    let (from, to) = (period.from.to_string(), period.to.to_string());
    let dates = [from.clone(), to.clone()];
    // Dates are reckoned here, not in SQL: SQLite's `date()` and
    // PostgreSQL's date arithmetic differ, and "today" is then one moment,
    // the organisation's (as in the health panel).
    let today = period::organisation_today(crate::store::now_ms()).as_time();
    let days_before_end = |days: i64| {
        let day = period.to.as_time().checked_sub(time::Duration::days(days));
        Date::from_time(day.unwrap_or(time::Date::MIN)).to_string()
    };
    let overdue_before = [Date::from_time(period.to.as_time().min(today)).to_string()];
    let migrant_windows = [
        to.clone(),
        days_before_end(30),
        days_before_end(60),
        days_before_end(90),
    ];
    // Each query yields per-branch columns; its setter puts them in place.
    let queries: [(String, &[String], Setter); 10] = [
        (
            format!(
                "select v.branch_id, count(*), count(distinct coalesce(m.household, v.member_id)),
                        cast(sum(v.aid_cash_fen) as bigint), cast(sum(v.aid_goods_fen) as bigint)
                 from visit_rows v left join member_rows m on m.record_id = v.member_id and m.branch_id = v.branch_id
                 where v.branch_id in ({BRANCHES}) and v.date between $3 and $4 group by v.branch_id"
            ),
            &dates,
            |f, v| {
                f.visits = v[0] as i64;
                f.households_visited = v[1] as i64;
                f.aid_cash_fen = v[2] as i64;
                f.aid_goods_fen = v[3] as i64;
            },
        ),
        (
            format!(
                "select branch_id,
                        count(case when opened_on <= $4 and (closed_on is null or closed_on > $4) then 1 end),
                        count(case when opened_on between $3 and $4 then 1 end),
                        count(case when closed_on between $3 and $4 then 1 end)
                 from hardship_rows where branch_id in ({BRANCHES}) group by branch_id"
            ),
            &dates,
            |f, v| {
                f.hardship_registered = v[0] as i64;
                f.hardship_new = v[1] as i64;
                f.hardship_closed = v[2] as i64;
            },
        ),
        (
            format!(
                "select h.branch_id, count(distinct h.member_id),
                        count(distinct case when exists (
                            select 1 from visit_rows v
                            where v.member_id = h.member_id and v.branch_id = h.branch_id and v.date between $3 and $4
                        ) then h.member_id end)
                 from hardship_rows h
                 where h.branch_id in ({BRANCHES}) and h.opened_on <= $4 and (h.closed_on is null or h.closed_on >= $3)
                 group by h.branch_id"
            ),
            &dates,
            |f, v| {
                f.hardship_members = v[0] as i64;
                f.hardship_members_visited = v[1] as i64;
            },
        ),
        (
            format!(
                "select branch_id, count(*) from visit_rows
                 where branch_id in ({BRANCHES}) and follow_up_due is not null and follow_up_done = 0
                   and follow_up_due < $3
                 group by branch_id"
            ),
            &overdue_before,
            |f, v| f.follow_ups_overdue = v[0] as i64,
        ),
        (
            format!(
                "select m.branch_id, count(*),
                        count(case when exists (select 1 from visit_rows v where v.member_id = m.record_id and v.branch_id = m.branch_id
                                    and v.date between $4 and $3) then 1 end),
                        count(case when exists (select 1 from visit_rows v where v.member_id = m.record_id and v.branch_id = m.branch_id
                                    and v.date between $5 and $3) then 1 end),
                        count(case when exists (select 1 from visit_rows v where v.member_id = m.record_id and v.branch_id = m.branch_id
                                    and v.date between $6 and $3) then 1 end)
                 from member_rows m where m.branch_id in ({BRANCHES}) and m.migrant = 1 group by m.branch_id"
            ),
            &migrant_windows,
            |f, v| {
                f.migrants = v[0] as i64;
                f.migrants_contacted_30d = v[1] as i64;
                f.migrants_contacted_60d = v[2] as i64;
                f.migrants_contacted_90d = v[3] as i64;
            },
        ),
        (
            format!(
                "select branch_id, count(*), cast(sum(attendance) as bigint) from training_rows
                 where branch_id in ({BRANCHES}) and date between $3 and $4 group by branch_id"
            ),
            &dates,
            |f, v| {
                f.trainings = v[0] as i64;
                f.training_attendance = v[1] as i64;
            },
        ),
        (
            format!(
                "select branch_id, count(*) from placement_rows
                 where branch_id in ({BRANCHES}) and date between $3 and $4 group by branch_id"
            ),
            &dates,
            |f, v| f.placements = v[0] as i64,
        ),
        (
            format!(
                "select branch_id, cast(sum(case when direction = 'donation' then amount_fen else 0 end) as bigint),
                        cast(sum(case when direction = 'payment' then amount_fen else 0 end) as bigint)
                 from fund_rows where branch_id in ({BRANCHES}) and date between $3 and $4 group by branch_id"
            ),
            &dates,
            |f, v| {
                f.fund_donations_fen = v[0] as i64;
                f.fund_payments_fen = v[1] as i64;
            },
        ),
        (
            format!(
                "select t.branch_id, count(distinct t.record_id), count(p.person_id),
                        count(p.member_id), count(case when p.member_id is not null and p.backbone = 1 then 1 end)
                 from team_rows t left join team_people_rows p on p.document_id = t.document_id and p.team_id = t.record_id
                 where t.branch_id in ({BRANCHES}) group by t.branch_id"
            ),
            &[],
            |f, v| {
                f.teams = v[0] as i64;
                f.team_people = v[1] as i64;
                f.team_members = v[2] as i64;
                f.team_backbone_members = v[3] as i64;
            },
        ),
        (
            format!(
                "select branch_id, cast(sum(minutes) as double precision) / 60 from activity_rows
                 where branch_id in ({BRANCHES}) and date between $3 and $4 group by branch_id"
            ),
            &dates,
            |f, v| f.volunteer_hours = v[0],
        ),
    ];
    let mut per: BTreeMap<String, Figures> = BTreeMap::new();
    for (sql, binds, set) in &queries {
        for (branch, values) in per_branch(&mut tx, sql, target, binds).await? {
            set(per.entry(branch).or_default(), &values);
        }
    }

    // Team categories are distinct across branches, so they are counted per
    // group rather than summed.
    let categories: Vec<(String, String)> = sqlx::query(&format!(
        "select distinct branch_id, category from team_rows where branch_id in ({BRANCHES})"
    ))
    .bind(target.path.as_str())
    .bind(target.path.descendants_pattern())
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;

    let mut rows = Vec::new();
    let mut total = Figures {
        tenant_id: target.id.to_string(),
        tenant: target.name.clone(),
        level: target.level.as_str().to_owned(),
        ..Figures::default()
    };
    for group in &groups.order {
        let id = group.id.to_string();
        let mut figures = Figures {
            tenant_id: id.clone(),
            tenant: group.name.clone(),
            level: group.level.as_str().to_owned(),
            ..Figures::default()
        };
        for (branch, f) in &per {
            if groups.of_branch.get(branch) == Some(&id) {
                figures.add(f);
            }
        }
        let group_categories = categories
            .iter()
            .filter(|(b, _)| groups.of_branch.get(b) == Some(&id))
            .map(|(_, c)| c)
            .collect::<std::collections::BTreeSet<_>>()
            .len() as i64;
        figures.finish(group_categories);
        total.add(&figures);
        rows.push(figures);
    }
    let all_categories = categories
        .iter()
        .map(|(_, c)| c)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as i64;
    total.finish(all_categories);
    Ok(Rollup {
        tenant_id: target.id.to_string(),
        tenant: target.name.clone(),
        period,
        rows,
        total,
    })
}

/// What a breakdown splits by.
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BreakdownKind {
    VisitsByKind,
    HardshipByKind,
    TrainingByLevel,
    TeamsByCategory,
    /// Visits and aid per month of the period (for the charts).
    VisitsByMonth,
}

pub async fn breakdown(
    store: &Store,
    target: &Tenant,
    period: Period,
    kind: BreakdownKind,
) -> Result<Vec<Breakdown>, StoreError> {
    let groups = groups(store, target).await?;
    let mut tx = store.begin_read_within(target.id).await?;
    let sql = match kind {
        BreakdownKind::VisitsByKind => format!(
            "select branch_id, kind, count(*), cast(sum(aid_cash_fen + aid_goods_fen) as bigint) from visit_rows
             where branch_id in ({BRANCHES}) and date between $3 and $4 group by branch_id, kind"
        ),
        BreakdownKind::VisitsByMonth => format!(
            "select branch_id, substr(date, 1, 7), count(*), cast(sum(aid_cash_fen + aid_goods_fen) as bigint) from visit_rows
             where branch_id in ({BRANCHES}) and date between $3 and $4 group by branch_id, substr(date, 1, 7)"
        ),
        BreakdownKind::HardshipByKind => format!(
            "select branch_id, kind, count(case when opened_on <= $4 and (closed_on is null or closed_on > $4) then 1 end),
                    count(case when opened_on between $3 and $4 then 1 end)
             from hardship_rows where branch_id in ({BRANCHES}) group by branch_id, kind"
        ),
        BreakdownKind::TrainingByLevel => format!(
            "select branch_id, level, count(*), cast(sum(attendance) as bigint) from training_rows
             where branch_id in ({BRANCHES}) and date between $3 and $4 group by branch_id, level"
        ),
        BreakdownKind::TeamsByCategory => format!(
            "select t.branch_id, t.category, count(distinct t.record_id), count(p.person_id)
             from team_rows t left join team_people_rows p on p.document_id = t.document_id and p.team_id = t.record_id
             where t.branch_id in ({BRANCHES}) and $3 <= $4 group by t.branch_id, t.category"
        ),
    };
    let rows = sqlx::query(&sql)
        .bind(target.path.as_str())
        .bind(target.path.descendants_pattern())
        .bind(period.from.to_string())
        .bind(period.to.to_string())
        .fetch_all(&mut *tx)
        .await?;
    let mut folded: BTreeMap<(usize, String), (i64, i64)> = BTreeMap::new();
    for row in rows {
        let branch: String = row.try_get(0)?;
        let category: String = row.try_get(1)?;
        let count: Option<i64> = row.try_get(2)?;
        let amount: Option<i64> = row.try_get(3)?;
        let Some(group) = groups.of_branch.get(&branch) else {
            continue;
        };
        let Some(index) = groups.order.iter().position(|g| &g.id.to_string() == group) else {
            continue;
        };
        let entry = folded.entry((index, category)).or_default();
        entry.0 += count.unwrap_or(0);
        entry.1 += amount.unwrap_or(0);
    }
    Ok(folded
        .into_iter()
        .map(|((index, category), (count, amount))| Breakdown {
            tenant_id: groups.order[index].id.to_string(),
            tenant: groups.order[index].name.clone(),
            category,
            count,
            amount,
        })
        .collect())
}

pub async fn health(
    store: &Store,
    target: &Tenant,
    stale_days: u32,
) -> Result<Vec<Health>, StoreError> {
    let groups = groups(store, target).await?;
    let mut tx = store.begin_read_within(target.id).await?;
    let now = crate::store::now_ms();
    let stale_before = now - i64::from(stale_days) * 86_400_000;
    let today = period::organisation_today(now).to_string();
    let queries = [
        format!(
            "select branch_id, count(*),
                    count(case when created_at < $3 and (last_seen_at is null or last_seen_at < $3) then 1 end)
             from devices
             where revoked_at is null and branch_id in ({BRANCHES}) and $4 = $4 group by branch_id"
        ),
        format!(
            "select branch_id, count(*), 0 from conflict_rows where branch_id in ({BRANCHES}) and $3 = $3 and $4 = $4 group by branch_id"
        ),
        format!(
            "select branch_id, count(*), 0 from invalid_rows where branch_id in ({BRANCHES}) and $3 = $3 and $4 = $4 group by branch_id"
        ),
        format!(
            "select branch_id, count(*), 0 from visit_rows where branch_id in ({BRANCHES}) and $3 = $3 and date > $4 group by branch_id"
        ),
    ];
    let mut per: BTreeMap<String, Health> = BTreeMap::new();
    for (i, sql) in queries.iter().enumerate() {
        let rows = sqlx::query(sql)
            .bind(target.path.as_str())
            .bind(target.path.descendants_pattern())
            .bind(stale_before)
            .bind(&today)
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let branch: String = row.try_get(0)?;
            let (a, b): (i64, Option<i64>) = (row.try_get(1)?, row.try_get(2)?);
            let h = per.entry(branch).or_default();
            match i {
                0 => {
                    h.devices = a;
                    h.devices_stale = b.unwrap_or(0);
                }
                1 => h.open_conflicts = a,
                2 => h.invalid_records = a,
                _ => h.future_visits = a,
            }
        }
    }
    Ok(groups
        .order
        .iter()
        .map(|g| {
            let id = g.id.to_string();
            let mut health = Health {
                tenant_id: id.clone(),
                tenant: g.name.clone(),
                ..Health::default()
            };
            for (branch, h) in &per {
                if groups.of_branch.get(branch) == Some(&id) {
                    health.devices += h.devices;
                    health.devices_stale += h.devices_stale;
                    health.open_conflicts += h.open_conflicts;
                    health.invalid_records += h.invalid_records;
                    health.future_visits += h.future_visits;
                }
            }
            health
        })
        .collect())
}

/// A member as the branch secretary sees it: with the name.
#[derive(Debug, Clone, Serialize)]
pub struct MemberListing {
    pub id: String,
    pub name: String,
    pub household: String,
    pub kinds: Vec<&'static str>,
}

/// The branch's members, with names: for branch-level roles only.
pub async fn branch_members(
    store: &Store,
    branch: TenantId,
) -> Result<Vec<MemberListing>, StoreError> {
    let mut tx = store.begin_read_within(branch).await?;
    let rows = sqlx::query(
        "select record_id, name, household, in_post, no_post, hardship, migrant, retired
         from member_rows where branch_id = $1 order by name",
    )
    .bind(branch.to_string())
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            let mut kinds = Vec::new();
            for (i, name) in ["in_post", "no_post", "hardship", "migrant", "retired"]
                .iter()
                .enumerate()
            {
                if r.try_get::<i64, _>(3 + i)? == 1 {
                    kinds.push(*name);
                }
            }
            Ok(MemberListing {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                household: r.try_get(2)?,
                kinds,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// Invalid records of a branch, for its secretary.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidListing {
    pub document_id: String,
    pub collection: String,
    pub record: String,
    pub problems: String,
}

pub async fn branch_invalid(
    store: &Store,
    branch: TenantId,
) -> Result<Vec<InvalidListing>, StoreError> {
    let mut tx = store.begin_read_within(branch).await?;
    let rows = sqlx::query(
        "select document_id, collection, record_key, problems from invalid_rows where branch_id = $1 order by document_id, collection",
    )
    .bind(branch.to_string())
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(InvalidListing {
                document_id: r.try_get(0)?,
                collection: r.try_get(1)?,
                record: r.try_get(2)?,
                problems: r.try_get(3)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}
