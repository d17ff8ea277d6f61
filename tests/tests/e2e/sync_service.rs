//! One sync service on a device (issue 14, findings 4 and 5): `sync_now`
//! and `checkpoint` during live sync return by their deadline however often
//! the server pings; a listener that blocks holds up neither edits nor the
//! rest of the SDK, and dropping its observation never waits for it.

use doorstep_tests::{this_month, today};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use doorstep_client::{Client, MemberFilter, NewMember, NewVisit, RecordId, SyncStatus, VisitDays};
use doorstep_protocol::mutation::Seeded;
use doorstep_tests::shaper::{LinkShape, ShapingProxy, Stall};
use doorstep_tests::{TestServer, env_or, eventually, sdk_device};
use std::collections::BTreeSet;

fn visit(member: RecordId, cash_yuan: i64) -> NewVisit {
    crate::visit_today(member, cash_yuan, None)
}

async fn member(client: &Client, name: &str) -> anyhow::Result<RecordId> {
    Ok(client
        .add_member(NewMember {
            name: name.into(),
            ..NewMember::default()
        })
        .await?)
}

/// The deadline the device is configured with, and how long past it the
/// test waits before it calls the call hung.
const DEADLINE: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_and_checkpoint_during_live_sync_return_by_their_deadline() -> anyhow::Result<()> {
    // A server that pings every second: before the fix each ping restarted
    // the device's receive timeout, so a wait that no sync message would
    // end never ended.
    let server = TestServer::spawn_with(|c| c.ping_interval = Duration::from_secs(1)).await?;
    let d = server.district().await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let url = server.http_url();
    let a = sdk_device(&server.store, &url, d.yingfeng.id, dir_a.path(), |c| {
        c.sync_deadline = DEADLINE;
    })
    .await?;
    let b = sdk_device(&server.store, &url, d.yingfeng.id, dir_b.path(), |_| {}).await?;
    let mine = member(&a, "李秀兰").await?;
    let theirs = member(&b, "赵建国").await?;
    let (_live_a, _live_b) = (a.start_background_sync(), b.start_background_sync());
    eventually(Duration::from_secs(30), || async {
        Ok(matches!(a.status(), SyncStatus::UpToDate { .. }))
    })
    .await?;

    // The other phone writes all along, so the server pushes to this one
    // while it asks for its bounded syncs.
    let (stop_writing, mut stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut written = 0u32;
            while !*stopped.borrow_and_update() {
                if b.record_visit(visit(theirs, 1)).await.is_ok() {
                    written += 1;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(30)) => {}
                    _ = stopped.changed() => {}
                }
            }
            written
        })
    };

    for round in 0..50 {
        a.record_visit(visit(mine, round)).await?;
        if round % 2 == 0 {
            let report = tokio::time::timeout(DEADLINE + GRACE, a.sync_now())
                .await
                .map_err(|_| anyhow::anyhow!("sync_now {round} hung past its deadline"))??;
            let _ = report;
            assert_eq!(
                a.pending_changes().await?,
                0,
                "round {round}: sync_now returned with an edit unacknowledged"
            );
        } else {
            let checkpoint = tokio::time::timeout(DEADLINE + GRACE, a.checkpoint())
                .await
                .map_err(|_| anyhow::anyhow!("checkpoint {round} hung past its deadline"))??;
            assert!(
                checkpoint.safe && checkpoint.problem.is_none(),
                "round {round}: {checkpoint:?}"
            );
        }
    }
    let _ = stop_writing.send(true);
    let written = writer.await?;
    assert!(written > 0, "the other phone wrote nothing");

    // The status is not left at Syncing: the live connection settles.
    eventually(Duration::from_secs(30), || async {
        Ok(matches!(a.status(), SyncStatus::UpToDate { .. }))
    })
    .await?;
    Ok(())
}

