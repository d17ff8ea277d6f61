//! Power cuts, not only kills. SIGKILL keeps the page cache, so the kill
//! tests would pass with `synchronous=OFF`. Here the server and a phone
//! keep their SQLite files on the power-cut VFS (`doorstep_power_cut`),
//! which forgets every write not yet fsynced when the power goes. Each
//! cycle records visits and syncs them, cuts the power of the server, the
//! phone or both at a random moment, restores their disks as a disk without
//! its cache holds them, restarts what was cut, and checks both promises:
//! every visit whose `record_visit` returned is in the phone's store, every
//! visit the server had acknowledged is in the server's. At the end the
//! phone syncs once more and the server holds every visit the phone
//! recorded.
//!
//! `DOORSTEP_POWER_CUT_CYCLES` sets the number of cycles (25 by default;
//! 200 for the long run) and `DOORSTEP_POWER_CUT_SEED` the seed of the
//! moments and victims (printed; the timing of the tasks is not replayed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use doorstep_client::{
    Client, ClientConfig, EditState, Fen, NewMember, NewVisit, RecordId, VisitDays, VisitKind,
};
use doorstep_power_cut as power;
use doorstep_protocol::DocumentId;
use doorstep_protocol::mutation::Seeded;
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_tests::{TestServer, sdk_device, test_store_key, today};
use tokio::sync::Mutex;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn phone_config(dir: &Path, url: &str) -> ClientConfig {
    let mut config = ClientConfig::new(dir, url, test_store_key());
    config.store_vfs = Some(power::VFS_NAME.into());
    config.sync_interval = None;
    config.sync_deadline = Duration::from_secs(5);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config
}

fn visit(member: RecordId, n: u64) -> NewVisit {
    NewVisit {
        date: today(),
        member_id: member,
        kind: VisitKind::Routine,
        visitors: vec!["断电测试".into()],
        aid_cash: Fen::from_yuan(i64::try_from(n % 50).unwrap_or(0)),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: Some(format!("第{n}次")),
        follow_up: None,
    }
}

/// The visits of this month's log as the server stored it.
async fn server_visits(server: &TestServer, log: DocumentId) -> anyhow::Result<BTreeSet<RecordId>> {
    let doc = server.stored_document(log).await?;
    Ok(MonthlyLog::load(&doc).visits.into_keys().collect())
}

/// A sync right after a restart may meet the old connection's end first.
async fn sync_with_retries(phone: &Client) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..20 {
        match phone.sync_now().await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!("the phone never synced: {last:?}"))
}

