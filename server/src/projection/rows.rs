//! One record to one row, per collection.

use automerge::Automerge;
use doorstep_protocol::schema::log::{Activity, FundEntry, Placement, Training, Visit};
use doorstep_protocol::schema::roster::{HardshipEntry, Member, MemberKind, Pairing, Team};
use doorstep_protocol::schema::{Record, RecordId, read_record};
use doorstep_protocol::{Date, Month};
use sqlx::{Sqlite, Transaction};

use super::Source;
use crate::store::StoreError;

/// A record as the projection sees it.
pub(super) enum Outcome {
    Member(Member),
    Hardship(HardshipEntry),
    Team(Team),
    Visit(Visit),
    Activity(Activity),
    Training(Training),
    Placement(Placement),
    Fund(FundEntry),
    /// Present but not counted (pairings have no figures).
    Uncounted,
    /// Deleted, or never a record.
    Gone,
    Invalid(Vec<String>),
}

fn typed<R: Record>(
    doc: &Automerge,
    key: &str,
    month: Option<Month>,
    date: impl Fn(&R) -> Option<Date>,
    wrap: impl Fn(R) -> Outcome,
) -> Outcome {
    let Ok(id) = key.parse::<RecordId>() else {
        return Outcome::Invalid(vec!["record key is not a UUID".into()]);
    };
    match read_record::<R, _>(doc, id) {
        Ok(None) => Outcome::Gone,
        Err(e) => Outcome::Invalid(vec![e.to_string()]),
        Ok(Some(record)) => {
            let mut problems = record.problems();
            if let (Some(month), Some(date)) = (month, date(&record))
                && date.month() != month
            {
                problems.push(format!("dated {date}, outside the log's month {month}"));
            }
            if problems.is_empty() {
                wrap(record)
            } else {
                Outcome::Invalid(problems)
            }
        }
    }
}

pub(super) fn read(doc: &Automerge, collection: &str, key: &str, month: Option<Month>) -> Outcome {
    match collection {
        "members" => typed::<Member>(doc, key, None, |_| None, Outcome::Member),
        "hardship" => typed::<HardshipEntry>(doc, key, None, |_| None, Outcome::Hardship),
        "pairings" => typed::<Pairing>(doc, key, None, |_| None, |_| Outcome::Uncounted),
        "teams" => typed::<Team>(doc, key, None, |_| None, Outcome::Team),
        "visits" => typed::<Visit>(doc, key, month, |v| Some(v.date), Outcome::Visit),
        "activities" => typed::<Activity>(doc, key, month, |a| Some(a.date), Outcome::Activity),
        "trainings" => typed::<Training>(doc, key, month, |t| Some(t.date), Outcome::Training),
        "placements" => typed::<Placement>(doc, key, month, |p| Some(p.date), Outcome::Placement),
        "fund" => typed::<FundEntry>(doc, key, month, |f| Some(f.date), Outcome::Fund),
        _ => Outcome::Gone,
    }
}

/// The projection table of each collection.
fn table(collection: &str) -> Option<&'static str> {
    Some(match collection {
        "members" => "member_rows",
        "hardship" => "hardship_rows",
        "teams" => "team_rows",
        "visits" => "visit_rows",
        "activities" => "activity_rows",
        "trainings" => "training_rows",
        "placements" => "placement_rows",
        "fund" => "fund_rows",
        _ => return None,
    })
}