// Found by the generator below (seed 3): the live connection counted its
// idle turns as progress, and the server's pings turned it every second,
// so a ping nobody answered never timed out; and it checked the link only
// every 30 s, whatever the receive timeout. A `sync_now` riding a
// connection whose way up had died failed at its deadline, again and
// again, for as long as the server kept the socket (90 s). Now the ping
// sent for the call is due within half its time left, after which the
// connection is given up and the call connects by itself. Here the
// connection is idle (nothing to send: only the ping can tell) and the
// receive timeout longer than the call's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_over_a_live_connection_whose_way_up_died_connects_again_in_time()
-> anyhow::Result<()> {
    let server = TestServer::spawn_with(|c| c.ping_interval = Duration::from_secs(1)).await?;
    let d = server.district().await?;
    let proxy = ShapingProxy::start(server.addr, LinkShape::poor()).await?;
    proxy.set_shaped(false);
    let dir = tempfile::tempdir()?;
    let phone = sdk_device(
        &server.store,
        &proxy.http_url(false),
        d.yingfeng.id,
        dir.path(),
        |c| {
            c.receive_timeout = Duration::from_secs(60);
            c.sync_deadline = Duration::from_secs(12);
        },
    )
    .await?;
    let someone = member(&phone, "吴桂兰").await?;
    let _live = phone.start_background_sync();
    eventually(Duration::from_secs(30), || async {
        Ok(matches!(phone.status(), SyncStatus::UpToDate { .. }))
    })
    .await?;

    phone.record_visit(visit(someone, 7)).await?;
    phone.sync_now().await?;
    proxy.strand(Stall {
        up: true,
        down: false,
    });
    let connections = proxy.counters().connections();
    phone.sync_now().await?;
    assert!(
        proxy.counters().connections() > connections,
        "the call did not connect by itself"
    );
    assert_eq!(phone.pending_changes().await?, 0);
    Ok(())
}

// From the review of the fix above: a call that gave up before the live
// connection got to it (no time left, or a few milliseconds) must not end
// a healthy connection, or an app polling with short deadlines makes the
// phone reconnect without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_with_no_time_left_leave_a_healthy_live_connection_alone() -> anyhow::Result<()> {
    let server = TestServer::spawn_with(|c| c.ping_interval = Duration::from_secs(1)).await?;
    let d = server.district().await?;
    let proxy = ShapingProxy::start(server.addr, LinkShape::poor()).await?;
    proxy.set_shaped(false);
    let dir = tempfile::tempdir()?;
    // The shortest the SDK takes.
    let receive_timeout = Duration::from_secs(10);
    let phone = sdk_device(
        &server.store,
        &proxy.http_url(false),
        d.yingfeng.id,
        dir.path(),
        |c| c.receive_timeout = receive_timeout,
    )
    .await?;
    let someone = member(&phone, "郑秀芳").await?;
    let _live = phone.start_background_sync();
    eventually(Duration::from_secs(30), || async {
        Ok(matches!(phone.status(), SyncStatus::UpToDate { .. }))
    })
    .await?;
    let connections = proxy.counters().connections();

    for millis in 0..40u64 {
        let _ = phone.sync_within(Duration::from_millis(millis % 8)).await;
    }
    phone.record_visit(visit(someone, 3)).await?;
    phone.sync_now().await?;
    // The pings those calls sent were answered at once; a connection the
    // calls had ended would be made again within this pause.
    tokio::time::sleep(Duration::from_secs(2)).await;
    phone.sync_now().await?;
    assert_eq!(
        proxy.counters().connections(),
        connections,
        "the live connection was ended and made again"
    );
    assert_eq!(phone.pending_changes().await?, 0);
    Ok(())
}

/// A listener that reports its first call and then blocks until released.
fn blocking<T: Send + 'static>(
    entered: mpsc::Sender<()>,
    release: Arc<std::sync::Mutex<mpsc::Receiver<()>>>,
) -> doorstep_client::Listener<T> {
    Arc::new(move |_list: Vec<T>| {
        let _ = entered.send(());
        if let Ok(release) = release.lock() {
            let _ = release.recv_timeout(Duration::from_secs(120));
        }
    })
}

