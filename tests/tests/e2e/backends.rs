//! The same data gives the same figures on both backends: one dataset
//! synced through the SDK into a server on SQLite and into one on
//! PostgreSQL, and every rollup, breakdown, health listing and CSV compared
//! byte for byte (each server's own ids replaced by the units' names).
//!
//! Needs `DOORSTEP_TEST_POSTGRES` (the test script starts a throwaway
//! PostgreSQL and sets it); without it the test fails and says so.

use std::collections::BTreeSet;

use doorstep_client::{
    Client, Fen, FollowUp, HardshipKind, MemberKind, MigrantContact, NewHardshipEntry, NewMember,
    NewTraining, NewVisit, TrainingLevel, VisitKind,
};
use doorstep_server::tenancy::Role;
use doorstep_tests::{District, TestServer, sdk_device};

struct Office {
    server: TestServer,
    district: District,
    admin: String,
    phones: [Client; 2],
    _dirs: [tempfile::TempDir; 2],
}

async fn office(server: TestServer) -> anyhow::Result<Office> {
    let district = server.district().await?;
    let admin = server
        .login_as("district", Role::DistrictAdmin, district.district.id)
        .await?;
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let yingfeng = sdk_device(
        &server.store,
        &server.http_url(),
        district.yingfeng.id,
        a.path(),
        |_| {},
    )
    .await?;
    let fenghuangting = sdk_device(
        &server.store,
        &server.http_url(),
        district.fenghuangting.id,
        b.path(),
        |_| {},
    )
    .await?;
    Ok(Office {
        server,
        district,
        admin,
        phones: [yingfeng, fenghuangting],
        _dirs: [a, b],
    })
}

fn visit(date: &str, member: doorstep_client::RecordId, cash: i64) -> NewVisit {
    NewVisit {
        date: date.parse().expect("date"),
        member_id: member,
        kind: VisitKind::HolidayCondolence,
        visitors: vec!["志愿者".into()],
        aid_cash: Fen(cash),
        aid_goods: Fen(1_500),
        goods_description: None,
        notes: None,
        follow_up: None,
    }
}

/// The same edits on each phone of each office: members of every kind, a
/// hardship register, visits over several months (one with a follow-up
/// left open, one later deleted), a training.
async fn record_dataset(office: &Office) -> anyhow::Result<()> {
    for (n, phone) in office.phones.iter().enumerate() {
        let scale = n as i64 + 1;
        let worker = phone
            .add_member(NewMember {
                name: format!("王{n}"),
                kinds: BTreeSet::from([MemberKind::Hardship, MemberKind::NoPost]),
                household: Some(format!("户{n}")),
                ..NewMember::default()
            })
            .await?;
        let migrant = phone
            .add_member(NewMember {
                name: format!("李{n}"),
                kinds: BTreeSet::from([MemberKind::Migrant]),
                migrant: Some(MigrantContact {
                    workplace: Some("物流园".into()),
                    card_no: None,
                    contact_phone: None,
                    family_contact: None,
                }),
                ..NewMember::default()
            })
            .await?;
        phone
            .open_hardship_entry(NewHardshipEntry {
                member_id: worker,
                kind: HardshipKind::Illness,
                opened_on: "2026-01-10".parse()?,
                needs: vec!["药费".into()],
            })
            .await?;
        phone
            .record_visit(visit("2026-01-20", worker, 20_000 * scale))
            .await?;
        phone
            .record_visit(visit("2026-02-03", migrant, 5_000))
            .await?;
        let mut open = visit("2026-11-05", worker, 12_345 * scale);
        open.follow_up = Some(FollowUp {
            due: "2026-11-20".parse()?,
            action: "复查".into(),
            done: false,
        });
        phone.record_visit(open).await?;
        let gone = phone
            .record_visit(visit("2026-11-06", migrant, 99_999))
            .await?;
        phone
            .delete_log_record(doorstep_client::LogRecordKind::Visit, gone, "重复录入")
            .await?;
        phone
            .record_training(NewTraining {
                date: "2026-03-04".parse()?,
                level: TrainingLevel::Community,
                topic: "编织".into(),
                attendance: 9 * scale,
                attendees: vec![],
            })
            .await?;
        phone.sync_now().await?;
    }
    Ok(())
}

/// Every figure the office API gives, with this server's ids replaced by
/// the units' names (the ids differ between the two servers, nothing else
/// may).
async fn figures(office: &Office) -> anyhow::Result<Vec<(String, String)>> {
    let d = &office.district;
    let units = [
        &d.district,
        &d.xiangyang,
        &d.dongfeng,
        &d.yingfeng,
        &d.fenghuangting,
    ];
    let mut paths = Vec::new();
    for period in ["year=2026", "quarter=2026-Q1", "month=2026-11", "year=2025"] {
        paths.push(format!("/api/v1/rollups?{period}"));
        paths.push(format!("/api/v1/rollups?{period}&format=csv"));
        for by in [
            "visits_by_kind",
            "visits_by_month",
            "hardship_by_kind",
            "training_by_level",
            "teams_by_category",
        ] {
            paths.push(format!("/api/v1/rollups/breakdown?{period}&by={by}"));
        }
    }
    for unit in units {
        paths.push(format!("/api/v1/rollups?year=2026&tenant={}", unit.id));
    }
    paths.push("/api/v1/health".into());
    let mut answers = Vec::new();
    for path in paths {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", office.server.http_url()))
            .bearer_auth(&office.admin)
            .send()
            .await?;
        let status = response.status();
        let mut body = response.text().await?;
        assert!(status.is_success(), "{path}: {status} {body}");
        for unit in units {
            body = body.replace(&unit.id.to_string(), &unit.name);
        }
        let path = units
            .iter()
            .fold(path, |p, unit| p.replace(&unit.id.to_string(), &unit.name));
        answers.push((path, body));
    }
    Ok(answers)
}

#[tokio::test]
async fn one_dataset_gives_the_same_figures_and_csv_on_sqlite_and_postgresql() -> anyhow::Result<()>
{
    let database = doorstep_tests::postgres_database_for_app().await?;
    let on_sqlite = office(doorstep_tests::on_sqlite(TestServer::spawn()).await?).await?;
    let on_postgres = office(TestServer::spawn_with(|c| c.database = database).await?).await?;
    assert!(matches!(
        on_postgres.server.store.backend(),
        doorstep_server::store::Backend::Postgres
    ));
    record_dataset(&on_sqlite).await?;
    record_dataset(&on_postgres).await?;

    let (sqlite, postgres) = (figures(&on_sqlite).await?, figures(&on_postgres).await?);
    // Not vacuous: the year's figures count the visits, the aid and the
    // deletion, on either.
    let year = &sqlite[0].1;
    assert!(year.contains("\"visits\":6"), "{year}");
    assert_eq!(sqlite.len(), postgres.len());
    for ((path, a), (_, b)) in sqlite.iter().zip(&postgres) {
        assert_eq!(a, b, "{path} differs between SQLite and PostgreSQL");
    }
    Ok(())
}