pub(super) async fn apply(
    tx: &mut Transaction<'static, Sqlite>,
    source: Source,
    collection: &str,
    key: &str,
    outcome: Outcome,
) -> Result<(), StoreError> {
    let branch = source.branch.to_string();
    let document = source.document.to_string();
    // Start from nothing for this record: whatever it is now is written below.
    if collection == "teams" {
        sqlx::query("delete from team_people_rows where team_id = ? and branch_id = ?")
            .bind(key)
            .bind(&branch)
            .execute(&mut **tx)
            .await?;
    }
    if let Some(table) = table(collection) {
        // The table name comes from the fixed list above, never from input.
        sqlx::query(&format!(
            "delete from {table} where record_id = ? and branch_id = ?"
        ))
        .bind(key)
        .bind(&branch)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query(
        "delete from invalid_rows where document_id = ? and collection = ? and record_key = ?",
    )
    .bind(&document)
    .bind(collection)
    .bind(key)
    .execute(&mut **tx)
    .await?;
    match outcome {
        Outcome::Gone | Outcome::Uncounted => {}
        Outcome::Invalid(problems) => {
            sqlx::query(
                "insert into invalid_rows (document_id, collection, record_key, branch_id, problems) values (?, ?, ?, ?, ?)",
            )
            .bind(&document)
            .bind(collection)
            .bind(key)
            .bind(&branch)
            .bind(problems.join("; "))
            .execute(&mut **tx)
            .await?;
        }
        Outcome::Member(m) => {
            let has = |k| i64::from(m.kinds.contains(&k));
            sqlx::query(
                "insert into member_rows (record_id, branch_id, name, household, in_post, no_post, hardship, migrant, retired)
                 values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(key)
            .bind(&branch)
            .bind(&m.name)
            .bind(m.household.as_deref().unwrap_or(key))
            .bind(has(MemberKind::InPost))
            .bind(has(MemberKind::NoPost))
            .bind(has(MemberKind::Hardship))
            .bind(has(MemberKind::Migrant))
            .bind(has(MemberKind::Retired))
            .execute(&mut **tx)
            .await?;
        }
        Outcome::Hardship(h) => {
            sqlx::query(
                "insert into hardship_rows (record_id, branch_id, member_id, kind, opened_on, status, closed_on)
                 values (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(key)
            .bind(&branch)
            .bind(h.member_id.to_string())
            .bind(h.kind.as_str())
            .bind(h.opened_on.to_string())
            .bind(h.current_status().as_str())
            .bind(h.closed_on().map(|d| d.to_string()))
            .execute(&mut **tx)
            .await?;
        }
        Outcome::Team(t) => {
            sqlx::query("insert into team_rows (record_id, branch_id, category) values (?, ?, ?)")
                .bind(key)
                .bind(&branch)
                .bind(&t.category)
                .execute(&mut **tx)
                .await?;
            for (person, p) in &t.people {
                sqlx::query(
                    "insert into team_people_rows (team_id, person_id, branch_id, member_id, backbone) values (?, ?, ?, ?, ?)",
                )
                .bind(key)
                .bind(person.to_string())
                .bind(&branch)
                .bind(p.member_id.map(|m| m.to_string()))
                .bind(i64::from(p.backbone))
                .execute(&mut **tx)
                .await?;
            }
        }
        Outcome::Visit(v) => {
            sqlx::query(
                "insert into visit_rows (record_id, branch_id, date, member_id, kind, aid_cash_fen, aid_goods_fen, follow_up_due, follow_up_done)
                 values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(key)
            .bind(&branch)
            .bind(v.date.to_string())
            .bind(v.member_id.to_string())
            .bind(v.kind.as_str())
            .bind(v.aid_cash.as_i64())
            .bind(v.aid_goods.as_i64())
            .bind(v.follow_up.as_ref().map(|f| f.due.to_string()))
            .bind(i64::from(v.follow_up.as_ref().is_some_and(|f| f.done)))
            .execute(&mut **tx)
            .await?;
        }
        Outcome::Activity(a) => {
            sqlx::query("insert into activity_rows (record_id, branch_id, date, team_id, minutes) values (?, ?, ?, ?, ?)")
                .bind(key)
                .bind(&branch)
                .bind(a.date.to_string())
                .bind(a.team_id.map(|t| t.to_string()))
                .bind(a.total_minutes())
                .execute(&mut **tx)
                .await?;
        }
        Outcome::Training(t) => {
            sqlx::query("insert into training_rows (record_id, branch_id, date, level, attendance) values (?, ?, ?, ?, ?)")
                .bind(key)
                .bind(&branch)
                .bind(t.date.to_string())
                .bind(t.level.as_str())
                .bind(t.attendance)
                .execute(&mut **tx)
                .await?;
        }
        Outcome::Placement(p) => {
            sqlx::query("insert into placement_rows (record_id, branch_id, date, member_id) values (?, ?, ?, ?)")
                .bind(key)
                .bind(&branch)
                .bind(p.date.to_string())
                .bind(p.member_id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Outcome::Fund(f) => {
            sqlx::query("insert into fund_rows (record_id, branch_id, date, direction, amount_fen) values (?, ?, ?, ?, ?)")
                .bind(key)
                .bind(&branch)
                .bind(f.date.to_string())
                .bind(f.direction.as_str())
                .bind(f.amount.as_i64())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

pub(super) async fn replace_conflicts(
    tx: &mut Transaction<'static, Sqlite>,
    source: Source,
    collection: &str,
    key: &str,
    fields: &[String],
) -> Result<(), StoreError> {
    let document = source.document.to_string();
    sqlx::query(
        "delete from conflict_rows where document_id = ? and collection = ? and record_key = ?",
    )
    .bind(&document)
    .bind(collection)
    .bind(key)
    .execute(&mut **tx)
    .await?;
    for field in fields {
        sqlx::query(
            "insert into conflict_rows (document_id, collection, record_key, field, branch_id) values (?, ?, ?, ?, ?)",
        )
        .bind(&document)
        .bind(collection)
        .bind(key)
        .bind(field)
        .bind(source.branch.to_string())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
