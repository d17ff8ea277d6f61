//! `doorstep demo` at a tenth of the report: the district's figures equal
//! what its phones generated, as the demo reports them and as the API
//! serves them.

use anyhow::{Context, bail};
use doorstep_server::rollup::{self, Period};
use doorstep_server::store::Store;
use serde_json::Value;
use tokio::process::Command;

/// `doorstep-demo --data-dir <dir> <args>` to completion.
async fn demo(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_doorstep-demo"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await?)
}

/// A tenth of the report, served by the demo itself, to the end.
const SMALL: &[&str] = &[
    "--listen",
    "127.0.0.1:0",
    "--scale",
    "10",
    "--exit",
    "--json",
];

#[tokio::test]
async fn a_small_demo_produces_exactly_the_figures_it_generated_twice_in_a_row()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut admins = Vec::new();
    // Twice on one data directory, within a minute: each run makes its
    // own district and an admin of its own.
    for _ in 0..2 {
        let output = demo(dir.path(), SMALL).await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "the demo failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(stdout.contains("The district's figures match"), "{stdout}");
        let login = stdout
            .lines()
            .find_map(|l| l.split("log in as ").nth(1))
            .context("the dashboard line names the demo's admin")?;
        admins.push(login.split(' ').next().unwrap_or_default().to_owned());
        check_figures(dir.path(), &stdout).await?;
    }
    assert_ne!(admins[0], admins[1], "each run has an admin of its own");
    Ok(())
}

/// The district the demo reported, as stored: every figure of a tenth of
/// the report, and no visit dated after today.
async fn check_figures(dir: &std::path::Path, stdout: &str) -> anyhow::Result<()> {
    let report: Value = serde_json::from_str(stdout.lines().last().context("json line")?)?;
    let plan = &report["plan"];
    assert_eq!(plan["households"], 56, "a tenth of the report's 561");

    // Independently of the demo's own check: the stored projections.
    let store = Store::open(&dir.join("doorstep.db")).await?;
    let district = store
        .tenant(report["district"].as_str().context("district")?.parse()?)
        .await?
        .context("the demo district")?;
    let today = time::OffsetDateTime::now_utc().date();
    let year = today.year();
    let future = Period {
        from: doorstep_protocol::Date::from_time(today.next_day().context("tomorrow")?),
        to: doorstep_protocol::Date::from_time(today + time::Duration::days(400)),
    };
    let ahead = rollup::rollup(&store, &district, future).await?.total;
    assert_eq!(ahead.visits, 0, "no visit is dated after today");
    let total = rollup::rollup(&store, &district, Period::year(year).context("year")?)
        .await?
        .total;
    assert_eq!(total.households_visited, 56);
    assert_eq!(total.aid_total_fen, 8_740_000);
    assert_eq!(total.fund_donations_fen, 1_420_000);
    assert_eq!((total.trainings, total.training_attendance), (1, 176));
    assert_eq!(total.placements, 30);
    assert_eq!((total.teams, total.team_categories), (12, 5));
    assert_eq!(
        (
            total.team_members,
            total.team_member_pct,
            total.team_backbone_pct
        ),
        (70, 20.0, 70.0)
    );
    Ok(())
}

/// Pointed at a server of another database, at a data directory no
/// server runs on or with no database, or at nobody, the demo refuses
/// before it writes anything; and it does not serve a data directory a
/// server already holds.
#[tokio::test]
async fn the_demo_checks_the_server_and_the_data_directory_before_writing() -> anyhow::Result<()> {
    // A server on a database of its own.
    let served = tempfile::tempdir()?;
    let store = Store::open(&served.path().join("doorstep.db")).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = doorstep_server::Config::new(served.path().join("doorstep.db"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(doorstep_server::serve(config, store, listener, async {
        let _ = stopped.await;
    }));
    let refused = |output: std::process::Output, says: &str| {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(says), "{says:?} not in {stderr}");
    };
    let run = ["--scale", "10", "--exit"];

    // Another database, with no server on it.
    let other = tempfile::tempdir()?;
    let other_store = Store::open(&other.path().join("doorstep.db")).await?;
    fn args<'a>(server: &'a str, run: &[&'a str]) -> Vec<&'a str> {
        [&["--server", server][..], run].concat()
    }
    refused(
        demo(other.path(), &args(&url, &run)).await?,
        "no server runs on",
    );
    // A server holds it (as `doorstep serve` would), but the one at the
    // address serves another database.
    let held = doorstep_server::data_dir::DataDirLock::acquire(
        other.path(),
        doorstep_server::data_dir::Hold::Serve,
    )?;
    refused(
        demo(other.path(), &args(&url, &run)).await?,
        "does not serve the database",
    );
    // Nobody answers at the address.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let nobody = format!("http://{}", closed.local_addr()?);
    drop(closed);
    refused(
        demo(other.path(), &args(&nobody, &run)).await?,
        "no Doorstep server answers",
    );
    // Serving itself, on a directory a server holds.
    refused(demo(other.path(), SMALL).await?, "--server");
    drop(held);
    assert_eq!(other_store.tenant_count().await?, 0, "nothing was written");

    // No database at all: none is made.
    let empty = tempfile::tempdir()?;
    refused(
        demo(empty.path(), &args(&url, &run)).await?,
        "holds no Doorstep database",
    );
    assert!(!empty.path().join("doorstep.db").exists());

    // The right server, on the right directory (held as `doorstep serve`
    // holds it): the demo fills it through that server.
    let serving = doorstep_server::data_dir::DataDirLock::acquire(
        served.path(),
        doorstep_server::data_dir::Hold::Serve,
    )?;
    let output = demo(served.path(), &args(&url, &run)).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("The district's figures match"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(serving);

    let _ = stop.send(());
    server.await??;
    Ok(())
}
