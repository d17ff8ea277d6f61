//! Writing a plan: set-based deletes, then multi-row inserts.
//!
//! Every value is a bound parameter; table and column names come only from
//! the constants here. Statements are chunked to stay under SQLite's bound
//! parameter limit, so a whole-document plan of any size is a handful of
//! statements rather than one per row.

use crate::store::statement::{Statement, Tuple};

use super::ProjectionPlan;
use crate::store::StoreError;

/// SQLite's limit on bound parameters in one statement (since 3.32).
const MAX_PARAMS: usize = 32_766;

/// The row tables of a collection, each with the column holding the key of
/// the record a row comes from.
fn tables(collection: &str) -> &'static [(&'static str, &'static str)] {
    match collection {
        "members" => &[("member_rows", "record_id")],
        "hardship" => &[("hardship_rows", "record_id")],
        "teams" => &[("team_rows", "record_id"), ("team_people_rows", "team_id")],
        "visits" => &[("visit_rows", "record_id")],
        "activities" => &[("activity_rows", "record_id")],
        "trainings" => &[("training_rows", "record_id")],
        "placements" => &[("placement_rows", "record_id")],
        "fund" => &[("fund_rows", "record_id")],
        _ => &[],
    }
}

/// Tables that list records of any collection by (collection, record key).
const LISTINGS: [&str; 2] = ["invalid_rows", "conflict_rows"];

/// Every projection table.
pub(crate) const TABLES: [&str; 11] = [
    "member_rows",
    "hardship_rows",
    "team_rows",
    "team_people_rows",
    "visit_rows",
    "activity_rows",
    "training_rows",
    "placement_rows",
    "fund_rows",
    "invalid_rows",
    "conflict_rows",
];

/// Deletes the rows of every planned record and whole collection of the
/// plan's document.
pub(super) async fn delete(
    tx: &mut crate::store::Tx,
    plan: &ProjectionPlan,
) -> Result<(), StoreError> {
    let document = plan.document.as_str();
    for &collection in &plan.whole {
        for (table, _) in tables(collection) {
            let mut q = Statement::new("delete from ");
            q.push(table)
                .push(" where document_id = ")
                .push_bind(document);
            q.build()?.execute(&mut **tx).await?;
        }
        for table in LISTINGS {
            let mut q = Statement::new("delete from ");
            q.push(table)
                .push(" where document_id = ")
                .push_bind(document)
                .push(" and collection = ")
                .push_bind(collection);
            q.build()?.execute(&mut **tx).await?;
        }
    }
    for (&collection, keys) in &plan.records {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        for chunk in keys.chunks(MAX_PARAMS - 2) {
            for (table, column) in tables(collection) {
                let mut q = Statement::new("delete from ");
                q.push(table)
                    .push(" where document_id = ")
                    .push_bind(document)
                    .push(" and ")
                    .push(column)
                    .push(" in (");
                q.push_list(chunk.iter().copied());
                q.build()?.execute(&mut **tx).await?;
            }
            for table in LISTINGS {
                let mut q = Statement::new("delete from ");
                q.push(table)
                    .push(" where document_id = ")
                    .push_bind(document)
                    .push(" and collection = ")
                    .push_bind(collection)
                    .push(" and record_key in (");
                q.push_list(chunk.iter().copied());
                q.build()?.execute(&mut **tx).await?;
            }
        }
    }
    Ok(())
}