// Two workers, as the FFI's runtime has: before the fix, two listeners
// blocked inside their calls held both, and nothing else ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_listeners_do_not_hold_up_edits_on_other_threads() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let client = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    let someone = member(&client, "周桂英").await?;

    let (entered_tx, entered) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release = Arc::new(std::sync::Mutex::new(release_rx));
    let (release_tx2, release_rx2) = mpsc::channel::<()>();
    let release2 = Arc::new(std::sync::Mutex::new(release_rx2));
    let members = client.observe_members(
        MemberFilter::default(),
        blocking(entered_tx.clone(), release.clone()),
    );
    let visits = client.observe_visits(VisitDays::Day(today()), blocking(entered_tx, release2));
    // Both listeners are inside their first call, blocked.
    for _ in 0..2 {
        entered
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow::anyhow!("a listener was never called"))?;
    }

    // Edits made as the FFI makes them (a task on the runtime) complete
    // while both listeners are still blocked: nothing has released them.
    let edits = {
        let client = client.clone();
        tokio::spawn(async move {
            for cash in 0..3 {
                client.record_visit(visit(someone, cash)).await?;
            }
            client.visits_on(VisitDays::Day(today())).await
        })
    };
    let listed = tokio::time::timeout(Duration::from_secs(60), edits)
        .await
        .map_err(|_| anyhow::anyhow!("the edits waited for the blocked listeners"))???;
    assert_eq!(listed.len(), 3);

    // Released, each listener gets the latest list (changes coalesce while
    // it was busy): the visits listener sees all three visits.
    let (seen_tx, seen) = mpsc::channel();
    drop(visits);
    let _ = release_tx2.send(());
    let visits = client.observe_visits(
        VisitDays::Day(today()),
        Arc::new(move |list: Vec<(RecordId, doorstep_client::Visit)>| {
            let _ = seen_tx.send(list.len());
        }),
    );
    assert_eq!(seen.recv_timeout(Duration::from_secs(30))?, 3);
    let _ = release_tx.send(());
    drop(members);
    drop(visits);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_observation_while_its_listener_runs_returns() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let client = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    let (entered_tx, entered) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener_calls = calls.clone();
    let release = std::sync::Mutex::new(release_rx);
    let observation = client.observe_members(
        MemberFilter::default(),
        Arc::new(move |_list: Vec<(RecordId, doorstep_client::Member)>| {
            listener_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = entered_tx.send(());
            if let Ok(release) = release.lock() {
                let _ = release.recv_timeout(Duration::from_secs(120));
            }
        }),
    );
    entered
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow::anyhow!("the listener was never called"))?;

    // Dropped from another thread while the listener is blocked: the drop
    // returns without it (before the fix it waited for the call to end).
    let (dropped_tx, dropped) = mpsc::channel();
    std::thread::spawn(move || {
        drop(observation);
        let _ = dropped_tx.send(());
    });
    let returned = dropped.recv_timeout(Duration::from_secs(30)).is_ok();
    let _ = release_tx.send(());
    assert!(returned, "dropping the observation waited for its listener");

    // Nothing is delivered after the drop returned, however the data changes.
    member(&client, "新成员").await?;
    client.sync_now().await?;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    Ok(())
}

// Observers re-run follow-ups due after every change; before the record
// index that walked every month's document under the lock edits need.
#[tokio::test]
async fn follow_ups_due_and_member_history_read_only_the_months_that_hold_them()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let url = server.http_url();
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = sdk_device(&server.store, &url, d.yingfeng.id, dir_a.path(), |c| {
        c.max_loaded_months = 3;
    })
    .await?;
    let helped = member(&a, "孙秀珍").await?;
    let others = member(&a, "钱国强").await?;

    // Six months, oldest first; only the oldest has a visit to `helped`,
    // with a follow-up due.
    let mut months = vec![this_month()];
    for _ in 0..5 {
        months.push(months[months.len() - 1].previous());
    }
    months.reverse();
    let oldest = months[0];
    let mut follow_up = visit(helped, 50);
    follow_up.date = oldest.first_day();
    follow_up.follow_up = Some(doorstep_client::FollowUp {
        due: oldest.first_day(),
        action: "送药".into(),
        done: false,
    });
    let due_visit = a.record_visit(follow_up).await?;
    for month in &months[1..] {
        let mut other = visit(others, 10);
        other.date = month.first_day();
        a.record_visit(other).await?;
    }
    let log = |month: doorstep_protocol::Month| {
        doorstep_protocol::DocumentId::monthly_log(d.yingfeng.id, month)
    };
    let roster = doorstep_protocol::DocumentId::roster(d.yingfeng.id);
    let mut loaded = a.loaded_documents().await?;
    loaded.sort();
    let mut expected = vec![roster, log(months[3]), log(months[4]), log(months[5])];
    expected.sort();
    assert_eq!(loaded, expected, "the three months edited last");

    // The follow-up is found by loading its month alone: the least
    // recently used month makes room; the walk of every month would have
    // left the three newest in memory and the oldest out.
    let due = a.follow_ups_due(today()).await?;
    assert_eq!(
        due.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![due_visit]
    );
    let mut loaded = a.loaded_documents().await?;
    loaded.sort();
    let mut expected = vec![roster, log(oldest), log(months[4]), log(months[5])];
    expected.sort();
    assert_eq!(loaded, expected, "only the month holding the follow-up");

    // A member's history reads the months holding their visits, no other.
    let history = a.member_history(helped).await?;
    assert_eq!(history.visits.len(), 1);
    let mut after = a.loaded_documents().await?;
    after.sort();
    assert_eq!(after, expected, "only the month holding the visit");

    // A follow-up arriving from another phone is found; completing one
    // (which finds its month through the index) removes it.
    a.sync_now().await?;
    let b = sdk_device(&server.store, &url, d.yingfeng.id, dir_b.path(), |_| {}).await?;
    b.sync_now().await?;
    let mut theirs = visit(others, 5);
    theirs.follow_up = Some(doorstep_client::FollowUp {
        due: today(),
        action: "回访".into(),
        done: false,
    });
    let their_visit = b.record_visit(theirs).await?;
    b.sync_now().await?;
    a.sync_now().await?;
    let mut due: Vec<RecordId> = a
        .follow_ups_due(today())
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    due.sort();
    let mut expected = vec![due_visit, their_visit];
    expected.sort();
    assert_eq!(due, expected);
    a.complete_follow_up(due_visit).await?;
    let due: Vec<RecordId> = a
        .follow_ups_due(today())
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(due, vec![their_visit]);
    Ok(())
}

