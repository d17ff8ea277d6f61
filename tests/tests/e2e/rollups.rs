//! Projections and rollups: counted once, deletions, freshness,
//! reprojection, privacy and CSV.

use doorstep_client::{
    Client, EditState, Fen, HardshipKind, MemberKind, NewHardshipEntry, NewMember, NewVisit,
    RecordId, VisitKind,
};
use doorstep_protocol::schema::log::Visit;
use doorstep_protocol::schema::{DocumentKind, delete_record, write_record};
use doorstep_server::tenancy::Role;
use doorstep_tests::{District, TestServer, sdk_device};
use reqwest::StatusCode;
use serde_json::Value;

struct Office {
    server: TestServer,
    district: District,
    admin: String,
    phone: Client,
    _dir: tempfile::TempDir,
}

async fn office() -> anyhow::Result<Office> {
    let server = TestServer::spawn().await?;
    let district = server.district().await?;
    let admin = server
        .login_as("district", Role::DistrictAdmin, district.district.id)
        .await?;
    let dir = tempfile::tempdir()?;
    let phone = sdk_device(
        &server.store,
        &server.http_url(),
        district.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    Ok(Office {
        server,
        district,
        admin,
        phone,
        _dir: dir,
    })
}

async fn get(server: &TestServer, token: &str, path: &str) -> anyhow::Result<(StatusCode, String)> {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.http_url()))
        .bearer_auth(token)
        .send()
        .await?;
    Ok((response.status(), response.text().await?))
}

async fn total(o: &Office, query: &str) -> anyhow::Result<Value> {
    let (status, body) = get(&o.server, &o.admin, &format!("/api/v1/rollups?{query}")).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(serde_json::from_str::<Value>(&body)?["total"].clone())
}

fn visit(date: &str, member: RecordId, cash: i64) -> NewVisit {
    NewVisit {
        date: date.parse().expect("date"),
        member_id: member,
        kind: VisitKind::HolidayCondolence,
        visitors: vec!["volunteer".into()],
        aid_cash: Fen(cash),
        aid_goods: Fen(1000),
        goods_description: None,
        notes: None,
        follow_up: None,
    }
}

/// "Counted" on the phone means the district's figures include the edit:
/// no wait, no timer (how fast is the ingest bench's business).
#[tokio::test]
async fn a_visit_the_phone_sees_counted_is_in_the_district_rollup_at_once() -> anyhow::Result<()> {
    let o = office().await?;
    let member = o
        .phone
        .add_member(NewMember {
            name: "陈奶奶".into(),
            ..NewMember::default()
        })
        .await?;
    let visit = o
        .phone
        .record_visit(visit("2026-11-05", member, 20_000))
        .await?;
    let checkpoint = o.phone.checkpoint().await?;
    assert!(checkpoint.safe && checkpoint.all_counted, "{checkpoint:?}");
    assert_eq!(o.phone.edit_state(visit).await?, EditState::Counted);
    let total = total(&o, "month=2026-11").await?;
    assert_eq!(total["visits"], 1, "{total}");
    assert_eq!(total["aid_total_fen"], 21_000, "{total}");
    Ok(())
}

