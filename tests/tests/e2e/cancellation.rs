//! Cancelled writes by generator (issue 15): the finding of issue 14 that
//! a cancelled write was stored anyway and its retry stored it again, and
//! the store left locked by a write dropped inside its transaction, had
//! only hand-written tests. Here a seeded plan starts the SDK's writes
//! (members and visits under the app's ids), gives each up after a seeded
//! time (from before its first await to after it returned), and retries it
//! once or twice with the same id, or not at all. Checks: every retry
//! returns within its bound (a store left locked makes it wait and fail);
//! the phone holds each record the plan finished exactly once, and those
//! given up without a retry at most once; after a sync the server holds the
//! same records and the district rollup counts each visit and its aid once.
//! Live sync runs all along, so its own reloads meet the dropped writes too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use doorstep_client::{Client, Fen, NewMember, NewVisit, RecordId, VisitDays, VisitKind};
use doorstep_protocol::mutation::Seeded;
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_protocol::schema::roster::Roster;
use doorstep_protocol::{Date, DocumentId};
use doorstep_server::tenancy::Role;
use doorstep_tests::{TestServer, env_or, sdk_device, this_month};

/// How long a retry may take before the store counts as wedged: well past
/// an edit's few milliseconds, well under the store's 10 s lock wait.
const RETRY_BOUND: Duration = Duration::from_secs(8);

/// One write of the plan, under the app's id.
#[derive(Clone)]
enum Write {
    Member(RecordId, NewMember),
    Visit(RecordId, NewVisit),
}