/// How a seeded schedule leaves the phone's link for the next few steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Every connection reset, new ones dropped.
    Cut,
    /// Nothing carried, nothing closed, in the directions named.
    Stalled(Stall),
    /// The next few connections reset as they are made.
    Flaky,
    /// The connections open now stalled for good in the directions named,
    /// new ones going through: the live connection must notice, even
    /// while the server's pings still reach it.
    Stranded(Stall),
}

/// A listener of the schedule: what it was last handed, and for a listener
/// that blocks until the schedule lets it go, the sender that does.
struct Observer {
    observation: doorstep_client::Observation,
    last_len: Arc<std::sync::Mutex<Option<usize>>>,
    release: Option<mpsc::Sender<()>>,
}

/// How listeners of the schedule behave in their calls.
#[derive(Debug, Clone, Copy)]
enum Listening {
    Quick,
    Slow(Duration),
    /// Blocks in its first call until the schedule releases it, as an app
    /// whose listener waits on its UI thread would.
    Held,
}

fn observer(client: &Client, sdk: &tokio::runtime::Handle, listening: Listening) -> Observer {
    let last_len = Arc::new(std::sync::Mutex::new(None));
    let (release, released) = mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let seen = last_len.clone();
    let listener: doorstep_client::Listener<(RecordId, doorstep_client::Visit)> =
        Arc::new(move |list| {
            match listening {
                Listening::Quick => {}
                Listening::Slow(pause) => std::thread::sleep(pause),
                Listening::Held => {
                    if let Ok(released) = released.lock() {
                        let _ = released.recv_timeout(Duration::from_secs(600));
                    }
                }
            }
            if let Ok(mut seen) = seen.lock() {
                *seen = Some(list.len());
            }
        });
    // The SDK spawns the observation's query onto the runtime it is
    // called from, as the FFI's calls run on its own.
    let _entered = sdk.enter();
    Observer {
        observation: client.observe_visits(VisitDays::Day(today()), listener),
        last_len,
        release: matches!(listening, Listening::Held).then_some(release),
    }
}

/// The SDK's own two-worker runtime, as the FFI keeps one. Shut down
/// without waiting: a runtime may not block inside the test's, and on a
/// failure its workers may be the ones stuck.
struct SdkRuntime(Option<tokio::runtime::Runtime>);

impl SdkRuntime {
    fn new() -> std::io::Result<SdkRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(SdkRuntime(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle().clone(),
            None => unreachable!("the runtime is taken only on drop"),
        }
    }
}

impl Drop for SdkRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `call` on the SDK's runtime and waits for it on the test's: a
/// call that hangs, or an SDK whose workers are all blocked, shows as a
/// named failure here instead of a test that never ends.
async fn bounded<T: Send + 'static>(
    sdk: &tokio::runtime::Handle,
    what: String,
    limit: Duration,
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> anyhow::Result<T> {
    let task = sdk.spawn(call);
    match tokio::time::timeout(limit, task).await {
        Ok(done) => Ok(done?),
        Err(_) => anyhow::bail!("{what} did not return within {limit:?}"),
    }
}