#[tokio::test]
async fn the_same_changes_synced_twice_from_two_devices_and_after_a_restart_count_once()
-> anyhow::Result<()> {
    let o = office().await?;
    let member = o
        .phone
        .add_member(NewMember {
            name: "周大爷".into(),
            household: Some("h-1".into()),
            ..NewMember::default()
        })
        .await?;
    let second = o
        .phone
        .add_member(NewMember {
            name: "周大娘".into(),
            household: Some("h-1".into()),
            ..NewMember::default()
        })
        .await?;
    o.phone
        .record_visit(visit("2026-11-05", member, 10_000))
        .await?;
    o.phone
        .record_visit(visit("2026-11-06", second, 10_000))
        .await?;
    o.phone.sync_now().await?;
    o.phone.sync_now().await?;

    // A second device gets the same changes and sends them back.
    let dir = tempfile::tempdir()?;
    let other = sdk_device(
        &o.server.store,
        &o.server.http_url(),
        o.district.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    other.sync_now().await?;
    other.sync_now().await?;
    let first = total(&o, "year=2026").await?;
    assert_eq!(first["visits"], 2);
    assert_eq!(
        first["households_visited"], 1,
        "two members of one household"
    );

    // Restart the server on the same data: same figures, and a resync too.
    let addr = o.server.addr;
    let data = o.server.stop().await;
    let server = TestServer::spawn_at(data, addr, |_| {}).await?;
    let o = Office { server, ..o };
    o.phone.sync_now().await?;
    other.sync_now().await?;
    assert_eq!(total(&o, "year=2026").await?, first);

    // And a full rebuild from the stored documents gives the same figures.
    doorstep_server::projection::reproject(&o.server.store).await?;
    assert_eq!(total(&o, "year=2026").await?, first);
    Ok(())
}

#[tokio::test]
async fn a_deleted_record_stops_counting_and_an_invalid_one_never_counts() -> anyhow::Result<()> {
    let o = office().await?;
    let member = o
        .phone
        .add_member(NewMember {
            name: "吴阿姨".into(),
            ..NewMember::default()
        })
        .await?;
    let kept = o
        .phone
        .record_visit(visit("2026-11-05", member, 5_000))
        .await?;
    let gone = o
        .phone
        .record_visit(visit("2026-11-06", member, 7_000))
        .await?;
    o.phone.sync_now().await?;
    assert_eq!(total(&o, "month=2026-11").await?["visits"], 2);

    // Delete one and write an invalid one, as a raw peer would.
    let log =
        doorstep_protocol::DocumentId::monthly_log(o.district.yingfeng.id, "2026-11".parse()?);
    let enrolled = o.server.enroll(o.district.yingfeng.id, "raw").await?;
    let mut device =
        crate::connected_device(&o.server.http_url(), &o.server.ws_url(), enrolled, None).await?;
    device.peer.sync(log).await?;
    let doc = device.peer.document_mut(log).expect("log");
    doc.set_actor(device.actor.clone());
    let mut tx = doc.transaction();
    delete_record::<Visit, _>(&mut tx, gone)?;
    let bad = Visit {
        date: "2026-11-07".parse()?,
        member_id: member,
        kind: VisitKind::Routine,
        visitors: Default::default(),
        aid_cash: Fen(-500),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: None,
        follow_up: None,
        recorded_by: None,
    };
    write_record(&mut tx, RecordId::new_v7(), &bad)?;
    tx.commit();
    device.peer.sync(log).await?;

    let after = total(&o, "month=2026-11").await?;
    assert_eq!(after["visits"], 1);
    assert_eq!(after["aid_cash_fen"], 5_000);
    let _ = kept;
    // The invalid record is listed for the branch secretary, without counting.
    let secretary = o
        .server
        .login_as("secretary", Role::BranchSecretary, o.district.yingfeng.id)
        .await?;
    let (status, body) = get(
        &o.server,
        &secretary,
        &format!(
            "/api/v1/branches/{}/invalid-records",
            o.district.yingfeng.id
        ),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let invalid: Value = serde_json::from_str(&body)?;
    assert_eq!(invalid.as_array().map(Vec::len), Some(1));
    assert!(
        invalid[0]["problems"]
            .as_str()
            .unwrap_or("")
            .contains("negative")
    );
    let (_, health) = get(&o.server, &o.admin, "/api/v1/health").await?;
    let health: Value = serde_json::from_str(&health)?;
    let xiangyang = health
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["tenant"] == "向阳街道")
        .expect("row")
        .clone();
    assert_eq!(xiangyang["invalid_records"], 1);
    let _ = DocumentKind::Roster;
    Ok(())
}

#[tokio::test]
async fn upper_levels_see_numbers_never_names_and_other_subtrees_look_missing() -> anyhow::Result<()>
{
    let o = office().await?;
    let secret_name = "机密姓名";
    let secret_phone = "13812345678";
    let member = o
        .phone
        .add_member(NewMember {
            name: secret_name.into(),
            phone: Some(secret_phone.into()),
            address: Some("保密地址".into()),
            kinds: [MemberKind::Hardship, MemberKind::Migrant].into(),
            ..NewMember::default()
        })
        .await?;
    o.phone
        .open_hardship_entry(NewHardshipEntry {
            member_id: member,
            kind: HardshipKind::Illness,
            opened_on: "2026-03-01".parse()?,
            needs: vec!["药".into()],
        })
        .await?;
    o.phone
        .record_visit(visit("2026-11-05", member, 5_000))
        .await?;
    o.phone.sync_now().await?;

    let sub_admin = o
        .server
        .login_as("xy", Role::SubDistrictAdmin, o.district.xiangyang.id)
        .await?;
    let df_admin = o
        .server
        .login_as("df", Role::SubDistrictAdmin, o.district.dongfeng.id)
        .await?;
    let branch = o.district.yingfeng.id;
    let endpoints = [
        "/api/v1/rollups?year=2026".to_string(),
        "/api/v1/rollups?year=2026&format=csv".into(),
        format!("/api/v1/rollups?year=2026&tenant={branch}"),
        format!("/api/v1/rollups?year=2026&tenant={branch}&format=csv"),
        "/api/v1/health".into(),
        "/api/v1/health?format=csv".into(),
    ];
    let by = [
        "visits_by_kind",
        "visits_by_month",
        "hardship_by_kind",
        "training_by_level",
        "teams_by_category",
    ];
    let endpoints: Vec<String> = endpoints
        .into_iter()
        .chain(by.iter().flat_map(|b| {
            [
                format!("/api/v1/rollups/breakdown?by={b}&year=2026"),
                format!("/api/v1/rollups/breakdown?by={b}&year=2026&format=csv"),
            ]
        }))
        .collect();
    for token in [&o.admin, &sub_admin] {
        for path in &endpoints {
            let (status, body) = get(&o.server, token, path).await?;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            for secret in [secret_name, secret_phone, "保密地址"] {
                assert!(!body.contains(secret), "{path} leaks {secret}");
            }
        }
        // Names are the branch's own business.
        let (status, body) = get(
            &o.server,
            token,
            &format!("/api/v1/branches/{branch}/members"),
        )
        .await?;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!body.contains(secret_name));
    }
    // The figures are there, as numbers.
    let (_, body) = get(&o.server, &sub_admin, "/api/v1/rollups?year=2026").await?;
    let rollup: Value = serde_json::from_str(&body)?;
    assert_eq!(rollup["total"]["visits"], 1);
    assert_eq!(rollup["total"]["hardship_registered"], 1);
    assert_eq!(rollup["total"]["hardship_visited_pct"], 100.0);
    // Visited on 5 November: 56 days before the year's end.
    assert_eq!(rollup["total"]["migrants"], 1);
    assert_eq!(rollup["total"]["migrants_contacted_30d"], 0);
    assert_eq!(rollup["total"]["migrants_contacted_60d"], 1);
    assert_eq!(rollup["total"]["migrants_contacted_90d"], 1);

    // Another sub-district's admin: the branch is refused like a missing one.
    let foreign = get(
        &o.server,
        &df_admin,
        &format!("/api/v1/rollups?year=2026&tenant={branch}"),
    )
    .await?;
    let missing = get(
        &o.server,
        &df_admin,
        &format!("/api/v1/rollups?year=2026&tenant={}", uuid::Uuid::now_v7()),
    )
    .await?;
    assert_eq!(foreign.0, StatusCode::NOT_FOUND);
    assert_eq!(foreign, missing);

    // The branch secretary sees names.
    let secretary = o
        .server
        .login_as("sec", Role::BranchSecretary, branch)
        .await?;
    let (status, body) = get(
        &o.server,
        &secretary,
        &format!("/api/v1/branches/{branch}/members"),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(secret_name));
    // A volunteer's login sees no figures at all.
    let volunteer = o.server.login_as("vol", Role::Volunteer, branch).await?;
    assert_eq!(
        get(&o.server, &volunteer, "/api/v1/rollups?year=2026")
            .await?
            .0,
        StatusCode::FORBIDDEN
    );
    Ok(())
}

