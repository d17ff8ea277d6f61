//! `doorstep demo` at a tenth of the report: the district's figures equal
//! what its phones generated, as the demo reports them and as the API
//! serves them.

use anyhow::{Context, bail};
use doorstep_server::rollup::{self, Period};
use doorstep_server::store::Store;
use serde_json::Value;
use tokio::process::Command;

#[tokio::test]
async fn a_small_demo_produces_exactly_the_figures_it_generated() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = Command::new(env!("CARGO_BIN_EXE_doorstep-demo"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--scale",
            "10",
            "--exit",
            "--json",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the demo failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(stdout.contains("The district's figures match"), "{stdout}");
    assert!(stdout.contains("/dashboard"));
    let report: Value = serde_json::from_str(stdout.lines().last().context("json line")?)?;
    let plan = &report["plan"];
    assert_eq!(plan["households"], 56, "a tenth of the report's 561");

    // Independently of the demo's own check: the stored projections.
    let store = Store::open(&dir.path().join("doorstep.db")).await?;
    let district = store
        .tenant(report["district"].as_str().context("district")?.parse()?)
        .await?
        .context("the demo district")?;
    let year = time::OffsetDateTime::now_utc().year();
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
