//! Sync latency of other devices while one large document cold-loads.
//!
//! A branch's monthly log with BENCH_COLD_VISITS visits (50,000 by default)
//! is stored and out of memory. A device asks for it, which makes the
//! server load it (SQL, then Automerge on the blocking pool), while other
//! devices keep syncing the roster, a different document. Their sync
//! latency during the load is compared with their latency on an idle
//! server, in one run; each figure is a median.
//!
//! `cargo bench -p doorstep-tests --bench cold_load` (BENCH_COLD_VISITS,
//! BENCH_SYNCS).

use std::time::{Duration, Instant};

use automerge::ActorId;
use doorstep_protocol::schema::log::{Visit, VisitKind};
use doorstep_protocol::schema::roster::Member;
use doorstep_protocol::schema::{DocumentKind, RecordId, genesis, write_record};
use doorstep_protocol::{DocumentId, Fen, Month};
use doorstep_tests::{SyncOutcome, TestPeer, TestServer};

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

/// One member added and synced on the roster: the latency a volunteer sees.
async fn roster_sync(peer: &mut TestPeer, roster: DocumentId) -> anyhow::Result<Duration> {
    let doc = peer.document_mut(roster).expect("roster open");
    let mut tx = doc.transaction();
    let member = Member {
        name: "bench".into(),
        ..Member::default()
    };
    write_record(&mut tx, RecordId::new_v7(), &member)?;
    tx.commit();
    let started = Instant::now();
    anyhow::ensure!(peer.sync(roster).await? == SyncOutcome::Synced);
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let visits = env_or("BENCH_COLD_VISITS", 50_000);
    let syncs = env_or("BENCH_SYNCS", 20);
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let branch = d.yingfeng.id;
    let month: Month = "2026-10".parse()?;

    let mut log = genesis(branch, DocumentKind::MonthlyLog(month)).with_actor(ActorId::random());
    let mut tx = log.transaction();
    for _ in 0..visits {
        let visit = Visit {
            date: "2026-10-03".parse()?,
            member_id: RecordId::new_v7(),
            kind: VisitKind::Routine,
            visitors: ["v".to_string()].into(),
            aid_cash: Fen(10_000),
            aid_goods: Fen::ZERO,
            goods_description: None,
            notes: None,
            follow_up: None,
            recorded_by: None,
        };
        write_record(&mut tx, RecordId::new_v7(), &visit)?;
    }
    tx.commit();
    let big = server
        .store
        .ensure_log_document(branch, month, &log.save())
        .await?;
    drop(log);

    let roster = DocumentId::roster(branch);
    let phone = server.enroll(branch, "phone").await?;
    let mut peer = TestPeer::connect(&server.ws_url(), &phone.token, None).await?;
    anyhow::ensure!(peer.sync(roster).await? == SyncOutcome::Synced);
    peer.document_mut(roster)
        .expect("roster")
        .set_actor(ActorId::random());

    let mut idle = Vec::new();
    for _ in 0..syncs {
        idle.push(roster_sync(&mut peer, roster).await?);
    }

    let loader = server.enroll(branch, "loader").await?;
    let ws = server.ws_url();
    let cold = tokio::spawn(async move {
        let started = Instant::now();
        let mut peer = TestPeer::connect(&ws, &loader.token, None).await?;
        anyhow::ensure!(peer.sync(big).await? == SyncOutcome::Synced);
        Ok::<_, anyhow::Error>(started.elapsed())
    });
    let mut during = Vec::new();
    while !cold.is_finished() {
        during.push(roster_sync(&mut peer, roster).await?);
    }
    let cold_load = cold.await??;

    println!("{visits}-visit log cold-loaded while a device synced the roster:");
    println!(
        "  cold load and sync of the large log:        {:>9.1} ms",
        ms(cold_load)
    );
    println!(
        "  roster sync on an idle server (median):     {:>9.1} ms ({} syncs)",
        ms(median(idle.clone())),
        idle.len()
    );
    if during.is_empty() {
        println!("  roster sync during the load:                none completed");
    } else {
        println!(
            "  roster sync during the load (median):       {:>9.1} ms ({} syncs completed during the load)",
            ms(median(during.clone())),
            during.len()
        );
        println!(
            "  ratio during / idle:                        {:>9.1}x",
            median(during).as_secs_f64() / median(idle).as_secs_f64()
        );
    }
    Ok(())
}
