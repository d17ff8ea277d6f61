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

/// The demo year in the dashboard, in Debian's Chromium: the Spring
/// Festival campaign stands out from the weeks before it, and the page's
/// comparisons with the previous period and a year earlier are the API's
/// figures for exactly the periods the API names.
#[tokio::test]
async fn the_dashboard_shows_the_spring_festival_peak_of_the_demo_year() -> anyhow::Result<()> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/js");
    if !std::path::Path::new(&chromium).exists() || !js.join("node_modules").exists() {
        bail!("needs Debian's chromium and `npm ci` in tests/js (.ci/run installs both)");
    }
    let dir = tempfile::tempdir()?;
    // Served by the demo until dropped; its day pinned, so the year is the
    // same whenever this runs.
    let mut demo = Command::new(env!("CARGO_BIN_EXE_doorstep-demo"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--scale",
            "10",
            "--today",
            "2026-12-01",
        ])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = demo.stdout.take().context("the demo's output")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let login = tokio::time::timeout(std::time::Duration::from_secs(300), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("Dashboard: ") {
                return anyhow::Ok(rest.to_owned());
            }
        }
        bail!("the demo ended before it served the dashboard")
    })
    .await
    .context("the demo took over five minutes")??;
    // "http://127.0.0.1:PORT/dashboard  (log in as USER / PASSWORD)"
    let url = login
        .split("/dashboard")
        .next()
        .context("the dashboard's address")?
        .to_owned();
    let (user, password) = login
        .split("log in as ")
        .nth(1)
        .and_then(|s| s.trim_end_matches(')').split_once(" / "))
        .context("the demo's admin")?;

    let client = reqwest::Client::new();
    let token: Value = client
        .post(format!("{url}/api/v1/login"))
        .json(&serde_json::json!({ "username": user, "password": password }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = token["token"].as_str().context("a token")?.to_owned();
    let rollup = |query: String| {
        let request = client
            .get(format!("{url}/api/v1/rollups?{query}"))
            .bearer_auth(&token);
        async move {
            anyhow::Ok(
                request
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<Value>()
                    .await?,
            )
        }
    };
    let campaign = rollup("campaign=2026-spring-festival".into()).await?;
    let previous = rollup(
        campaign["previous"]["query"]
            .as_str()
            .context("previous")?
            .into(),
    )
    .await?;
    let year_earlier = rollup(
        campaign["year_earlier"]["query"]
            .as_str()
            .context("a year earlier")?
            .into(),
    )
    .await?;
    assert_eq!(campaign["period"]["from"], "2026-01-20");
    assert_eq!(campaign["period"]["to"], "2026-02-16");
    assert_eq!(campaign["previous"]["from"], "2025-12-23");
    assert_eq!(
        campaign["year_earlier"]["query"],
        "campaign=2025-spring-festival"
    );

    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        Command::new("node")
            .arg("campaign.mjs")
            .current_dir(&js)
            .env("DOORSTEP_URL", &url)
            .env("DOORSTEP_USER", user)
            .env("DOORSTEP_PASSWORD", password)
            .env("YEAR", "2026")
            .env("CHROMIUM", &chromium)
            .output(),
    )
    .await
    .context("the browser took over two minutes")??;
    if !output.status.success() {
        bail!(
            "campaign.mjs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let seen: Value = serde_json::from_slice(
        output
            .stdout
            .split(|b| *b == b'\n')
            .next()
            .unwrap_or_default(),
    )?;
    assert_eq!(seen["period"], "2026-01-20/2026-02-16", "{seen}");
    assert!(
        seen["title"].as_str().unwrap_or_default().contains("春节"),
        "{seen}"
    );
    // The comparison columns are headed by the periods the API named.
    let headings = seen["headings"].to_string();
    for words in [
        "2026年春节前走访",
        "上期",
        "2025年12月23日",
        "去年同期",
        "2025年春节前走访",
    ] {
        assert!(headings.contains(words), "{words}: {headings}");
    }

    // The peak: the campaign's visits against the four weeks before it.
    let visits = |r: &Value| r["total"]["visits"].as_i64().unwrap_or(-1);
    assert!(
        visits(&campaign) > 5 * visits(&previous).max(1),
        "campaign {} against {} before it",
        visits(&campaign),
        visits(&previous)
    );
    // The page's comparisons are the API's, figure by figure.
    for key in [
        "visits",
        "households_visited",
        "aid_total_fen",
        "trainings",
        "placements",
        "fund_donations_fen",
    ] {
        let shown = &seen["compare"][key];
        for (which, api) in [
            ("current", &campaign),
            ("previous", &previous),
            ("year_earlier", &year_earlier),
        ] {
            assert_eq!(
                shown[which].as_f64(),
                api["total"][key].as_f64(),
                "{key}, {which}: {seen}"
            );
        }
    }
    // The chart's months add up to the campaign's visits.
    let charted: i64 = seen["months"]
        .as_array()
        .context("months")?
        .iter()
        .map(|m| m[1].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(charted, visits(&campaign), "{seen}");
    Ok(())
}
