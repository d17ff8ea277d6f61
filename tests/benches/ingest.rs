//! Server ingest against in-process Automerge, measured in one run.
//!
//! A phone records N visits offline; we time `sync_now()` through the real
//! server on loopback (network, actor checks, SQLite commits with fsync,
//! projections) and, in the same process, Automerge merging the same number
//! of equivalent changes into a replica. The ratio is what to watch; the
//! machine is noisy, so each figure is the median of several runs.
//!
//! `cargo bench -p doorstep-tests --bench ingest` (N and runs: BENCH_VISITS,
//! BENCH_RUNS).

use std::time::{Duration, Instant};

use automerge::{ActorId, Automerge};
use doorstep_client::{Fen, NewMember, NewVisit, VisitKind};
use doorstep_protocol::schema::log::Visit;
use doorstep_protocol::schema::{DocumentKind, RecordId, genesis, write_record};
use doorstep_server::rollup::{self, Period};
use doorstep_tests::{TestServer, sdk_device};

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

fn in_process_merge(branch: doorstep_protocol::TenantId, visits: usize) -> Duration {
    let month = "2026-11".parse().expect("month");
    let mut phone = genesis(branch, DocumentKind::MonthlyLog(month)).with_actor(ActorId::random());
    let member = RecordId::new_v7();
    for i in 0..visits {
        let mut tx = phone.transaction();
        let visit = Visit {
            date: format!("2026-11-{:02}", i % 28 + 1).parse().expect("date"),
            member_id: member,
            kind: VisitKind::Routine,
            visitors: ["v".to_string()].into(),
            aid_cash: Fen(10_000),
            aid_goods: Fen::ZERO,
            goods_description: None,
            notes: None,
            follow_up: None,
            recorded_by: Some("bench".into()),
        };
        write_record(&mut tx, RecordId::new_v7(), &visit).expect("write");
        tx.commit();
    }
    let changes = phone.get_changes(&genesis(branch, DocumentKind::MonthlyLog(month)).get_heads());
    let mut server: Automerge = genesis(branch, DocumentKind::MonthlyLog(month));
    let started = Instant::now();
    server.apply_changes(changes).expect("apply");
    started.elapsed()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let visits = env_or("BENCH_VISITS", 500);
    let runs = env_or("BENCH_RUNS", 5);
    let (mut ingest, mut merge, mut rollups) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
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
        let member = phone
            .add_member(NewMember {
                name: "bench".into(),
                ..NewMember::default()
            })
            .await?;
        phone.sync_now().await?;
        for i in 0..visits {
            phone
                .record_visit(NewVisit {
                    date: format!("2026-11-{:02}", i % 28 + 1).parse()?,
                    member_id: member,
                    kind: VisitKind::Routine,
                    visitors: vec!["v".into()],
                    aid_cash: Fen(10_000),
                    aid_goods: Fen::ZERO,
                    goods_description: None,
                    notes: None,
                    follow_up: None,
                })
                .await?;
        }
        let started = Instant::now();
        phone.sync_now().await?;
        ingest.push(started.elapsed());
        merge.push(in_process_merge(d.yingfeng.id, visits));
        let started = Instant::now();
        let total = rollup::rollup(
            &server.store,
            &d.district,
            Period::year(2026).expect("year"),
        )
        .await?
        .total;
        rollups.push(started.elapsed());
        assert_eq!(total.visits, visits as i64);
    }
    let (ingest, merge, rollups) = (median(ingest), median(merge), median(rollups));
    println!("{visits} offline visits, median of {runs} runs:");
    println!(
        "  server ingest (sync_now over loopback, stored, projected): {:>8.1} ms",
        ingest.as_secs_f64() * 1e3
    );
    println!(
        "  in-process Automerge merge of the same changes:            {:>8.1} ms",
        merge.as_secs_f64() * 1e3
    );
    println!(
        "  ratio server / in-process:                                 {:>8.1}x",
        ingest.as_secs_f64() / merge.as_secs_f64()
    );
    println!(
        "  district rollup for the year (SQL over projections):       {:>8.1} ms",
        rollups.as_secs_f64() * 1e3
    );
    Ok(())
}