impl Write {
    async fn run(self, phone: Client) -> Result<RecordId, doorstep_client::ClientError> {
        match self {
            Write::Member(id, new) => phone.add_member_with_id(id, new).await,
            Write::Visit(id, new) => phone.record_visit_with_id(id, new).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_given_up_at_seeded_moments_are_stored_once_and_never_wedge_the_store()
-> anyhow::Result<()> {
    let cases: usize = env_or("DOORSTEP_CANCEL_CASES", 500);
    let seed: u64 = env_or("DOORSTEP_CANCEL_SEED", 0x0014_ca4c);
    eprintln!("cancelled writes: {cases} cases, seed {seed}");
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let dir = tempfile::tempdir()?;
    let phone = sdk_device(
        &server.store,
        &server.http_url(),
        d.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    let month = this_month();
    let day =
        Date::from_ymd(month.year(), month.month(), 1).ok_or_else(|| anyhow::anyhow!("a date"))?;
    // Live sync runs throughout: its loop drops what a cancelled edit left
    // in memory on its own path, and reloads documents as it syncs.
    let service = phone.start_background_sync();
    let mut plan = Seeded::new(seed);
    // What the phone must hold once (finished: returned, or retried until
    // it returned) and what it may hold at most once (given up for good).
    let (mut members, mut maybe_members) = (BTreeSet::new(), BTreeSet::new());
    let (mut visits, mut maybe_visits) = (BTreeMap::new(), BTreeMap::new());
    let mut outcomes = BTreeMap::<&str, usize>::new();
    for case in 0..cases {
        let id = RecordId::new_v7();
        let write = match (members.iter().next(), plan.below(3)) {
            (Some(member), 0 | 1) => Write::Visit(
                id,
                NewVisit {
                    date: day,
                    member_id: *member,
                    kind: VisitKind::Routine,
                    visitors: vec!["志愿者".into()],
                    aid_cash: Fen(1 + i64::try_from(plan.below(10_000))?),
                    aid_goods: Fen::ZERO,
                    goods_description: None,
                    notes: None,
                    follow_up: None,
                },
            ),
            _ => Write::Member(
                id,
                NewMember {
                    name: format!("成员{case}"),
                    ..NewMember::default()
                },
            ),
        };
        // Given up after 0 to 3 ms, sometimes before it was ever polled.
        let call = tokio::spawn(write.clone().run(phone.clone()));
        match plan.below(4) {
            0 => {}
            _ => tokio::time::sleep(Duration::from_micros(plan.below(3_000))).await,
        }
        call.abort();
        let first = match call.await {
            Ok(Ok(_)) => "returned",
            Ok(Err(e)) => anyhow::bail!("seed {seed}, case {case}: the write failed: {e}"),
            Err(e) if e.is_cancelled() => "cancelled",
            Err(e) => anyhow::bail!("seed {seed}, case {case}: the write panicked: {e}"),
        };
        let retries = plan.below(3);
        for _ in 0..retries {
            let retried = tokio::time::timeout(RETRY_BOUND, write.clone().run(phone.clone()))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("seed {seed}, case {case}: a retry hung: the store is wedged")
                })?;
            let retried = retried
                .map_err(|e| anyhow::anyhow!("seed {seed}, case {case}: a retry failed: {e}"))?;
            anyhow::ensure!(
                retried == id,
                "seed {seed}, case {case}: the retry answered another id"
            );
        }
        let finished = first == "returned" || retries > 0;
        *outcomes
            .entry(match (first, retries) {
                ("returned", 0) => "returned",
                ("returned", _) => "returned, then retried",
                (_, 0) => "given up",
                _ => "given up, then retried",
            })
            .or_default() += 1;
        match (write, finished) {
            (Write::Member(id, _), true) => members.insert(id),
            (Write::Member(id, _), false) => maybe_members.insert(id),
            (Write::Visit(id, new), true) => visits.insert(id, new.aid_cash).is_none(),
            (Write::Visit(id, new), false) => maybe_visits.insert(id, new.aid_cash).is_none(),
        };
    }
    eprintln!("cancelled writes: {outcomes:?}");
    service.stop().await;

    // The phone: each finished record once, each given-up one at most once.
    let held_members: Vec<RecordId> = phone
        .members(&Default::default())
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let held_visits: Vec<RecordId> = phone
        .visits_on(VisitDays::Month(month))
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let once = |held: &[RecordId], must: &BTreeSet<RecordId>, may: &BTreeSet<RecordId>| {
        let distinct: BTreeSet<RecordId> = held.iter().copied().collect();
        anyhow::ensure!(
            distinct.len() == held.len(),
            "seed {seed}: a record listed twice"
        );
        anyhow::ensure!(
            must.is_subset(&distinct),
            "seed {seed}: finished writes missing: {:?}",
            must.difference(&distinct).collect::<Vec<_>>()
        );
        anyhow::ensure!(
            distinct
                .iter()
                .all(|id| must.contains(id) || may.contains(id)),
            "seed {seed}: records no write made"
        );
        Ok(distinct)
    };
    let members_kept = once(&held_members, &members, &maybe_members)?;
    let visit_ids: BTreeSet<RecordId> = visits.keys().copied().collect();
    let maybe_visit_ids: BTreeSet<RecordId> = maybe_visits.keys().copied().collect();
    let visits_kept = once(&held_visits, &visit_ids, &maybe_visit_ids)?;

    // The server, after a sync: the same records, each visit counted once.
    phone.sync_now().await?;
    let roster = Roster::load(
        &server
            .stored_document(DocumentId::roster(d.yingfeng.id))
            .await?,
    );
    let on_server: BTreeSet<RecordId> = roster.members.keys().copied().collect();
    assert_eq!(on_server, members_kept, "seed {seed}: the server's members");
    let log = MonthlyLog::load(
        &server
            .stored_document(DocumentId::monthly_log(d.yingfeng.id, month))
            .await?,
    );
    let on_server: BTreeSet<RecordId> = log.visits.keys().copied().collect();
    assert_eq!(on_server, visits_kept, "seed {seed}: the server's visits");
    let aid: i64 = visits_kept
        .iter()
        .filter_map(|id| visits.get(id).or_else(|| maybe_visits.get(id)))
        .map(|fen| fen.0)
        .sum();
    let admin = server
        .login_as("district", Role::DistrictAdmin, d.district.id)
        .await?;
    server
        .wait_for_rollup_total(&admin, month, visits_kept.len(), aid)
        .await?;
    Ok(())
}
