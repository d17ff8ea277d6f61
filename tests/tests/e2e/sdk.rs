//! The device SDK against the real server: offline edits, conflicts,
//! durability across a killed process, a server outage, revocation.

use std::time::Duration;

use doorstep_client::{
    Client, ClientError, Fen, MemberKind, MemberUpdate, NewMember, NewVisit, RecordId, Resolution,
    SyncStatus, VisitKind,
};
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_protocol::{DocumentId, Month};
use doorstep_tests::{District, TestServer, eventually, sdk_device};
use tokio::process::Command;

fn visit(date: &str, member: RecordId, cash_yuan: i64) -> NewVisit {
    NewVisit {
        date: date.parse().expect("date"),
        member_id: member,
        kind: VisitKind::HolidayCondolence,
        visitors: vec!["王志愿".into()],
        aid_cash: Fen::from_yuan(cash_yuan),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: None,
        follow_up: None,
    }
}

struct Branch {
    server: TestServer,
    district: District,
    devices: Vec<Client>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn branch_with_devices(
    n: usize,
    configure: impl Fn(&mut doorstep_client::ClientConfig) + Copy,
) -> anyhow::Result<Branch> {
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
                configure,
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

/// Every permutation of 0..3.
const ORDERS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

#[tokio::test]
async fn three_offline_devices_converge_in_every_reconnect_order_and_conflicts_are_resolvable()
-> anyhow::Result<()> {
    for order in ORDERS {
        let b = branch_with_devices(3, |_| {}).await?;
        let d = &b.devices;
        let member = d[0]
            .add_member(NewMember {
                name: "刘桂英".into(),
                kinds: [MemberKind::Hardship].into(),
                phone: Some("13800000000".into()),
                ..NewMember::default()
            })
            .await?;
        sync_all(d).await?;

        // Offline: visits everywhere, and edits to one member.
        let mut visits = Vec::new();
        for (i, device) in d.iter().enumerate() {
            for day in 0..=i {
                visits.push(
                    device
                        .record_visit(visit(&format!("2026-11-{:02}", 10 + day), member, 100))
                        .await?,
                );
            }
        }
        d[0].update_member(
            member,
            MemberUpdate {
                phone: Some("13911111111".into()),
                ..MemberUpdate::default()
            },
        )
        .await?;
        d[1].update_member(
            member,
            MemberUpdate {
                address: Some("迎风里 3 号".into()),
                ..MemberUpdate::default()
            },
        )
        .await?;
        d[2].update_member(
            member,
            MemberUpdate {
                phone: Some("13922222222".into()),
                ..MemberUpdate::default()
            },
        )
        .await?;
        for device in d {
            assert!(device.pending_changes().await? > 0);
        }

        // Reconnect in this order, then once more so everyone hears everyone.
        for &i in &order {
            d[i].sync_now().await?;
        }
        for &i in &order {
            d[i].sync_now().await?;
        }
        let roster = DocumentId::roster(b.district.yingfeng.id);
        let log = DocumentId::monthly_log(b.district.yingfeng.id, "2026-11".parse()?);
        for doc in [roster, log] {
            let heads = d[0].heads(doc).await?;
            for device in &d[1..] {
                assert_eq!(device.heads(doc).await?, heads, "order {order:?}");
            }
        }
        for device in d {
            assert_eq!(device.pending_changes().await?, 0, "order {order:?}");
        }

        // The server counts every visit exactly once.
        let stored = MonthlyLog::load(&b.server.stored_document(log).await?);
        let mut stored_ids: Vec<RecordId> = stored.visits.keys().copied().collect();
        stored_ids.sort();
        visits.sort();
        assert_eq!(stored_ids, visits, "order {order:?}");

        // Different fields both kept; the same field is a conflict everywhere.
        for device in d {
            let m = device.member(member).await?;
            assert_eq!(m.address.as_deref(), Some("迎风里 3 号"));
            assert!(["13911111111", "13922222222"].contains(&m.phone.as_deref().unwrap_or("")));
            let conflicts = device.conflicts().await?;
            assert_eq!(conflicts.len(), 1, "order {order:?}: {conflicts:?}");
            assert_eq!(conflicts[0].field, "phone");
            let mut values: Vec<&str> = conflicts[0]
                .values
                .iter()
                .map(|v| v.value.as_str())
                .collect();
            values.sort();
            assert_eq!(values, vec!["13911111111", "13922222222"]);
            assert!(conflicts[0].values.iter().all(|v| v.at_unix_secs > 0));
        }
        assert_eq!(
            d[0].conflicts().await?[0]
                .values
                .iter()
                .filter(|v| v.mine)
                .count(),
            1
        );

        // The secretary's device settles it; after sync, everyone agrees.
        let conflict = d[1].conflicts().await?.remove(0);
        d[1].resolve_conflict(&conflict, Resolution::Enter("13933333333".into()))
            .await?;
        sync_all(d).await?;
        sync_all(d).await?;
        for device in d {
            assert!(device.conflicts().await?.is_empty());
            assert_eq!(
                device.member(member).await?.phone.as_deref(),
                Some("13933333333")
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn invalid_input_is_refused_before_anything_is_written() -> anyhow::Result<()> {
    let b = branch_with_devices(1, |_| {}).await?;
    let device = &b.devices[0];
    let member = device
        .add_member(NewMember {
            name: "张三".into(),
            ..NewMember::default()
        })
        .await?;
    let pending = device.pending_changes().await?;

    let negative = NewVisit {
        aid_cash: Fen(-1),
        ..visit("2026-11-02", member, 0)
    };
    assert!(matches!(
        device.record_visit(negative).await,
        Err(ClientError::Invalid { field, .. }) if field == "aid_cash"
    ));
    let stranger = visit("2026-11-02", RecordId::new_v7(), 10);
    assert!(matches!(
        device.record_visit(stranger).await,
        Err(ClientError::NotFound { .. })
    ));
    assert!(matches!(
        device.add_member(NewMember::default()).await,
        Err(ClientError::Invalid { field, .. }) if field == "name"
    ));
    assert!("2026-02-30".parse::<doorstep_client::Date>().is_err());
    assert_eq!(
        device.pending_changes().await?,
        pending,
        "nothing was written"
    );
    assert!(device.visits("2026-11".parse()?, false).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_edit_survives_the_device_process_being_killed_right_after_it_returns()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let binary = env!("CARGO_BIN_EXE_doorstep-device");
    let data = dir.path().to_str().expect("utf-8 path");
    let url = server.http_url();
    let run = |args: Vec<String>| {
        let mut command = Command::new(binary);
        command.arg(data).arg(&url).args(args).kill_on_drop(true);
        command
    };
    let code = doorstep_server::admin::issue_enrollment_code(
        &server.store,
        d.yingfeng.id,
        "phone",
        1,
        "test",
    )
    .await?
    .code;
    assert!(run(vec!["enroll".into(), code]).status().await?.success());
    let out = run(vec!["add-member".into(), "赵大妈".into()])
        .output()
        .await?;
    let member = String::from_utf8(out.stdout)?
        .trim()
        .strip_prefix("member ")
        .expect("member id")
        .to_owned();

    // Record a visit; kill the process the moment it reports the edit done.
    let mut child = run(vec![
        "record-visit".into(),
        member,
        "2026-11-20".into(),
        "50000".into(),
        "--hold".into(),
    ])
    .stdout(std::process::Stdio::piped())
    .spawn()?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        child.stdout.take().expect("stdout"),
    ));
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .expect("a line");
    let visit: RecordId = line.strip_prefix("recorded ").expect("visit id").parse()?;
    child.kill().await?;

    // A new process of the same device still has it, and syncs it.
    assert!(run(vec!["sync".into()]).status().await?.success());
    let log = DocumentId::monthly_log(d.yingfeng.id, "2026-11".parse()?);
    let stored = MonthlyLog::load(&server.stored_document(log).await?);
    assert_eq!(stored.visits[&visit].aid_cash, Fen(50000));
    Ok(())
}

#[tokio::test]
async fn devices_resync_by_themselves_after_a_server_outage() -> anyhow::Result<()> {
    let b = branch_with_devices(2, |c| {
        c.backoff_initial = Duration::from_millis(100);
        c.backoff_max = Duration::from_millis(800);
        c.sync_interval = Some(Duration::from_secs(60));
    })
    .await?;
    let member = b.devices[0]
        .add_member(NewMember {
            name: "孙阿姨".into(),
            ..NewMember::default()
        })
        .await?;
    sync_all(&b.devices).await?;
    let background: Vec<_> = b
        .devices
        .iter()
        .map(Client::start_background_sync)
        .collect();
    let addr = b.server.addr;
    let branch = b.district.yingfeng.id;
    let data_dir = b.server.stop().await;

    // The server is down; the devices keep working.
    let mut visits = Vec::new();
    for (i, device) in b.devices.iter().enumerate() {
        visits.push(
            device
                .record_visit(visit(&format!("2026-11-0{}", i + 1), member, 200))
                .await?,
        );
        eventually(Duration::from_secs(5), || async {
            Ok(matches!(device.status(), SyncStatus::Offline { .. }))
        })
        .await?;
    }

    let server = TestServer::spawn_at(data_dir, addr, |_| {}).await?;
    let log = DocumentId::monthly_log(branch, "2026-11".parse()?);
    eventually(Duration::from_secs(10), || async {
        let stored = MonthlyLog::load(&server.stored_document(log).await?);
        Ok(visits.iter().all(|v| stored.visits.contains_key(v)))
    })
    .await?;
    for device in &b.devices {
        eventually(Duration::from_secs(5), || async {
            Ok(matches!(device.status(), SyncStatus::UpToDate { .. })
                && device.pending_changes().await? == 0)
        })
        .await?;
    }
    for sync in background {
        sync.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn two_devices_open_a_new_month_offline_and_both_visits_arrive() -> anyhow::Result<()> {
    let b = branch_with_devices(2, |_| {}).await?;
    let member = b.devices[0]
        .add_member(NewMember {
            name: "钱叔".into(),
            ..NewMember::default()
        })
        .await?;
    sync_all(&b.devices).await?;
    // The first day of a month nobody has opened (next month), without signal.
    let now = time::OffsetDateTime::now_utc();
    let month = Month::new(now.year(), now.month() as u8)
        .expect("month")
        .next();
    let day = month.first_day().to_string();
    let first = b.devices[0].record_visit(visit(&day, member, 300)).await?;
    let second = b.devices[1].record_visit(visit(&day, member, 400)).await?;
    sync_all(&b.devices).await?;
    sync_all(&b.devices).await?;
    let stored = MonthlyLog::load(
        &b.server
            .stored_document(DocumentId::monthly_log(b.district.yingfeng.id, month))
            .await?,
    );
    assert!(stored.visits.contains_key(&first) && stored.visits.contains_key(&second));
    for device in &b.devices {
        let visits: Vec<RecordId> = device
            .visits(month, false)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(visits.len(), 2);
        let mine = device.visits(month, true).await?;
        assert_eq!(mine.len(), 1);
    }
    let history = b.devices[1].member_history(member).await?;
    assert_eq!(history.aid_total, Fen::from_yuan(700));
    Ok(())
}

#[tokio::test]
async fn a_revoked_device_stops_syncing_reports_why_and_can_wipe_its_data() -> anyhow::Result<()> {
    let b = branch_with_devices(1, |c| c.backoff_initial = Duration::from_millis(50)).await?;
    let device = b.devices[0].clone();
    device.sync_now().await?;
    let background = device.start_background_sync();
    doorstep_server::admin::revoke_device(
        &b.server.store,
        device.device_id().expect("enrolled").parse()?,
        "test",
    )
    .await?;
    device
        .add_member(NewMember {
            name: "after revocation".into(),
            ..NewMember::default()
        })
        .await?;
    eventually(Duration::from_secs(10), || async {
        Ok(matches!(device.status(), SyncStatus::Revoked { .. }))
    })
    .await?;
    assert!(matches!(
        device.sync_now().await,
        Err(ClientError::Revoked(_))
    ));
    background.stop().await;

    let data_file = b._dirs[0].path().join("device.db");
    assert!(data_file.exists());
    device.wipe().await?;
    assert!(!data_file.exists());
    Ok(())
}
