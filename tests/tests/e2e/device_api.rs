//! The device API against the real server: reads of every record type,
//! corrections and deletions that reach the district rollup, conflicts
//! resolved by value (map-valued ones whole), and live lists.

use std::sync::Arc;
use std::time::Duration;

use doorstep_client::{
    Client, ClientError, CorrectionAction, Fen, FollowUp, FundDirection, LogRecordKind,
    MemberFilter, MemberUpdate, MigrantContact, Months, NewActivity, NewFundEntry, NewMember,
    NewTeam, NewTraining, NewVisit, RecordId, Resolution, TeamPerson, TrainingLevel, VisitDays,
    VisitKind,
};
use doorstep_server::tenancy::Role;
use doorstep_tests::{District, TestServer, eventually, sdk_device};
use serde_json::Value;
use tokio::sync::mpsc;

/// Long enough for a slow CI machine; only reached when a test fails.
const PATIENCE: Duration = Duration::from_secs(20);

struct Branch {
    server: TestServer,
    district: District,
    devices: Vec<Client>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn branch(n: usize) -> anyhow::Result<Branch> {
    let server = TestServer::spawn().await?;
    let district = server.district().await?;
    let mut devices = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir()?;
        devices.push(
            sdk_device(
                &server.store,
                &server.http_url(),
                district.yingfeng.id,
                dir.path(),
                |_| {},
            )
            .await?,
        );
        dirs.push(dir);
    }
    Ok(Branch {
        server,
        district,
        devices,
        _dirs: dirs,
    })
}

async fn sync_all(devices: &[Client]) -> anyhow::Result<()> {
    for device in devices {
        device.sync_now().await?;
    }
    Ok(())
}

fn visit(date: &str, member: RecordId, cash_fen: i64) -> NewVisit {
    NewVisit {
        date: date.parse().expect("date"),
        member_id: member,
        kind: VisitKind::HolidayCondolence,
        visitors: vec!["王志愿".into()],
        aid_cash: Fen(cash_fen),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: None,
        follow_up: None,
    }
}

async fn member(device: &Client, name: &str) -> anyhow::Result<RecordId> {
    Ok(device
        .add_member(NewMember {
            name: name.into(),
            ..NewMember::default()
        })
        .await?)
}

async fn district_total(b: &Branch, admin: &str, query: &str) -> anyhow::Result<Value> {
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/rollups?{query}", b.server.http_url()))
        .bearer_auth(admin)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "rollups: {}",
        response.status()
    );
    Ok(response.json::<Value>().await?["total"].clone())
}

