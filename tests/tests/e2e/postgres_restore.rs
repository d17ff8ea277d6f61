//! Restoring PostgreSQL from `pg_dump`, by the README's procedure: stop the
//! node, restore into an empty database, give it a new epoch
//! (`doorstep mark-restored`), start. The
//! phone then offers again what the dump lacks, and nothing it was told is
//! stored stays missing.
//!
//! Needs `DOORSTEP_TEST_POSTGRES` and PostgreSQL's client programs (the
//! test script provides both).

use std::path::PathBuf;
use std::time::Duration;

use doorstep_server::store::Location;
use doorstep_server::tenancy::Role;
use doorstep_tests::{TestServer, eventually, sdk_device};
use sqlx::Connection;

/// A program of the newest PostgreSQL installed.
fn postgres_program(name: &str) -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .collect();
    versions.sort();
    let program = versions
        .pop()
        .map(|dir| dir.join("bin").join(name))
        .filter(|path| path.is_file());
    program.ok_or_else(|| anyhow::anyhow!("PostgreSQL's {name} is not installed"))
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(postgres_program(program)?)
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn a_pg_restore_with_a_new_epoch_gets_back_from_the_phone_what_the_dump_lacks()
-> anyhow::Result<()> {
    let url = doorstep_tests::postgres_database().await?;
    let database = Location::Postgres(url.clone());
    let node = TestServer::spawn_with(move |c| c.database = database).await?;
    let d = node.district().await?;
    let phone_dir = tempfile::tempdir()?;
    let phone = sdk_device(
        &node.store,
        &node.http_url(),
        d.yingfeng.id,
        phone_dir.path(),
        |_| {},
    )
    .await?;
    doorstep_tests::record_visit(&phone, "王", 100).await?;
    phone.sync_now().await?;

    let dumps = tempfile::tempdir()?;
    let dump = dumps.path().join("doorstep.pgc");
    let dump_path = dump.to_string_lossy().into_owned();
    run("pg_dump", &["-Fc", "-f", &dump_path, &url]).await?;
    // Stored after the dump: the restored database lacks it.
    doorstep_tests::record_visit(&phone, "李", 200).await?;
    phone.sync_now().await?;

    // The database is lost; the node stops, an empty one is made and the
    // dump restored into it, with a new epoch.
    let addr = node.addr;
    let data_dir = node.stop().await;
    let name = url::Url::parse(&url)?
        .path()
        .trim_start_matches('/')
        .to_owned();
    let mut admin_url = url::Url::parse(&url)?;
    admin_url.set_path("/postgres");
    let mut admin = sqlx::PgConnection::connect(admin_url.as_str()).await?;
    sqlx::query(&format!("drop database {name} with (force)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await?;
    run("pg_restore", &["-d", &url, &dump_path]).await?;
    let marked = tokio::process::Command::new(env!("CARGO_BIN_EXE_doorstep"))
        .args(["--database", &url, "mark-restored", "--how", "pg_restore"])
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    anyhow::ensure!(
        marked.status.success(),
        "mark-restored failed: {}",
        String::from_utf8_lossy(&marked.stderr)
    );

    let node = TestServer::spawn_at(data_dir, addr, |_| {}).await?;
    let token = node
        .login_as("district", Role::DistrictAdmin, d.district.id)
        .await?;
    eventually(Duration::from_secs(30), || async {
        phone.sync_now().await?;
        let rollup: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/rollups?month=2026-11", node.http_url()))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(rollup["total"]["visits"] == 2 && rollup["total"]["aid_cash_fen"] == 300)
    })
    .await?;
    Ok(())
}