/// Inserts every planned row; the rows they replace are already deleted.
pub(super) async fn insert(
    tx: &mut crate::store::Tx,
    plan: &ProjectionPlan,
) -> Result<(), StoreError> {
    let (document, branch) = (plan.document.as_str(), plan.branch.as_str());
    let rows = &plan.rows;
    insert_rows(
        tx,
        "insert into member_rows (document_id, record_id, branch_id, name, household, in_post, no_post, hardship, migrant, retired) ",
        10,
        &rows.members,
        |b, m| {
            b.push_bind(document)
                .push_bind(m.record_id.as_str())
                .push_bind(branch)
                .push_bind(m.name.as_str())
                .push_bind(m.household.as_str())
                .push_bind(flag(m.in_post))
                .push_bind(flag(m.no_post))
                .push_bind(flag(m.hardship))
                .push_bind(flag(m.migrant))
                .push_bind(flag(m.retired));
        },
    )
    .await?;
    insert_rows(
        tx,
        "insert into hardship_rows (document_id, record_id, branch_id, member_id, kind, opened_on, status, closed_on) ",
        8,
        &rows.hardship,
        |b, h| {
            b.push_bind(document)
                .push_bind(h.record_id.as_str())
                .push_bind(branch)
                .push_bind(h.member_id.as_str())
                .push_bind(h.kind)
                .push_bind(h.opened_on.as_str())
                .push_bind(h.status)
                .push_bind(h.closed_on.as_deref());
        },
    )
    .await?;
    insert_rows(
        tx,
        "insert into team_rows (document_id, record_id, branch_id, category) ",
        4,
        &rows.teams,
        |b, t| {
            b.push_bind(document)
                .push_bind(t.record_id.as_str())
                .push_bind(branch)
                .push_bind(t.category.as_str());
        },
    )
    .await?;
    insert_rows(
        tx,
        "insert into team_people_rows (document_id, team_id, person_id, branch_id, member_id, backbone) ",
        6,
        &rows.team_people,
        |b, p| {
            b.push_bind(document)
                .push_bind(p.team_id.as_str())
                .push_bind(p.person_id.as_str())
                .push_bind(branch)
                .push_bind(p.member_id.as_deref())
                .push_bind(flag(p.backbone));
        },
    )
    .await?;
    insert_rows(
        tx,
        "insert into visit_rows (document_id, record_id, branch_id, date, member_id, kind, aid_cash_fen, aid_goods_fen, follow_up_due, follow_up_done) ",
        10,
        &rows.visits,
        |b, v| {
            b.push_bind(document)
                .push_bind(v.record_id.as_str())
                .push_bind(branch)
                .push_bind(v.date.as_str())
                .push_bind(v.member_id.as_str())
                .push_bind(v.kind)
                .push_bind(v.aid_cash_fen)
                .push_bind(v.aid_goods_fen)
                .push_bind(v.follow_up_due.as_deref())
                .push_bind(flag(v.follow_up_done));
        },
    )
    .await?;
    insert_rows(
        tx,
        "insert into activity_rows (document_id, record_id, branch_id, date, team_id, minutes) ",
        6,
        &rows.activities,
        |b, a| {
            b.push_bind(document)
                .push_bind(a.record_id.as_str())
                .push_bind(branch)
                .push_bind(a.date.as_str())
                .push_bind(a.team_id.as_deref())
                .push_bind(a.minutes);
        },
    )
    .await?;
    insert_rows(
        tx,
        "insert into training_rows (document_id, record_id, branch_id, date, level, attendance) ",
        6,
        &rows.trainings,
        |b, t| {
            b.push_bind(document)
                .push_bind(t.record_id.as_str())
                .push_bind(branch)
                .push_bind(t.date.as_str())
                .push_bind(t.level)
                .push_bind(t.attendance);
        },
    )
    .await?;
    insert_rows(
        tx,
        "insert into placement_rows (document_id, record_id, branch_id, date, member_id) ",
        5,
        &rows.placements,
        |b, p| {
            b.push_bind(document)
                .push_bind(p.record_id.as_str())
                .push_bind(branch)
                .push_bind(p.date.as_str())
                .push_bind(p.member_id.as_str());
        },
    )
    .await?;
    insert_rows(
        tx,
        "insert into fund_rows (document_id, record_id, branch_id, date, direction, amount_fen) ",
        6,
        &rows.fund,
        |b, f| {
            b.push_bind(document)
                .push_bind(f.record_id.as_str())
                .push_bind(branch)
                .push_bind(f.date.as_str())
                .push_bind(f.direction)
                .push_bind(f.amount_fen);
        },
    )
    .await?;
    insert_rows(
        tx,
        "insert into invalid_rows (document_id, collection, record_key, branch_id, problems) ",
        5,
        &rows.invalid,
        |b, i| {
            b.push_bind(document)
                .push_bind(i.collection)
                .push_bind(i.record_key.as_str())
                .push_bind(branch)
                .push_bind(i.problems.as_str());
        },
    )
    .await?;
    insert_rows(
        tx,
        "insert into conflict_rows (document_id, collection, record_key, field, branch_id) ",
        5,
        &rows.conflicts,
        |b, c| {
            b.push_bind(document)
                .push_bind(c.collection)
                .push_bind(c.record_key.as_str())
                .push_bind(c.field.as_str())
                .push_bind(branch);
        },
    )
    .await?;
    Ok(())
}

/// One multi-row insert per chunk of `rows`; `columns` is how many values
/// `push` binds per row.
async fn insert_rows<'a, T>(
    tx: &mut crate::store::Tx,
    head: &'static str,
    columns: usize,
    rows: &'a [T],
    mut push: impl FnMut(&mut Tuple<'_, 'a>, &'a T),
) -> Result<(), StoreError> {
    for chunk in rows.chunks(MAX_PARAMS / columns) {
        let mut q = Statement::new(head);
        q.push_values(chunk, |b, row| push(b, row));
        q.build()?.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Deletes rows of documents no longer stored.
pub(super) async fn delete_orphans(tx: &mut crate::store::Tx) -> Result<(), StoreError> {
    for table in TABLES {
        let mut q = Statement::new("delete from ");
        q.push(table)
            .push(" where document_id not in (select id from documents)");
        q.build()?.execute(&mut **tx).await?;
    }
    Ok(())
}

/// A flag as stored: 0 or 1 in an integer column on both backends (SQLite
/// has no boolean type, and PostgreSQL will not put a boolean in one).
fn flag(value: bool) -> i64 {
    i64::from(value)
}
