//! The officials' dashboard in a real browser (Debian's Chromium, driven by
//! playwright-core): log in, pick a period, drill down, download the CSV,
//! and see the same figures the API gives.

use std::time::Duration;

use anyhow::{Context, bail};
use doorstep_client::{Fen, NewMember, NewVisit, VisitKind};
use doorstep_server::admin;
use doorstep_server::tenancy::Role;
use doorstep_tests::{TestServer, sdk_device, workspace_root};
use serde_json::Value;
use tokio::process::Command;

fn yuan(fen: &Value) -> String {
    let fen = fen.as_i64().unwrap_or(0);
    // As the page formats it: zh-CN grouping, two decimals.
    let whole = (fen / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{grouped}.{:02}", fen % 100)
}

#[tokio::test]
async fn an_official_logs_in_picks_a_period_drills_down_and_downloads_the_csv() -> anyhow::Result<()>
{
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        bail!("{chromium} is missing: install Debian's chromium package (.ci/run does)");
    }
    let js = workspace_root().join("tests/js");
    crate::interop::npm_ci(&js).await?;

    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    // Visits in two branches under two sub-districts.
    let mut dirs = Vec::new();
    for (branch, visits) in [(d.yingfeng.id, 3), (d.fenghuangting.id, 2)] {
        let dir = tempfile::tempdir()?;
        let phone = sdk_device(
            &server.store,
            &server.http_url(),
            branch,
            dir.path(),
            |_| {},
        )
        .await?;
        let member = phone
            .add_member(NewMember {
                name: "成员".into(),
                ..NewMember::default()
            })
            .await?;
        for day in 0..visits {
            phone
                .record_visit(NewVisit {
                    date: format!("2026-0{}-1{day}", 3 + day).parse()?,
                    member_id: member,
                    kind: VisitKind::Routine,
                    visitors: vec!["v".into()],
                    aid_cash: Fen(123_456),
                    aid_goods: Fen(50),
                    goods_description: None,
                    notes: None,
                    follow_up: None,
                })
                .await?;
        }
        phone.sync_now().await?;
        dirs.push(dir);
    }
    let password = "a long enough password";
    admin::create_user(
        &server.store,
        "official",
        password,
        Role::DistrictAdmin,
        d.district.id,
        "test",
    )
    .await?;
    let token = server
        .login_as("api-reader", Role::DistrictAdmin, d.district.id)
        .await?;
    let api: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/rollups?year=2026", server.http_url()))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;

    let out = tempfile::tempdir()?;
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("node")
            .arg("dashboard.mjs")
            .current_dir(&js)
            .env("DOORSTEP_URL", server.http_url())
            .env("DOORSTEP_USER", "official")
            .env("DOORSTEP_PASSWORD", password)
            .env("YEAR", "2026")
            .env("DRILL", &d.xiangyang.name)
            .env("OUT_DIR", out.path())
            .env("CHROMIUM", &chromium)
            .output(),
    )
    .await
    .context("the browser test took over two minutes")??;
    if !output.status.success() {
        bail!(
            "dashboard.mjs failed: {}",
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

    // The table shows the API's figures, row by row.
    let top = seen["top"].as_array().context("top rows")?;
    let mut expected: Vec<&Value> = api["rows"].as_array().context("rows")?.iter().collect();
    expected.push(&api["total"]);
    assert_eq!(top.len(), expected.len());
    for (shown, want) in top.iter().zip(expected) {
        assert_eq!(shown["tenant"], want["tenant"]);
        assert_eq!(
            shown["visits"].as_str(),
            Some(want["visits"].to_string().as_str())
        );
        assert_eq!(
            shown["households_visited"].as_str(),
            Some(want["households_visited"].to_string().as_str())
        );
        assert_eq!(
            shown["aid_total_fen"].as_str(),
            Some(yuan(&want["aid_total_fen"]).as_str())
        );
    }
    assert_eq!(top.last().context("total")?["visits"], "5");

    // The CSV the browser downloaded is the API's CSV.
    let csv: String = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/rollups?year=2026&format=csv",
            server.http_url()
        ))
        .bearer_auth(&token)
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(
        seen["csv"]
            .as_str()
            .map(|s| s.trim_start_matches('\u{feff}')),
        Some(csv.trim_start_matches('\u{feff}'))
    );

    // Drilled into Xiangyang: its one branch, three visits.
    let drilled = seen["drilled"].as_array().context("drilled rows")?;
    assert_eq!(drilled[0]["tenant"], d.yingfeng.name.as_str());
    assert_eq!(drilled[0]["visits"], "3");
    assert_eq!(seen["health"][0][0], d.yingfeng.name.as_str());
    Ok(())
}
