//! One sync service on a device (issue 14, findings 4 and 5): `sync_now`
//! and `checkpoint` during live sync return by their deadline however often
//! the server pings; a listener that blocks holds up neither edits nor the
//! rest of the SDK, and dropping its observation never waits for it.

use doorstep_tests::{this_month, today};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use doorstep_client::{
    Client, Fen, MemberFilter, NewMember, NewVisit, RecordId, SyncStatus, VisitDays, VisitKind,
};
use doorstep_tests::{TestServer, eventually, sdk_device};

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
