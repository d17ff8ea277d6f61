//! Old copies of a phone's data directory put back, by generator (issue
//! 15): a seeded run of app sessions (each its own process, so the store is
//! closed between them, as on a phone) that record visits, sync, take
//! backups of the directory and restore one of them at random, any number
//! of times, even a backup older than another restore. After every
//! restore the phone must still sync (a reused actor wedged it for good,
//! issue 14); at the end the phone and the server hold every visit that
//! was acknowledged, and every visit the restores did not take back (those
//! recorded after the restored backup and never synced are the only ones
//! a restore may lose).
//!
//! `DOORSTEP_RESTORE_STEPS` sets the number of steps (60 by default),
//! `DOORSTEP_RESTORE_SEED` the seed (printed).

use doorstep_client::{Client, ClientConfig, Fen, RecordId};
use doorstep_protocol::DocumentId;
use doorstep_protocol::mutation::Seeded;
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_tests::{TestServer, test_store_key, this_month};

use crate::device::{app_process, copy_files, enrolled_app_with_member, first_day, restore};

/// One visit recorded on the phone, and what has happened to it since.
#[derive(Debug)]
struct Recorded {
    id: RecordId,
    fen: i64,
    /// The step that recorded it.
    at: usize,
    /// A sync returned while the phone held it.
    acknowledged: bool,
    /// A restore took it back before it was acknowledged.
    taken_back: bool,
}

#[tokio::test]
async fn seeded_backups_and_restores_never_wedge_the_phone_nor_lose_an_acknowledged_visit()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let url = server.http_url();
    let dir = tempfile::tempdir()?;
    let phone = dir.path();
    let member = enrolled_app_with_member(&server, d.yingfeng.id, phone, "备份轮换").await?;
    let date = first_day(this_month()).to_string();

    let steps: usize = std::env::var("DOORSTEP_RESTORE_STEPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("DOORSTEP_RESTORE_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x0014_4e57);
    eprintln!("restore fuzz: {steps} steps, seed {seed}");
    let mut plan = Seeded::new(seed);
    let mut recorded: Vec<Recorded> = Vec::new();
    let mut backups: Vec<(usize, tempfile::TempDir)> = Vec::new();
    let (mut restores, mut syncs) = (0, 0);
    for step in 0..steps {
        match plan.below(10) {
            0..=3 => {
                let fen = i64::try_from(step)? * 100 + 1;
                let out = app_process(
                    phone,
                    &url,
                    &["record-visit", &member, &date, &fen.to_string()],
                )
                .await?;
                let id: RecordId = out.strip_prefix("recorded ").unwrap_or_default().parse()?;
                recorded.push(Recorded {
                    id,
                    fen,
                    at: step,
                    acknowledged: false,
                    taken_back: false,
                });
            }
            4 | 5 => {
                // Right after a restore above all: a wedged phone fails here.
                app_process(phone, &url, &["sync"])
                    .await
                    .map_err(|e| anyhow::anyhow!("step {step} (seed {seed}): {e}"))?;
                syncs += 1;
                for visit in recorded.iter_mut().filter(|v| !v.taken_back) {
                    visit.acknowledged = true;
                }
            }
            6 | 7 => {
                let backup = tempfile::tempdir()?;
                copy_files(phone, backup.path())?;
                backups.push((step, backup));
            }
            _ => {
                if backups.is_empty() {
                    continue;
                }
                let pick = usize::try_from(plan.below(backups.len() as u64))?;
                let (taken, backup) = &backups[pick];
                restore(backup.path(), phone)?;
                restores += 1;
                for visit in recorded
                    .iter_mut()
                    .filter(|v| v.at > *taken && !v.acknowledged)
                {
                    visit.taken_back = true;
                }
            }
        }
    }
    app_process(phone, &url, &["sync"]).await?;
    let kept = recorded.iter().filter(|v| !v.taken_back).count();
    eprintln!(
        "restore fuzz: {} visits recorded, {restores} restores, {syncs} syncs, {kept} visits to keep",
        recorded.len()
    );

    let client = Client::open(ClientConfig::new(phone, &url, test_store_key())).await?;
    let checkpoint = client.checkpoint().await?;
    assert!(checkpoint.safe, "{checkpoint:?}");
    let stored = MonthlyLog::load(
        &server
            .stored_document(DocumentId::monthly_log(d.yingfeng.id, this_month()))
            .await?,
    );
    for visit in recorded.iter().filter(|v| !v.taken_back) {
        assert_eq!(
            client.visit(visit.id).await?.aid_cash,
            Fen(visit.fen),
            "the phone lost {visit:?} (seed {seed})"
        );
        assert_eq!(
            stored.visits.get(&visit.id).map(|v| v.aid_cash),
            Some(Fen(visit.fen)),
            "the server lacks {visit:?} (seed {seed})"
        );
    }
    client.close().await?;
    assert!(restores > 0 && syncs > 0, "the plan did nothing");
    Ok(())
}
