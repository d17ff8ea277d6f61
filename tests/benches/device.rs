//! The device SDK on a phone's terms: memory over a long history, and how
//! fast an edit reaches another connected device.
//!
//! Memory: a device with BENCH_MONTHS months (24) of BENCH_VISITS visits a
//! month (300) reads every month's visits once, in a fresh process each
//! time (so one run's allocations do not hide the other's), keeping at most
//! 3 months in memory and then all of them. Peak RSS (VmHWM) of each.
//!
//! Observers: on the same device, BENCH_EDITS (30) visits recorded one
//! after another, then again with three observers live (members, today's
//! visits, follow-ups due across all months, one due in the oldest month),
//! each re-running after every edit; medians, and their ratio (target:
//! at most 2x).
//!
//! Store size: a fresh device of another branch records BENCH_DAY_VISITS
//! (300) visits today to 60 members, each with its own notes, one after
//! another (the day's compactions happen on the way), then syncs;
//! the store's bytes on disk (database, log and its index) against the
//! bytes of the documents' chunks, before and after the sync, and per
//! 1,000 visits (target: at most 2x the chunk bytes).
//!
//! Push: two devices hold live connections with re-checks off; one records
//! a visit, the other is woken by the change notification. The latency is
//! compared with the local edit itself (the visit on the first phone's
//! disk), in one run; medians of BENCH_PUSHES (30).
//!
//! `cargo bench -p doorstep-tests --bench device`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use doorstep_client::{
    Client, ClientConfig, Fen, FollowUp, MemberFilter, NewMember, NewVisit, RecordId, SyncStatus,
    VisitDays, VisitKind,
};
use doorstep_protocol::{Date, Month};
use doorstep_tests::{TestServer, eventually, sdk_device, test_store_key};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn visit(date: Date, member: RecordId) -> NewVisit {
    NewVisit {
        date,
        member_id: member,
        kind: VisitKind::Routine,
        visitors: vec!["志愿者".into()],
        aid_cash: Fen::from_yuan(10),
        aid_goods: Fen::ZERO,
        goods_description: Some("米和油".into()),
        notes: Some("家中老人身体尚可".into()),
        follow_up: None,
    }
}