/// The generator for issue 14's findings 4 and 5, which had hand-written
/// tests only: a seeded schedule of what an app does (edits, `sync_now`,
/// checkpoints, two of them at once, a short `sync_within`, live sync
/// started and stopped, listeners that are quick, slow or blocked until a
/// later step, observations dropped while their listener runs) while the
/// link is cut, stalled in one or both directions or resets connections,
/// and another phone writes all along through a server that pings every
/// second. The SDK runs on its own two-worker runtime, as over the FFI.
/// Checks: every call returns within its bound (edits without waiting for
/// the link); `sync_now` and the checkpoint succeed whenever the link is
/// up, and a success leaves nothing pending; at the end both phones hold
/// the same visits, every one of this phone's among them, the status
/// settles at `UpToDate`, and every listener still observing is handed the
/// final list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_calls_over_a_failing_link_never_hang_the_sync_service_or_freeze_the_sdk()
-> anyhow::Result<()> {
    let seeds: u64 = env_or("DOORSTEP_SYNC_SERVICE_SEEDS", 3);
    let first: u64 = env_or("DOORSTEP_SYNC_SERVICE_SEED", 1);
    let steps: usize = env_or("DOORSTEP_SYNC_SERVICE_STEPS", 40);
    for seed in first..first + seeds {
        run_schedule(seed, steps).await.map_err(|e| {
            e.context(format!(
                "seed {seed}: DOORSTEP_SYNC_SERVICE_SEED={seed} DOORSTEP_SYNC_SERVICE_SEEDS=1 replays it"
            ))
        })?;
    }
    eprintln!("sync service: {seeds} seeds of {steps} steps, 0 failures");
    Ok(())
}