#[tokio::test]
async fn csv_exports_quote_correctly_and_keep_chinese_names() -> anyhow::Result<()> {
    let o = office().await?;
    let member = o
        .phone
        .add_member(NewMember {
            name: "x".into(),
            ..NewMember::default()
        })
        .await?;
    o.phone
        .record_visit(visit("2026-11-05", member, 5_000))
        .await?;
    o.phone.sync_now().await?;
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/rollups?year=2026&format=csv",
            o.server.http_url()
        ))
        .bearer_auth(&o.admin)
        .send()
        .await?;
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let body = response.text().await?;
    let mut lines = body.trim_start_matches('\u{feff}').lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    assert_eq!(&header[..4], &["tenant_id", "tenant", "level", "visits"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "two sub-districts and the total");
    assert_eq!(rows[0][1], "向阳街道");
    assert_eq!(rows[0][3], "1");
    assert_eq!(rows[2][1], "燕山工委");
    Ok(())
}

/// A device that writes documents directly, as a stock client could,
/// without the SDK's checks.
async fn raw_device(o: &Office) -> anyhow::Result<crate::Device> {
    let enrolled = o.server.enroll(o.district.yingfeng.id, "raw").await?;
    crate::connected_device(&o.server.http_url(), &o.server.ws_url(), enrolled, None).await
}

