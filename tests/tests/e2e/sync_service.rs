//! One sync service on a device (issue 14, findings 4 and 5): `sync_now`
//! and `checkpoint` during live sync return by their deadline however often
//! the server pings; a listener that blocks holds up neither edits nor the
//! rest of the SDK, and dropping its observation never waits for it.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use doorstep_client::{
    Client, Fen, MemberFilter, NewMember, NewVisit, RecordId, SyncStatus, VisitDays, VisitKind,
};
use doorstep_protocol::Date;
use doorstep_tests::{TestServer, eventually, sdk_device};

fn today() -> Date {
    let now = time::OffsetDateTime::now_utc();
    Date::from_ymd(now.year(), now.month() as u8, now.day()).expect("today")
}

fn visit(member: RecordId, cash_yuan: i64) -> NewVisit {
    NewVisit {
        date: today(),
        member_id: member,
        kind: VisitKind::Routine,
        visitors: vec!["王志愿".into()],
        aid_cash: Fen::from_yuan(cash_yuan),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: None,
        follow_up: None,
    }
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