async fn run_schedule(seed: u64, steps: usize) -> anyhow::Result<()> {
    // Short, so a stalled call costs the run seconds, not minutes.
    // The shortest receive timeout the SDK takes, and a deadline past it:
    // a call riding a stranded connection has time to connect by itself
    // once the connection is given up.
    const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);
    const SCHEDULE_DEADLINE: Duration = Duration::from_secs(14);
    let server = TestServer::spawn_with(|c| c.ping_interval = Duration::from_secs(1)).await?;
    let d = server.district().await?;
    let proxy = ShapingProxy::start(server.addr, LinkShape::poor()).await?;
    proxy.set_shaped(false);
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let runtime = SdkRuntime::new()?;
    let sdk = runtime.handle();
    let a = {
        let (store, url, branch, dir) = (
            server.store.clone(),
            proxy.http_url(false),
            d.yingfeng.id,
            dir_a.path().to_path_buf(),
        );
        bounded(&sdk, "enrolling".into(), GRACE * 3, async move {
            sdk_device(&store, &url, branch, &dir, |c| {
                c.sync_deadline = SCHEDULE_DEADLINE;
                c.receive_timeout = RECEIVE_TIMEOUT;
                c.backoff_initial = Duration::from_millis(100);
                c.backoff_max = Duration::from_secs(1);
            })
            .await
        })
        .await??
    };
    let b = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir_b.path(),
        |_| {},
    )
    .await?;
    let mine = {
        let a = a.clone();
        bounded(&sdk, "adding a member".into(), GRACE, async move {
            member(&a, "李秀兰").await
        })
        .await??
    };
    let theirs = member(&b, "赵建国").await?;
    let live_b = b.start_background_sync();
    let (stop_writing, mut stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            while !*stopped.borrow_and_update() {
                let _ = b.record_visit(visit(theirs, 1)).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(150)) => {}
                    _ = stopped.changed() => {}
                }
            }
        })
    };

    let mut plan = Seeded::new(seed);
    let mut link = Link::Up;
    let mut link_steps_left = 0;
    let mut live: Option<doorstep_client::BackgroundSync> = None;
    let mut observers: Vec<Observer> = Vec::new();
    let mut recorded = BTreeSet::new();
    let call_bound = SCHEDULE_DEADLINE + GRACE;
    for step in 0..steps {
        let at = |what: &str| format!("step {step} ({what}, link {link:?})");
        match plan.below(100) {
            0..25 => {
                let a = a.clone();
                let cash = step as i64;
                let id = bounded(&sdk, at("record_visit"), GRACE, async move {
                    a.record_visit(visit(mine, cash)).await
                })
                .await??;
                recorded.insert(id);
            }
            25..45 => {
                let deadline = if plan.chance(20) {
                    Some(Duration::from_millis(plan.below(1_500)))
                } else {
                    None
                };
                let a2 = a.clone();
                let result = bounded(&sdk, at("sync_now"), call_bound, async move {
                    match deadline {
                        Some(limit) => a2.sync_within(limit).await,
                        None => a2.sync_now().await,
                    }
                })
                .await?;
                check_sync(
                    &a,
                    &sdk,
                    &at("sync_now"),
                    link,
                    deadline,
                    result.map(|_| ()),
                )
                .await?;
            }
            45..53 => {
                let a2 = a.clone();
                let checkpoint = bounded(&sdk, at("checkpoint"), call_bound, async move {
                    a2.checkpoint().await
                })
                .await??;
                anyhow::ensure!(
                    !checkpoint.safe || checkpoint.unsynced_changes == 0,
                    "{}: {checkpoint:?}",
                    at("checkpoint")
                );
                if link == Link::Up {
                    anyhow::ensure!(checkpoint.safe, "{}: {checkpoint:?}", at("checkpoint"));
                }
            }
            53..58 => {
                // Two calls at once, as an app's refresh and a background
                // job may make them.
                let (a2, a3) = (a.clone(), a.clone());
                let first = bounded(
                    &sdk,
                    at("sync_now beside a checkpoint"),
                    call_bound,
                    async move { a2.sync_now().await },
                );
                let second = bounded(
                    &sdk,
                    at("checkpoint beside sync_now"),
                    call_bound,
                    async move { a3.checkpoint().await },
                );
                let (synced, checkpoint) = tokio::join!(first, second);
                let checkpoint = checkpoint??;
                check_sync(
                    &a,
                    &sdk,
                    &at("sync_now beside a checkpoint"),
                    link,
                    None,
                    synced?.map(|_| ()),
                )
                .await?;
                if link == Link::Up {
                    anyhow::ensure!(
                        checkpoint.safe,
                        "{}: {checkpoint:?}",
                        at("checkpoint beside sync_now")
                    );
                }
            }
            58..68 => {
                let (upward, both) = (
                    Stall {
                        up: true,
                        down: false,
                    },
                    Stall {
                        up: true,
                        down: true,
                    },
                );
                link = match plan.below(7) {
                    0 => Link::Cut,
                    4 => Link::Stranded(upward),
                    5 => Link::Stranded(both),
                    1 => Link::Stalled(Stall {
                        up: true,
                        down: true,
                    }),
                    2 => Link::Stalled(Stall {
                        up: true,
                        down: false,
                    }),
                    3 => Link::Stalled(Stall {
                        up: false,
                        down: true,
                    }),
                    _ => Link::Flaky,
                };
                // Counted down at the end of this step too: at least one
                // more step runs over it.
                link_steps_left = 2 + plan.below(4);
                proxy.restore();
                proxy.drop_next(0);
                match link {
                    Link::Cut => proxy.cut(),
                    Link::Stalled(stall) => proxy.stall(stall),
                    Link::Flaky => proxy.drop_next(1 + plan.below(3)),
                    Link::Stranded(stall) => proxy.strand(stall),
                    Link::Up => {}
                }
            }
            68..76 => match live.take() {
                Some(service) if plan.chance(50) => {
                    bounded(&sdk, at("stopping live sync"), GRACE, service.stop()).await?;
                }
                Some(service) => drop(service),
                None => {
                    let _entered = sdk.enter();
                    live = Some(a.start_background_sync());
                }
            },
            76..86 => {
                let listening = match plan.below(3) {
                    0 => Listening::Quick,
                    1 => Listening::Slow(Duration::from_millis(plan.below(800))),
                    _ => Listening::Held,
                };
                observers.push(observer(&a, &sdk, listening));
            }
            86..92 if !observers.is_empty() => {
                // Dropped from a thread of its own, perhaps while its
                // listener is blocked in a call: the drop must not wait.
                let gone = observers.swap_remove(plan.below(observers.len() as u64) as usize);
                let (dropped_tx, dropped) = mpsc::channel();
                std::thread::spawn(move || {
                    drop(gone.observation);
                    let _ = dropped_tx.send(());
                });
                let returned = dropped.recv_timeout(GRACE).is_ok();
                if let Some(release) = gone.release {
                    let _ = release.send(());
                }
                anyhow::ensure!(returned, "{}: dropping an observation waited", at("drop"));
            }
            92..96 => {
                if let Some(release) = observers.iter_mut().find_map(|o| o.release.take()) {
                    let _ = release.send(());
                }
            }
            _ => {
                let pause = Duration::from_millis(plan.below(600));
                tokio::time::sleep(pause).await;
                let a2 = a.clone();
                bounded(&sdk, at("pending_changes"), GRACE, async move {
                    a2.pending_changes().await
                })
                .await??;
            }
        }
        if link != Link::Up {
            link_steps_left -= 1;
            if link_steps_left == 0 {
                link = Link::Up;
                proxy.restore();
                proxy.drop_next(0);
            }
        }
    }

    // The link back and live sync on, every listener let go: everything
    // this phone recorded reaches the server and the other phone.
    proxy.restore();
    proxy.drop_next(0);
    for held in &mut observers {
        if let Some(release) = held.release.take() {
            let _ = release.send(());
        }
    }
    if live.is_none() {
        let _entered = sdk.enter();
        live = Some(a.start_background_sync());
    }
    let a2 = a.clone();
    let result = bounded(&sdk, "the last sync_now".into(), call_bound, async move {
        a2.sync_now().await
    })
    .await?;
    check_sync(
        &a,
        &sdk,
        "the last sync_now",
        Link::Up,
        None,
        result.map(|_| ()),
    )
    .await?;
    let _ = stop_writing.send(true);
    writer.await?;
    b.sync_now().await?;
    let a2 = a.clone();
    bounded(
        &sdk,
        "sync_now after the writer".into(),
        call_bound,
        async move { a2.sync_now().await },
    )
    .await??;
    let ids = |list: Vec<(RecordId, doorstep_client::Visit)>| {
        list.into_iter().map(|(id, _)| id).collect::<BTreeSet<_>>()
    };
    let a2 = a.clone();
    let on_a = ids(bounded(&sdk, "listing".into(), GRACE, async move {
        a2.visits_on(VisitDays::Day(today())).await
    })
    .await??);
    let on_b = ids(b.visits_on(VisitDays::Day(today())).await?);
    anyhow::ensure!(
        on_a == on_b,
        "the phones differ: {} against {}",
        on_a.len(),
        on_b.len()
    );
    anyhow::ensure!(
        recorded.is_subset(&on_a),
        "{} of this phone's visits are missing",
        recorded.difference(&on_a).count()
    );
    eventually(Duration::from_secs(30), || async {
        Ok(matches!(a.status(), SyncStatus::UpToDate { .. }))
    })
    .await
    .map_err(|e| e.context(format!("the status stayed {:?}", a.status())))?;
    for (i, observer) in observers.iter().enumerate() {
        eventually(Duration::from_secs(30), || async {
            Ok(*observer
                .last_len
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                == Some(on_a.len()))
        })
        .await
        .map_err(|e| e.context(format!("observer {i} was not handed the final list")))?;
    }
    drop(observers);
    if let Some(service) = live {
        bounded(&sdk, "the last stop".into(), GRACE, service.stop()).await?;
    }
    live_b.stop().await;
    Ok(())
}

/// A `sync_now`'s result against the link it ran over: with the link up
/// it must succeed (a full deadline of its own; a short `sync_within` may
/// run out), and any success leaves nothing pending.
async fn check_sync(
    a: &Client,
    sdk: &tokio::runtime::Handle,
    what: &str,
    link: Link,
    short_limit: Option<Duration>,
    result: Result<(), doorstep_client::ClientError>,
) -> anyhow::Result<()> {
    match result {
        Ok(()) => {
            let a = a.clone();
            let pending = bounded(sdk, format!("{what}: pending_changes"), GRACE, async move {
                a.pending_changes().await
            })
            .await??;
            anyhow::ensure!(
                pending == 0,
                "{what} succeeded with {pending} changes pending"
            );
        }
        Err(e) if link == Link::Up && short_limit.is_none() => {
            anyhow::bail!("{what} failed with the link up: {e}")
        }
        Err(_) => {}
    }
    Ok(())
}