#[derive(Debug, Clone, Copy)]
enum Victim {
    Server,
    Phone,
    Both,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_or_returned_is_lost_at_a_power_cut() -> anyhow::Result<()> {
    power::register().map_err(anyhow::Error::msg)?;
    let cycles = env_or("DOORSTEP_POWER_CUT_CYCLES", 25);
    let seed = env_or("DOORSTEP_POWER_CUT_SEED", 0x5eed_d00d).max(1);
    eprintln!("power cut: {cycles} cycles, seed {seed}");
    let mut schedule = Seeded::new(seed);

    let server_dir = tempfile::tempdir()?;
    let server_path: PathBuf = server_dir.path().to_path_buf();
    let mut server = TestServer::spawn_at_on_vfs(
        server_dir,
        "127.0.0.1:0".parse()?,
        Some(power::VFS_NAME),
        |_| {},
    )
    .await?;
    let (addr, url) = (server.addr, server.http_url());
    let d = server.district().await?;
    let phone_dir = tempfile::tempdir()?;
    let phone_path = phone_dir.path().to_path_buf();
    let mut phone = sdk_device(&server.store, &url, d.yingfeng.id, &phone_path, |c| {
        *c = phone_config(&phone_path, &url);
    })
    .await?;
    let member = phone
        .add_member(NewMember {
            name: "断电".into(),
            ..NewMember::default()
        })
        .await?;
    let log = DocumentId::monthly_log(d.yingfeng.id, today().month());
    let returned = Arc::new(Mutex::new(Vec::<RecordId>::new()));
    let (mut lost_returned, mut lost_acknowledged) = (0usize, 0usize);
    let mut acknowledged_checked = 0usize;
    // Writes the cuts undid: none would mean the cuts never bit.
    let mut undone = 0usize;

    for cycle in 0..cycles {
        // A calm moment: a few visits, synced and acknowledged. A sync
        // under a stream of edits ends only with the stream, so these are
        // the acknowledgements the cut is sure to follow.
        let mut settled = Vec::new();
        for n in 0..=schedule.below(5) {
            let id = phone
                .record_visit(visit(member, cycle * 1000 + 900 + n))
                .await?;
            returned.lock().await.push(id);
            settled.push(id);
        }
        sync_with_retries(&phone).await?;
        for id in &settled {
            assert!(
                matches!(
                    phone.edit_state(*id).await?,
                    EditState::Acknowledged | EditState::Counted
                ),
                "a synced visit is not acknowledged"
            );
        }

        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn({
            let (phone, stop, returned) = (phone.clone(), stop.clone(), returned.clone());
            async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    match phone.record_visit(visit(member, cycle * 1000 + n)).await {
                        Ok(id) => returned.lock().await.push(id),
                        // The phone's power is off: nothing more is written.
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }
        });
        let syncer = tokio::spawn({
            let (phone, stop) = (phone.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    if phone.sync_now().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(10 + schedule.below(120))).await;

        // What the server acknowledged before the cut (it may acknowledge
        // more before the cut lands; those are not counted here): the
        // settled visits, and of the visits under way those the phone
        // already saw acknowledged (`edit_state` reads every document, so
        // twenty of them, spread out).
        let ids = returned.lock().await.clone();
        let step = (ids.len() / 20).max(1);
        let mut acknowledged = settled;
        for id in ids.iter().rev().step_by(step).take(20) {
            if matches!(
                phone.edit_state(*id).await,
                Ok(EditState::Acknowledged | EditState::Counted)
            ) {
                acknowledged.push(*id);
            }
        }
        let victim = match schedule.below(3) {
            0 => Victim::Server,
            1 => Victim::Phone,
            _ => Victim::Both,
        };
        let (cut_server, cut_phone) = match victim {
            Victim::Server => (true, false),
            Victim::Phone => (false, true),
            Victim::Both => (true, true),
        };
        if cut_server {
            power::cut(&server_path);
        }
        if cut_phone {
            power::cut(&phone_path);
        }
        // What returned up to the cut is what the phone promised.
        tokio::time::sleep(Duration::from_millis(schedule.below(30))).await;
        stop.store(true, Ordering::SeqCst);
        // A task that panicked (the SDK going down on a failed write) fails
        // the test here.
        tokio::time::timeout(Duration::from_secs(30), writer).await??;
        tokio::time::timeout(Duration::from_secs(30), syncer).await??;

        if cut_phone {
            // Closing may fail (its disk is gone); the connections close.
            let _ = phone.close().await;
            drop(phone);
            undone += power::restore(&phone_path)?;
            phone = Client::open(phone_config(&phone_path, &url)).await?;
        }
        if cut_server {
            let dir = server.stop().await;
            undone += power::restore(&server_path)?;
            server = TestServer::spawn_at_on_vfs(dir, addr, Some(power::VFS_NAME), |_| {}).await?;
        }

        // The phone's promise: every visit whose call returned.
        let on_phone: BTreeSet<RecordId> = phone
            .visits_on(VisitDays::Month(today().month()))
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for id in returned.lock().await.iter() {
            if !on_phone.contains(id) {
                lost_returned += 1;
                eprintln!("cycle {cycle} ({victim:?}): returned visit {id} is gone from the phone");
            }
        }
        // The server's promise: every visit it acknowledged.
        let on_server = server_visits(&server, log).await?;
        for id in &acknowledged {
            acknowledged_checked += 1;
            if !on_server.contains(id) {
                lost_acknowledged += 1;
                eprintln!(
                    "cycle {cycle} ({victim:?}): acknowledged visit {id} is gone from the server"
                );
            }
        }
    }

    // Everything the phone recorded reaches the server once it syncs.
    sync_with_retries(&phone).await?;
    let on_server = server_visits(&server, log).await?;
    let returned = returned.lock().await.clone();
    let missing = returned.iter().filter(|id| !on_server.contains(id)).count();

    eprintln!(
        "power cut: {cycles} cycles, {} visits returned, {acknowledged_checked} acknowledgements checked; \
         lost: {lost_returned} returned, {lost_acknowledged} acknowledged, {missing} missing on the server after the last sync; \
         {undone} unsynced writes undone by the cuts, {} operations refused after them; {} syncs on the server's disk, {} on the phone's",
        returned.len(),
        power::refusals_under(&server_path) + power::refusals_under(&phone_path),
        power::syncs_under(&server_path),
        power::syncs_under(&phone_path),
    );
    assert_eq!(lost_returned, 0, "visits whose call returned were lost");
    assert_eq!(lost_acknowledged, 0, "acknowledged visits were lost");
    assert_eq!(missing, 0, "visits never reached the server");
    assert!(
        acknowledged_checked > 0,
        "no acknowledgement was ever checked"
    );
    // The cuts bit: writes and syncs after them were refused (a cut between
    // two fsynced commits leaves nothing to undo, so `undone` may be 0).
    let refused = power::refusals_under(&server_path) + power::refusals_under(&phone_path);
    assert!(
        refused > 0,
        "no cut ever refused a write: the VFS is not in the path"
    );
    assert!(
        power::syncs_under(&server_path) > 0 && power::syncs_under(&phone_path) > 0,
        "no fsync seen: a store is not on the VFS"
    );
    assert!(
        returned.len() as u64 >= cycles,
        "too few visits to mean anything"
    );
    phone.close().await?;
    drop(server.stop().await);
    Ok(())
}