/// Syncs a document to the raw device, edits it there and syncs it back.
async fn raw_edit(
    device: &mut crate::Device,
    id: doorstep_protocol::DocumentId,
    edit: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    device.peer.sync(id).await?;
    let doc = device.peer.document_mut(id).expect("synced document");
    doc.set_actor(device.actor.clone());
    let mut tx = doc.transaction();
    edit(&mut tx)?;
    tx.commit();
    device.peer.sync(id).await?;
    Ok(())
}

fn raw_visit(date: &str, member: RecordId, cash: Fen) -> Visit {
    Visit {
        date: date.parse().expect("date"),
        member_id: member,
        kind: VisitKind::Routine,
        visitors: Default::default(),
        aid_cash: cash,
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: None,
        follow_up: None,
        recorded_by: None,
    }
}

#[tokio::test]
async fn aid_too_large_to_sum_is_listed_and_every_rollup_above_still_answers() -> anyhow::Result<()>
{
    let o = office().await?;
    let member = o
        .phone
        .add_member(NewMember {
            name: "郑".into(),
            ..NewMember::default()
        })
        .await?;
    o.phone
        .record_visit(visit("2026-11-05", member, 5_000))
        .await?;
    o.phone.sync_now().await?;

    // Two visits whose aid alone would overflow any sum of them.
    let log =
        doorstep_protocol::DocumentId::monthly_log(o.district.yingfeng.id, "2026-11".parse()?);
    let mut device = raw_device(&o).await?;
    raw_edit(&mut device, log, |tx| {
        for _ in 0..2 {
            write_record(
                tx,
                RecordId::new_v7(),
                &raw_visit("2026-11-06", member, Fen(i64::MAX)),
            )?;
        }
        Ok(())
    })
    .await?;

    for query in ["month=2026-11", "year=2026"] {
        let total = total(&o, query).await?;
        assert_eq!(total["visits"], 1, "{query}");
        assert_eq!(total["aid_cash_fen"], 5_000, "{query}");
    }
    for by in ["visits_by_kind", "visits_by_month"] {
        let (status, body) = get(
            &o.server,
            &o.admin,
            &format!("/api/v1/rollups/breakdown?by={by}&year=2026"),
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{by}: {body}");
    }
    let secretary = o
        .server
        .login_as("secretary", Role::BranchSecretary, o.district.yingfeng.id)
        .await?;
    let (status, body) = get(
        &o.server,
        &secretary,
        &format!(
            "/api/v1/branches/{}/invalid-records",
            o.district.yingfeng.id
        ),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let invalid: Value = serde_json::from_str(&body)?;
    let invalid = invalid.as_array().expect("a list");
    assert_eq!(invalid.len(), 2, "{body}");
    assert!(
        invalid.iter().all(|i| i["problems"]
            .as_str()
            .unwrap_or("")
            .contains("cash aid is over")),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn one_record_id_in_two_months_counts_in_each_and_a_replaced_collection_keeps_no_rows()
-> anyhow::Result<()> {
    let o = office().await?;
    let branch = o.district.yingfeng.id;
    let (november, december) = (
        doorstep_protocol::DocumentId::monthly_log(branch, "2026-11".parse()?),
        doorstep_protocol::DocumentId::monthly_log(branch, "2026-12".parse()?),
    );
    let (member, id) = (RecordId::new_v7(), RecordId::new_v7());
    let mut device = raw_device(&o).await?;
    raw_edit(&mut device, november, |tx| {
        write_record(tx, id, &raw_visit("2026-11-05", member, Fen(1_000)))?;
        write_record(
            tx,
            RecordId::new_v7(),
            &raw_visit("2026-11-06", member, Fen(10)),
        )?;
        Ok(())
    })
    .await?;
    raw_edit(&mut device, december, |tx| {
        write_record(tx, id, &raw_visit("2026-12-05", member, Fen(2_000)))?;
        Ok(())
    })
    .await?;
    let year = total(&o, "year=2026").await?;
    assert_eq!(year["visits"], 3);
    assert_eq!(year["aid_cash_fen"], 3_010);

    // A device puts a fresh, empty `visits` map over November's.
    raw_edit(&mut device, november, |tx| {
        use automerge::transaction::Transactable;
        tx.put_object(automerge::ROOT, "visits", automerge::ObjType::Map)?;
        Ok(())
    })
    .await?;
    let year = total(&o, "year=2026").await?;
    assert_eq!(year["visits"], 1, "only December's visit is left");
    assert_eq!(year["aid_cash_fen"], 2_000);
    assert_eq!(total(&o, "month=2026-11").await?["visits"], 0);

    // A full rebuild agrees.
    doorstep_server::projection::reproject(&o.server.store).await?;
    assert_eq!(total(&o, "year=2026").await?, year);
    Ok(())
}

/// "Not synced for 7 days" counts the phones that fell silent, not the
/// ones enrolled today: a device enrolled now and not synced yet is not
/// stale; the same device enrolled eight days ago is. (SQLite: the test
/// moves the enrollment back in the file itself.)
#[tokio::test]
async fn a_device_enrolled_today_is_not_counted_as_silent_for_a_week() -> anyhow::Result<()> {
    doorstep_tests::on_sqlite(a_device_enrolled_today_is_not_counted_as_silent_on_sqlite()).await
}

async fn a_device_enrolled_today_is_not_counted_as_silent_on_sqlite() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let admin = server
        .login_as("district", Role::DistrictAdmin, d.district.id)
        .await?;
    let device = server.enroll(d.fenghuangting.id, "enrolled today").await?;
    let health = || async {
        let (status, body) = get(&server, &admin, "/api/v1/health").await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        let rows: Vec<Value> = serde_json::from_str(&body)?;
        let sum = |field: &str| rows.iter().filter_map(|r| r[field].as_i64()).sum::<i64>();
        anyhow::Ok((sum("devices"), sum("devices_stale")))
    };
    assert_eq!(
        health().await?,
        (1, 0),
        "enrolled today, never synced: not silent"
    );

    let file = sqlx::SqlitePool::connect(&format!("sqlite://{}", server.database_path().display()))
        .await?;
    sqlx::query("update devices set created_at = created_at - 8 * 86400000 where id = ?")
        .bind(&device.device_id)
        .execute(&file)
        .await?;
    file.close().await;
    assert_eq!(
        health().await?,
        (1, 1),
        "enrolled eight days ago, never synced"
    );
    Ok(())
}

/// A visit dated after today (China's date) is flagged in the health
/// panel, as a phone's wrong date or a visit recorded ahead would be;
/// today's visit is not.
#[tokio::test]
async fn a_visit_dated_after_today_is_flagged_in_the_branch_health() -> anyhow::Result<()> {
    let o = office().await?;
    let member = o
        .phone
        .add_member(NewMember {
            name: "未来".into(),
            ..NewMember::default()
        })
        .await?;
    let today = doorstep_server::rollup::organisation_today(
        time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
    );
    let ahead = doorstep_protocol::Date::from_time(today.as_time() + time::Duration::days(10));
    for date in [today, ahead] {
        o.phone
            .record_visit(visit(&date.to_string(), member, 100))
            .await?;
    }
    o.phone.sync_now().await?;
    let (status, body) = get(
        &o.server,
        &o.admin,
        &format!("/api/v1/health?tenant={}", o.district.yingfeng.id),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows: Vec<Value> = serde_json::from_str(&body)?;
    let future: i64 = rows
        .iter()
        .filter_map(|r| r["future_visits"].as_i64())
        .sum();
    assert_eq!(future, 1, "{body}");
    Ok(())
}
