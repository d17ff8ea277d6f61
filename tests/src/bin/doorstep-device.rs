//! A device as a process: the SDK behind a tiny command line, so a test can
//! kill it the moment an edit returns.
//!
//! `doorstep-device DATA_DIR SERVER_URL COMMAND [ARGS]` with COMMAND one of
//! `enroll CODE`, `add-member NAME`, `record-visit MEMBER_ID DATE CASH_FEN
//! [--hold]`, `sync`, `export FILE` (the unsynced edits), `hold` (open the
//! store and wait to be killed). Results
//! go to stdout, one line each. The store key is the tests' stand-in.

use anyhow::{Context, bail};
use doorstep_client::{Client, ClientConfig, Fen, NewMember, NewVisit, VisitKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data_dir, server, command, rest @ ..] = args.as_slice() else {
        bail!("usage: doorstep-device DATA_DIR SERVER_URL COMMAND [ARGS]");
    };
    let client = Client::open(ClientConfig::new(
        data_dir,
        server,
        doorstep_tests::test_store_key(),
    ))
    .await?;
    match (command.as_str(), rest) {
        ("enroll", [code]) => {
            let enrolled = client.enroll(code).await?;
            println!("enrolled {}", enrolled.device_id);
        }
        ("add-member", [name]) => {
            let id = client
                .add_member(NewMember {
                    name: name.clone(),
                    ..NewMember::default()
                })
                .await?;
            println!("member {id}");
        }
        ("record-visit", [member, date, cash, hold @ ..]) => {
            let id = client
                .record_visit(NewVisit {
                    date: date.parse()?,
                    member_id: member.parse().context("member id")?,
                    kind: VisitKind::SpecialDifficulty,
                    visitors: vec!["volunteer".into()],
                    aid_cash: Fen(cash.parse()?),
                    aid_goods: Fen::ZERO,
                    goods_description: None,
                    notes: None,
                    follow_up: None,
                })
                .await?;
            println!("recorded {id}");
            if hold.first().map(String::as_str) == Some("--hold") {
                // Wait to be killed: nothing after the edit returned may matter.
                std::future::pending::<()>().await;
            }
        }
        ("export", [file]) => {
            let export = client.export_unsynced().await?;
            std::fs::write(file, &export)?;
            println!("exported {} bytes", export.len());
        }
        ("hold", []) => {
            println!("open");
            std::future::pending::<()>().await;
        }
        ("sync", []) => {
            let report = client.sync_now().await?;
            println!(
                "synced {} documents, {} changes sent",
                report.documents, report.changes_sent
            );
        }
        _ => bail!("unknown command {command} {rest:?}"),
    }
    // Closed before the process exits: SQLCipher's connections close on
    // threads of their own, and one still closing when `exit` runs
    // OpenSSL's exit handlers crashed the process (1 run in about 15).
    client.close().await?;
    Ok(())
}