/// `VmHWM` and `VmRSS` of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The child: opens the prepared store offline and reads every month.
async fn walk(dir: &str, max_months: usize) -> anyhow::Result<()> {
    let mut config = ClientConfig::new(dir, "http://127.0.0.1:9", test_store_key());
    config.max_loaded_months = max_months;
    let client = Client::open(config).await?;
    let months: Vec<Month> = std::env::var("BENCH_WALK_MONTHS")?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let mut visits = 0;
    for month in months {
        visits += client.visits(month, false).await?.len();
    }
    let (peak, now) = memory();
    println!(
        "{visits} {peak:.1} {now:.1} {}",
        client.loaded_documents().await?.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let (Ok(dir), Ok(max)) = (
        std::env::var("BENCH_WALK_DIR"),
        std::env::var("BENCH_WALK_MAX"),
    ) {
        return walk(&dir, max.parse()?).await;
    }
    let months = env_or("BENCH_MONTHS", 24);
    let per_month = env_or("BENCH_VISITS", 300);
    let pushes = env_or("BENCH_PUSHES", 30);

    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let device = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    let member = device
        .add_member(NewMember {
            name: "张秀英".into(),
            ..NewMember::default()
        })
        .await?;
    let now = time::OffsetDateTime::now_utc();
    let mut month = Month::new(now.year(), now.month() as u8).expect("a month");
    let mut history = Vec::new();
    for m in 0..months {
        for day in 0..per_month {
            let date =
                Date::from_ymd(month.year(), month.month(), (day % 28) as u8 + 1).expect("a date");
            let mut new = visit(date, member);
            if m + 1 == months && day == 0 {
                // One follow-up still open, in the oldest month.
                new.follow_up = Some(FollowUp {
                    due: date,
                    action: "回访".into(),
                    done: false,
                });
            }
            device.record_visit(new).await?;
        }
        history.push(month.to_string());
        month = month.previous();
    }
    device.sync_now().await?;

    drop(device);

    println!(
        "memory: {months} months x {per_month} visits, every month read once, peak RSS of a fresh process"
    );
    for max in [3, months] {
        let out = std::process::Command::new(std::env::current_exe()?)
            .env("BENCH_WALK_DIR", dir.path())
            .env("BENCH_WALK_MAX", max.to_string())
            .env("BENCH_WALK_MONTHS", history.join(","))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout)?;
        let f: Vec<&str> = line.split_whitespace().collect();
        println!(
            "  max_loaded_months {max:>2}: {} visits read, peak RSS {} MiB, RSS after {} MiB, {} documents in memory",
            f[0], f[1], f[2], f[3]
        );
    }

    // record_visit with and without observers, on the same store reopened
    // (the walks above needed it closed).
    let today = Date::from_ymd(now.year(), now.month() as u8, now.day()).expect("today");
    let device = Client::open(ClientConfig::new(
        dir.path(),
        server.http_url(),
        test_store_key(),
    ))
    .await?;
    let edits = env_or("BENCH_EDITS", 30);
    let time_edits = |device: Client| async move {
        let mut samples = Vec::new();
        for _ in 0..edits {
            let started = Instant::now();
            device.record_visit(visit(today, member)).await?;
            samples.push(started.elapsed());
        }
        anyhow::Ok(median(samples))
    };
    let alone = time_edits(device.clone()).await?;
    let observations = (
        device.observe_members(MemberFilter::default(), Arc::new(|_| {})),
        device.observe_visits(VisitDays::Day(today), Arc::new(|_| {})),
        device.observe_follow_ups_due(today, Arc::new(|_| {})),
    );
    let observed = time_edits(device.clone()).await?;
    drop(observations);
    println!("record_visit with observers live on {months} months, {edits} edits, medians");
    println!("  no observers              {:8.2} ms", ms(alone));
    println!(
        "  3 observers live          {:8.2} ms  ({:.1}x)",
        ms(observed),
        observed.as_secs_f64() / alone.as_secs_f64()
    );
    drop(device);

    // Store bytes on disk after a day of edits: measured after the first
    // 300 visits and at the end of the day, so the figure per 1,000 visits
    // can be told apart from SQLite's floor (a page for each table and
    // index, and the log's 32 KiB index while the store is open).
    let day_visits = env_or("BENCH_DAY_VISITS", 1000).max(301);
    let day_dir = tempfile::tempdir()?;
    // In a branch of its own, so the sync brings nothing of the 24 months.
    let day = sdk_device(
        &server.store,
        &server.http_url(),
        d.fenghuangting.id,
        day_dir.path(),
        |_| {},
    )
    .await?;
    // Visits as a day brings them: to many members, each with its own
    // notes and amount (identical visits would compress to almost nothing).
    let mut members_today = Vec::new();
    for i in 0..60 {
        members_today.push(
            day.add_member(NewMember {
                name: format!("成员{i}"),
                ..NewMember::default()
            })
            .await?,
        );
    }
    let mut sizes = Vec::new();
    for i in 0..day_visits {
        let mut new = visit(today, members_today[i % members_today.len()]);
        new.aid_cash = Fen::from_yuan(10 + (i % 7) as i64 * 5);
        new.notes = Some(format!(
            "第{i}次走访：家中老人身体尚可，药已按时服用，下周再来"
        ));
        day.record_visit(new).await?;
        if i + 1 == 300 || i + 1 == day_visits {
            let unsynced = day.store_size().await?;
            day.sync_now().await?;
            sizes.push((i + 1, unsynced, day.store_size().await?));
        }
    }
    let kib = |bytes: u64| bytes as f64 / 1024.0;
    println!("store size after a day of visits");
    for (visits, unsynced, synced) in &sizes {
        for (label, size) in [("before sync", unsynced), ("after sync", synced)] {
            println!(
                "  {visits:>5} visits, {label:<12} on disk {:8.1} KiB (log {:6.1} KiB, free {:6.1} KiB), chunks {:8.1} KiB: {:.2}x",
                kib(size.bytes_on_disk),
                kib(size.wal_bytes),
                kib(size.free_bytes),
                kib(size.chunk_bytes),
                size.bytes_on_disk as f64 / size.chunk_bytes as f64,
            );
        }
    }
    if let [(first, _, at_first), (last, _, at_last)] = sizes.as_slice() {
        let per_thousand = |bytes: u64| kib(bytes) * 1000.0 / (last - first) as f64;
        let disk = at_last.bytes_on_disk.saturating_sub(at_first.bytes_on_disk);
        let chunks = at_last.chunk_bytes.saturating_sub(at_first.chunk_bytes);
        println!(
            "  per 1,000 visits (visits {first} to {last}, synced): {:8.1} KiB on disk for {:8.1} KiB of chunks: {:.2}x",
            per_thousand(disk),
            per_thousand(chunks),
            disk as f64 / chunks as f64,
        );
    }
    day.close().await?;

    // Push latency between two connected phones.
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let no_polling = |c: &mut ClientConfig| c.sync_interval = None;
    let a = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir_a.path(),
        no_polling,
    )
    .await?;
    let b = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir_b.path(),
        no_polling,
    )
    .await?;
    let member = a
        .add_member(NewMember {
            name: "推送".into(),
            ..NewMember::default()
        })
        .await?;
    let (_sa, _sb) = (a.start_background_sync(), b.start_background_sync());
    for device in [&a, &b] {
        eventually(Duration::from_secs(60), || async {
            Ok(matches!(device.status(), SyncStatus::UpToDate { .. }))
        })
        .await?;
    }
    b.member(member).await.ok();
    let mut local = Vec::new();
    let mut pushed = Vec::new();
    for _ in 0..pushes {
        let mut changes = b.subscribe_changes();
        changes.borrow_and_update();
        let started = Instant::now();
        let id = a.record_visit(visit(today, member)).await?;
        local.push(started.elapsed());
        loop {
            tokio::time::timeout(Duration::from_secs(30), changes.changed()).await??;
            if b.visit(id).await.is_ok() {
                break;
            }
        }
        pushed.push(started.elapsed());
    }
    let (local, pushed) = (median(local), median(pushed));
    println!("push: {pushes} visits, medians");
    println!("  local edit on disk        {:8.2} ms", ms(local));
    println!(
        "  on the other phone's disk {:8.2} ms  ({:.1}x the local edit)",
        ms(pushed),
        pushed.as_secs_f64() / local.as_secs_f64()
    );
    Ok(())
}