#[tokio::test]
async fn a_corrected_aid_amount_and_a_deleted_visit_are_reflected_in_the_district_rollup()
-> anyhow::Result<()> {
    let b = branch(1).await?;
    let phone = &b.devices[0];
    let admin = b
        .server
        .login_as("district", Role::DistrictAdmin, b.district.district.id)
        .await?;
    let m = member(phone, "陈奶奶").await?;
    let mistyped = phone.record_visit(visit("2026-11-05", m, 100_000)).await?;
    let duplicate = phone.record_visit(visit("2026-11-06", m, 20_000)).await?;
    phone.sync_now().await?;
    eventually(PATIENCE, || async {
        Ok(district_total(&b, &admin, "month=2026-11").await?["visits"] == 2)
    })
    .await?;

    // The same checks as a new visit, with the field named.
    let refused = phone
        .correct_visit(mistyped, visit("2026-11-05", m, -1), "typo")
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Invalid { field, .. }) if field == "aid_cash"),
        "{refused:?}"
    );
    let moved = phone
        .correct_visit(mistyped, visit("2026-10-05", m, 10_000), "wrong month")
        .await;
    assert!(
        matches!(&moved, Err(ClientError::Invalid { field, .. }) if field == "date"),
        "{moved:?}"
    );

    phone
        .correct_visit(
            mistyped,
            visit("2026-11-05", m, 10_000),
            "1000 yuan, not 10000",
        )
        .await?;
    phone
        .delete_log_record(LogRecordKind::Visit, duplicate, "entered twice")
        .await?;
    assert_eq!(phone.visit(mistyped).await?.aid_cash, Fen(10_000));
    assert!(matches!(
        phone.visit(duplicate).await,
        Err(ClientError::NotFound { .. })
    ));
    let notes = phone.corrections(Months::One("2026-11".parse()?)).await?;
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert_eq!(notes[0].record_id, mistyped);
    assert_eq!(notes[0].action, CorrectionAction::Corrected);
    assert_eq!(notes[0].why, "1000 yuan, not 10000");
    let before: Value = serde_json::from_str(&notes[0].before)?;
    assert_eq!(before["aid_cash_fen"], 100_000);
    assert_eq!(notes[1].record_id, duplicate);
    assert_eq!(notes[1].action, CorrectionAction::Deleted);
    assert_eq!(phone.corrections_of(duplicate).await?.len(), 1);

    phone.sync_now().await?;
    eventually(PATIENCE, || async {
        let total = district_total(&b, &admin, "month=2026-11").await?;
        Ok(total["visits"] == 1 && total["aid_cash_fen"] == 10_000)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn every_record_type_reads_back() -> anyhow::Result<()> {
    let b = branch(1).await?;
    let d = &b.devices[0];
    let m = member(d, "刘桂英").await?;
    let other = member(d, "张三").await?;
    let team = d
        .create_team(NewTeam {
            name: "夕阳红".into(),
            category: "elderly care".into(),
            founded_on: None,
        })
        .await?;
    d.add_to_team(
        team,
        TeamPerson::Member {
            member_id: m,
            backbone: true,
        },
    )
    .await?;
    let pairing = d
        .pair_members(other, m, "2026-11-01".parse()?, true)
        .await?;
    let entry = d
        .open_hardship_entry(doorstep_client::NewHardshipEntry {
            member_id: m,
            kind: doorstep_client::HardshipKind::Illness,
            opened_on: "2026-11-01".parse()?,
            needs: vec!["medicine".into()],
        })
        .await?;
    let activity = d
        .log_activity(NewActivity {
            date: "2026-11-03".parse()?,
            team_id: Some(team),
            title: "探望".into(),
            minutes: vec![("刘桂英".into(), 60), ("张三".into(), 30)],
        })
        .await?;
    let training = d
        .record_training(NewTraining {
            date: "2026-11-04".parse()?,
            level: TrainingLevel::Community,
            topic: "编织".into(),
            attendance: 12,
            attendees: vec![],
        })
        .await?;
    let fund = d
        .record_fund_entry(NewFundEntry {
            date: "2026-11-05".parse()?,
            direction: FundDirection::Donation,
            amount: Fen::from_yuan(500),
            member_id: None,
            purpose: None,
            note: None,
        })
        .await?;

    let teams = d.teams().await?;
    assert_eq!(teams.len(), 1);
    assert_eq!(teams[0].0, team);
    assert_eq!(teams[0].1.people.len(), 1);
    assert_eq!(d.pairings().await?[0].0, pairing);
    assert_eq!(d.hardship_entries(Some(m)).await?[0].0, entry);
    assert!(d.hardship_entries(Some(other)).await?.is_empty());
    assert_eq!(d.hardship_entry(entry).await?.needs.len(), 1);
    let november = Months::One("2026-11".parse()?);
    assert_eq!(d.activities(november).await?[0].0, activity);
    assert_eq!(d.trainings(Months::All).await?[0].0, training);
    assert_eq!(d.fund_entries(november).await?[0].0, fund);
    assert!(
        d.fund_entries(Months::One("2026-10".parse()?))
            .await?
            .is_empty()
    );

    // A correction that drops a participant drops their minutes.
    d.correct_activity(
        activity,
        NewActivity {
            date: "2026-11-03".parse()?,
            team_id: Some(team),
            title: "探望".into(),
            minutes: vec![("刘桂英".into(), 45)],
        },
        "张三 was not there",
    )
    .await?;
    let corrected = d.activities(november).await?.remove(0).1;
    assert_eq!(corrected.minutes.len(), 1);
    assert_eq!(corrected.total_minutes(), 45);
    d.delete_log_record(LogRecordKind::Training, training, "cancelled")
        .await?;
    assert!(d.trainings(Months::All).await?.is_empty());
    assert!(d.invalid_records().await?.is_empty());
    Ok(())
}

fn card(workplace: &str, phone: &str) -> MigrantContact {
    MigrantContact {
        workplace: Some(workplace.into()),
        card_no: Some(format!("card-{phone}")),
        contact_phone: Some(phone.into()),
        family_contact: None,
    }
}

#[tokio::test]
async fn two_devices_adding_a_migrant_card_offline_make_one_conflict_resolved_whole()
-> anyhow::Result<()> {
    let b = branch(2).await?;
    let d = &b.devices;
    let m = member(&d[0], "李建国").await?;
    sync_all(d).await?;

    let shenzhen = card("深圳 建筑工地", "13700000001");
    let tianjin = card("天津 港口", "13700000002");
    for (device, card) in [(&d[0], &shenzhen), (&d[1], &tianjin)] {
        device
            .update_member(
                m,
                MemberUpdate {
                    migrant: Some(Some(card.clone())),
                    ..MemberUpdate::default()
                },
            )
            .await?;
    }
    sync_all(d).await?;
    sync_all(d).await?;

    let conflicts = d[1].conflicts().await?;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let conflict = &conflicts[0];
    assert_eq!(conflict.field, "migrant");
    assert_eq!(conflict.values.len(), 2);
    let workplaces: Vec<String> = conflict
        .values
        .iter()
        .map(|v| {
            let json: Value = serde_json::from_str(&v.value).expect("a map reads as JSON");
            json["workplace"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert!(
        workplaces.contains(&"深圳 建筑工地".to_owned()),
        "{workplaces:?}"
    );
    assert!(
        workplaces.contains(&"天津 港口".to_owned()),
        "{workplaces:?}"
    );

    // Keep device 0's card, whole, whichever one the document shows now.
    let keep = conflict
        .values
        .iter()
        .find(|v| v.value.contains("深圳"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no 深圳 value"))?;
    d[1].resolve_conflict(conflict, Resolution::Keep(keep))
        .await?;
    sync_all(d).await?;
    sync_all(d).await?;
    for device in d {
        assert!(device.conflicts().await?.is_empty());
        assert_eq!(device.member(m).await?.migrant, Some(shenzhen.clone()));
        assert!(device.invalid_records().await?.is_empty());
    }

    // Entering a whole new card settles a map conflict too.
    for (device, card) in [(&d[0], &shenzhen), (&d[1], &tianjin)] {
        device
            .update_member(
                m,
                MemberUpdate {
                    migrant: Some(None),
                    ..MemberUpdate::default()
                },
            )
            .await?;
        device
            .update_member(
                m,
                MemberUpdate {
                    migrant: Some(Some(card.clone())),
                    ..MemberUpdate::default()
                },
            )
            .await?;
    }
    sync_all(d).await?;
    sync_all(d).await?;
    let conflict = d[0].conflicts().await?.remove(0);
    assert_eq!(conflict.field, "migrant");
    let refused = d[0]
        .resolve_conflict(&conflict, Resolution::Enter("北京".into()))
        .await;
    assert!(
        matches!(refused, Err(ClientError::Invalid { .. })),
        "{refused:?}"
    );
    d[0].resolve_conflict(
        &conflict,
        Resolution::Enter(r#"{"workplace": "北京 物流园", "contact_phone": "13700000003"}"#.into()),
    )
    .await?;
    sync_all(d).await?;
    sync_all(d).await?;
    for device in d {
        assert!(device.conflicts().await?.is_empty());
        let migrant = device.member(m).await?.migrant;
        assert_eq!(
            migrant,
            Some(MigrantContact {
                workplace: Some("北京 物流园".into()),
                card_no: None,
                contact_phone: Some("13700000003".into()),
                family_contact: None,
            })
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_resolution_made_before_a_third_value_arrived_is_refused_and_writes_nothing()
-> anyhow::Result<()> {
    let b = branch(3).await?;
    let d = &b.devices;
    let m = member(&d[0], "周大爷").await?;
    sync_all(d).await?;
    for (device, phone) in d.iter().zip(["13900000001", "13900000002", "13900000003"]) {
        device
            .update_member(
                m,
                MemberUpdate {
                    phone: Some(phone.into()),
                    ..MemberUpdate::default()
                },
            )
            .await?;
    }
    // Device 0 hears device 1's value only: a two-way conflict.
    d[0].sync_now().await?;
    d[1].sync_now().await?;
    d[0].sync_now().await?;
    let seen = d[0].conflicts().await?.remove(0);
    assert_eq!(seen.values.len(), 2, "{seen:?}");

    // Device 2's value arrives before the secretary's choice is written.
    d[2].sync_now().await?;
    d[0].sync_now().await?;
    let shown_before = d[0].member(m).await?.phone;
    let mine = seen
        .values
        .iter()
        .find(|v| v.mine)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no value of mine"))?;
    for resolution in [
        Resolution::Keep(mine.clone()),
        Resolution::Choose(0),
        Resolution::Enter("13900000009".into()),
    ] {
        let refused = d[0].resolve_conflict(&seen, resolution).await;
        match refused {
            Err(ClientError::ConflictChanged { field, now }) => {
                assert_eq!(field, "phone");
                assert_eq!(now.len(), 3, "{now:?}");
            }
            other => panic!("expected ConflictChanged, got {other:?}"),
        }
    }
    assert_eq!(d[0].member(m).await?.phone, shown_before, "nothing written");
    let fresh = d[0].conflicts().await?.remove(0);
    assert_eq!(fresh.values.len(), 3);

    // Resolving what is there now works, and everyone agrees.
    let keep = fresh
        .values
        .iter()
        .find(|v| v.value == "13900000003")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no value of device 2"))?;
    d[0].resolve_conflict(&fresh, Resolution::Keep(keep))
        .await?;
    sync_all(d).await?;
    sync_all(d).await?;
    for device in d {
        assert!(device.conflicts().await?.is_empty());
        assert_eq!(
            device.member(m).await?.phone.as_deref(),
            Some("13900000003")
        );
    }
    Ok(())
}

/// A listener that forwards every list to a channel the test waits on.
fn channel<T: Send + 'static>() -> (
    doorstep_client::Listener<T>,
    mpsc::UnboundedReceiver<Vec<T>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(move |list| {
            let _ = tx.send(list);
        }),
        rx,
    )
}

/// The next list that satisfies `wanted`, skipping intermediate ones.
async fn next_list<T>(
    rx: &mut mpsc::UnboundedReceiver<Vec<T>>,
    wanted: impl Fn(&[T]) -> bool,
) -> anyhow::Result<Vec<T>> {
    tokio::time::timeout(PATIENCE, async {
        while let Some(list) = rx.recv().await {
            if wanted(&list) {
                return Ok(list);
            }
        }
        anyhow::bail!("the listener was dropped")
    })
    .await
    .map_err(|_| anyhow::anyhow!("no such list within {PATIENCE:?}"))?
}

#[tokio::test]
async fn listeners_get_the_new_list_after_local_and_synced_changes_until_dropped()
-> anyhow::Result<()> {
    let b = branch(2).await?;
    let d = &b.devices;
    let (members_listener, mut members) = channel();
    let members_handle = d[0].observe_members(MemberFilter::default(), members_listener);
    assert!(next_list(&mut members, |l| l.is_empty()).await?.is_empty());

    let today: doorstep_client::Date = "2026-11-20".parse()?;
    let (visits_listener, mut visits) = channel();
    let visits_handle = d[0].observe_visits(VisitDays::Day(today), visits_listener);
    let (due_listener, mut due) = channel();
    let due_handle = d[0].observe_follow_ups_due(today, due_listener);
    next_list(&mut visits, |l| l.is_empty()).await?;
    next_list(&mut due, |l| l.is_empty()).await?;

    // A local edit.
    let local = member(&d[0], "本机").await?;
    let list = next_list(&mut members, |l| l.len() == 1).await?;
    assert_eq!(list[0].0, local);

    // A change synced from another device.
    d[0].sync_now().await?;
    d[1].sync_now().await?;
    let remote = member(&d[1], "别的手机").await?;
    d[1].record_visit(NewVisit {
        follow_up: Some(FollowUp {
            due: "2026-11-20".parse()?,
            action: "送药".into(),
            done: false,
        }),
        ..visit("2026-11-20", remote, 5_000)
    })
    .await?;
    d[1].sync_now().await?;
    d[0].sync_now().await?;
    let list = next_list(&mut members, |l| l.len() == 2).await?;
    assert!(list.iter().any(|(id, _)| *id == remote));
    let today_visits = next_list(&mut visits, |l| l.len() == 1).await?;
    assert_eq!(today_visits[0].1.member_id, remote);
    let visit_id = today_visits[0].0;
    next_list(&mut due, |l| l.len() == 1).await?;

    // Done follow-ups leave the list; a visit on another day is not today's.
    d[0].complete_follow_up(visit_id).await?;
    next_list(&mut due, |l| l.is_empty()).await?;
    d[0].record_visit(visit("2026-11-21", local, 100)).await?;

    // Dropped: the listener is released and never called again.
    while members.try_recv().is_ok() {}
    drop(members_handle);
    member(&d[0], "之后").await?;
    let after = tokio::time::timeout(PATIENCE, members.recv()).await?;
    assert!(
        after.is_none(),
        "called after the handle was dropped: {after:?}"
    );
    visits_handle.cancel();
    assert!(
        tokio::time::timeout(PATIENCE, async {
            while let Some(list) = visits.recv().await {
                // Only the lists sent before the cancel may still be queued.
                assert_eq!(list.len(), 1, "another day's visit is not today's");
            }
        })
        .await
        .is_ok()
    );
    drop(due_handle);
    Ok(())
}
