//! The officials' dashboard in a real browser (Debian's Chromium, driven by
//! playwright-core): log in, pick a period, drill down, download the CSV,
//! and see the same figures the API gives; tenant names that are HTML show
//! as text and run nothing, under a strict CSP. Also the security headers
//! on every response, and CSV exports that a spreadsheet cannot run.

use std::time::Duration;

use anyhow::{Context, bail};
use doorstep_client::{Fen, HardshipKind, NewHardshipEntry, NewMember, NewVisit, VisitKind};
use doorstep_protocol::TenantId;
use doorstep_server::admin;
use doorstep_server::tenancy::{Level, Role};
use doorstep_tests::{TestServer, sdk_device, workspace_root};
use serde_json::Value;
use tokio::process::Command;

/// Names a sub-district admin could give a branch to run script in the
/// district admin's dashboard.
const IMG_ONERROR: &str = "<img src=x onerror=alert(1)>";
const SVG_ONLOAD: &str = "\"><svg onload=alert(2)>";
/// A sub-district, so that a hostile name is on the first screen too (table,
/// chart label and the chart's `<title>` tooltip).
const TITLE_BREAKOUT: &str = "</title><img src=x onerror=alert(3)><title>";
/// Sub-districts named to run as a formula in the CSV the page builds.
const FORMULA_NAME: &str = "=HYPERLINK(\"http://x\";\"y\")";
const FULL_WIDTH_FORMULA_NAME: &str = "＝1+1";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Debian's Chromium (or `CHROMIUM`), and the JS driver folder with its
/// packages installed.
async fn browser() -> anyhow::Result<(String, std::path::PathBuf)> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        bail!("{chromium} is missing: install Debian's chromium package (.ci/run does)");
    }
    let js = workspace_root().join("tests/js");
    crate::interop::npm_ci(&js).await?;
    Ok((chromium, js))
}

/// Runs the driver `script` in `js` with `env` (and `CHROMIUM`), within two
/// minutes, and returns the JSON line it prints: what the person saw.
async fn run_driver(
    chromium: &str,
    js: &std::path::Path,
    script: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("node")
            .arg(script)
            .current_dir(js)
            .envs(env.iter().copied())
            .env("CHROMIUM", chromium)
            .output(),
    )
    .await
    .context("the browser test took over two minutes")??;
    if !output.status.success() {
        bail!(
            "{script} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(
        output
            .stdout
            .split(|b| *b == b'\n')
            .next()
            .unwrap_or_default(),
    )?)
}

/// A phone enrolled to `branch` with one member named `member` and
/// `visits` visits in 2026, synced. Keep the directory alive.
async fn phone_with_visits(
    server: &TestServer,
    branch: TenantId,
    member: &str,
    household: Option<&str>,
    visits: u32,
) -> anyhow::Result<tempfile::TempDir> {
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
            name: member.into(),
            household: household.map(str::to_owned),
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
    Ok(dir)
}

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
    let (chromium, js) = browser().await?;

    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    // Branches named to inject script, under Xiangyang (where the test
    // drills down), and a sub-district so named on the first screen.
    let img = server
        .store
        .create_tenant(Some(d.xiangyang.id), Level::Branch, IMG_ONERROR)
        .await?;
    let svg = server
        .store
        .create_tenant(Some(d.xiangyang.id), Level::Branch, SVG_ONLOAD)
        .await?;
    for name in [TITLE_BREAKOUT, FORMULA_NAME, FULL_WIDTH_FORMULA_NAME] {
        server
            .store
            .create_tenant(Some(d.district.id), Level::SubDistrict, name)
            .await?;
    }
    // Visits in four branches under two sub-districts: seven in all.
    let mut dirs = Vec::new();
    for (branch, visits) in [
        (d.yingfeng.id, 3),
        (d.fenghuangting.id, 2),
        (img.id, 1),
        (svg.id, 1),
    ] {
        dirs.push(phone_with_visits(&server, branch, "成员", None, visits).await?);
    }
    // A member in hardship (not visited), so that the coverage chart has
    // a row for every unit, the hostile ones among them.
    dirs.push(phone_with_hardship(&server, d.yingfeng.id, 2026, 1, 0).await?);
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
    let api = server.get_json(&token, "/api/v1/rollups?year=2026").await?;

    let out = tempfile::tempdir()?;
    let url = server.http_url();
    let top_names = serde_json::to_string(&[TITLE_BREAKOUT])?;
    let drilled_names = serde_json::to_string(&[IMG_ONERROR, SVG_ONLOAD])?;
    let out_dir = out.path().to_string_lossy().into_owned();
    let seen = run_driver(
        &chromium,
        &js,
        "dashboard.mjs",
        &[
            ("DOORSTEP_URL", url.as_str()),
            ("DOORSTEP_USER", "official"),
            ("DOORSTEP_PASSWORD", password),
            ("YEAR", "2026"),
            ("DRILL", d.xiangyang.name.as_str()),
            ("HOSTILE_TOP", top_names.as_str()),
            ("HOSTILE_DRILLED", drilled_names.as_str()),
            ("OUT_DIR", out_dir.as_str()),
        ],
    )
    .await?;

    // The table shows the API's figures, row by row.
    let top = seen["top"].as_array().context("top rows")?;
    let mut expected: Vec<&Value> = api["rows"].as_array().context("rows")?.iter().collect();
    expected.push(&api["total"]);
    assert_eq!(top.len(), expected.len());
    let expected_rows = expected.len();
    for (i, (shown, want)) in top.iter().zip(expected).enumerate() {
        // The total row is called the total.
        if i + 1 == top.len() {
            assert_eq!(shown["tenant"], "合计");
        } else {
            assert_eq!(shown["tenant"], want["tenant"]);
        }
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
    assert_eq!(top.last().context("total")?["visits"], "7");

    // The CSV the browser downloaded is the view: Chinese headings, every
    // unit by name, the total's figures, and the unit and period in its name.
    let cells = csv_cells(seen["csv"].as_str().context("csv")?);
    assert_eq!(cells[0][0], "单位");
    assert_eq!(cells[0][1], "走访次数 (本期)");
    assert_eq!(cells.len(), expected_rows + 1, "{cells:?}");
    let total = cells.last().context("total")?;
    assert_eq!((total[0].as_str(), total[1].as_str()), ("合计", "7"));
    assert_eq!(
        seen["csvName"],
        format!("帮扶统计_{}_2026年.csv", d.district.name)
    );
    assert_no_formula(
        "the dashboard's CSV",
        seen["csv"].as_str().unwrap_or_default(),
    );
    assert!(cells.iter().any(|r| r[0] == TITLE_BREAKOUT), "{cells:?}");
    // Names a spreadsheet would run, half- or full-width, are text.
    for name in [FORMULA_NAME, FULL_WIDTH_FORMULA_NAME] {
        assert!(
            cells.iter().any(|r| r[0] == format!("'{name}")),
            "{name}: {cells:?}"
        );
    }

    // Drilled into Xiangyang: its three branches, Yingfeng with three visits.
    let drilled = seen["drilled"].as_array().context("drilled rows")?;
    assert_eq!(
        drilled.len(),
        4,
        "three branches and the total: {drilled:?}"
    );
    let yingfeng = drilled
        .iter()
        .find(|r| r["tenant"] == d.yingfeng.name.as_str())
        .context("Yingfeng in the drilled table")?;
    assert_eq!(yingfeng["visits"], "3");
    // A wrong month is said in Chinese at once, and the previous period's
    // figures leave the screen (none stays under an error about another).
    let wrong = &seen["wrongMonth"];
    assert!(
        wrong["status"]
            .as_str()
            .unwrap_or_default()
            .contains("月份应为"),
        "{wrong}"
    );
    for key in ["rows", "healthRows", "bars"] {
        assert_eq!(wrong[key], 0, "{key}: {wrong}");
    }
    let health = seen["health"].as_array().context("health rows")?;
    assert!(
        health.iter().any(|r| r[0] == d.yingfeng.name.as_str()),
        "{health:?}"
    );

    // The hostile names show as text, in the table, the chart, its tooltip
    // and the health panel, and nothing was injected. (A dialog, a console
    // error or a CSP violation would have failed dashboard.mjs already.)
    for (view, names) in [
        ("hostileTop", &[TITLE_BREAKOUT][..]),
        ("hostileDrilled", &[IMG_ONERROR, SVG_ONLOAD][..]),
    ] {
        let report = &seen[view];
        assert_eq!(
            report["injected"],
            serde_json::json!([]),
            "{view}: {report}"
        );
        for name in names {
            let found = &report["found"][name];
            for place in ["table", "chart", "tooltip"] {
                assert_eq!(found[place], 1, "{name:?} as text in the {place}: {report}");
            }
            if view == "hostileDrilled" {
                assert_eq!(found["health"], 1, "{name:?} in the health panel: {report}");
            }
        }
    }
    assert!(
        drilled
            .iter()
            .any(|r| r["tenant"] == IMG_ONERROR && r["visits"] == "1")
    );
    assert!(top.iter().any(|r| r["tenant"] == TITLE_BREAKOUT));

    // The page came with the CSP, and the CSP is enforced: an inline script
    // put into the page did not run and was reported.
    assert_eq!(seen["headers"]["content-security-policy"], CSP);
    assert_eq!(seen["headers"]["x-content-type-options"], "nosniff");
    assert_eq!(seen["styled"], true, "dashboard.css applied");
    assert_eq!(seen["control"]["ran"], false, "{}", seen["control"]);
    assert!(
        seen["control"]["violations"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["directive"] == "script-src-elem")),
        "{}",
        seen["control"]
    );

    // The token lived in memory only.
    assert_eq!(seen["tokenStored"], false);
    assert_eq!(seen["storageEntries"], 0);
    assert_eq!(seen["cookies"], 0);
    assert_eq!(seen["loggedOutOnReload"], true);
    Ok(())
}

#[tokio::test]
async fn security_headers_are_on_every_response() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let token = server
        .login_as("headers", Role::DistrictAdmin, d.district.id)
        .await?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let url = server.http_url();
    let requests = [
        (client.get(format!("{url}/dashboard")), 200, "text/html"),
        (
            client.get(format!("{url}/dashboard.js")),
            200,
            "text/javascript",
        ),
        (client.get(format!("{url}/dashboard.css")), 200, "text/css"),
        (client.get(format!("{url}/")), 303, ""),
        (
            client.get(format!("{url}/healthz")),
            200,
            "application/json",
        ),
        (
            client.get(format!("{url}/api/v1/me")),
            401,
            "application/json",
        ),
        (
            client.get(format!("{url}/api/v1/me")).bearer_auth(&token),
            200,
            "application/json",
        ),
        (
            client
                .get(format!("{url}/api/v1/rollups?year=2026&format=csv"))
                .bearer_auth(&token),
            200,
            "text/csv",
        ),
        (
            client
                .get(format!("{url}/api/v1/rollups?year=nope"))
                .bearer_auth(&token),
            400,
            "application/json",
        ),
        (client.get(format!("{url}/no-such-page")), 404, ""),
        (client.delete(format!("{url}/api/v1/me")), 405, ""),
        (
            client
                .post(format!("{url}/api/v1/login"))
                .header("content-type", "application/json")
                .body(vec![b' '; 100 * 1024]),
            413,
            "",
        ),
        (
            client.get(format!("{url}/api/v1/openapi.json")),
            200,
            "application/json",
        ),
    ];
    for (request, status, content_type) in requests {
        let response = request.send().await?;
        let what = format!("{} {}", response.status(), response.url());
        assert_eq!(response.status().as_u16(), status, "{what}");
        let headers = response.headers();
        assert_eq!(headers["content-security-policy"], CSP, "{what}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
        assert_eq!(headers["x-frame-options"], "DENY", "{what}");
        if !content_type.is_empty() {
            let got = headers["content-type"].to_str()?;
            assert!(got.starts_with(content_type), "{what}: {got}");
        }
    }

    // The page itself: no inline script, style or event handler for the
    // CSP to refuse, and no HTML parsing of data in its script.
    let html = client
        .get(format!("{url}/dashboard"))
        .send()
        .await?
        .text()
        .await?;
    assert!(!html.contains("<script>") && !html.contains("<style"));
    assert!(!html.contains(" style="), "{html}");
    let handler = html.match_indices(" on").find(|(at, _)| {
        let rest = &html[at + 3..];
        let word = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_lowercase())
                .len();
        word > 0 && rest[word..].starts_with('=')
    });
    assert!(handler.is_none(), "an inline event handler: {handler:?}");
    let js = client
        .get(format!("{url}/dashboard.js"))
        .send()
        .await?
        .text()
        .await?;
    for sink in [
        ".innerHTML",
        ".outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "sessionStorage.",
        "localStorage.",
        "document.cookie",
    ] {
        assert!(!js.contains(sink), "dashboard.js uses {sink}");
    }
    Ok(())
}

/// Cells of an RFC 4180 CSV body (after the byte-order mark).
fn csv_cells(body: &str) -> Vec<Vec<String>> {
    let body = body.trim_start_matches('\u{feff}');
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut chars = body.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

/// No cell a spreadsheet would run: each one that starts like a formula is
/// a number we wrote.
fn assert_no_formula(what: &str, body: &str) {
    for row in csv_cells(body) {
        for cell in row {
            if cell.starts_with([
                '=', '+', '-', '@', '\t', '\r', '\n', '\u{ff1d}', '\u{ff0b}', '\u{ff0d}',
                '\u{ff20}',
            ]) {
                assert!(
                    cell.parse::<f64>().is_ok(),
                    "{what}: the cell {cell:?} would run as a formula"
                );
            }
        }
    }
}

#[tokio::test]
async fn csv_exports_show_formula_names_as_text() -> anyhow::Result<()> {
    const FORMULA: &str = "=HYPERLINK(\"http://x\",\"y\")";
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let branch = server
        .store
        .create_tenant(Some(d.xiangyang.id), Level::Branch, FORMULA)
        .await?;
    let _phone = phone_with_visits(&server, branch.id, FORMULA, Some("@SUM(A1)"), 1).await?;
    let admin = server
        .login_as("csv-admin", Role::DistrictAdmin, d.district.id)
        .await?;
    let secretary = server
        .login_as("csv-secretary", Role::BranchSecretary, branch.id)
        .await?;
    let get = |token: &str, path: String| {
        let request = reqwest::Client::new()
            .get(format!("{}{path}", server.http_url()))
            .bearer_auth(token);
        async move {
            let response = request.send().await?.error_for_status()?;
            anyhow::Ok(response.text().await?)
        }
    };
    let x = d.xiangyang.id;
    let figures = [
        format!("/api/v1/rollups?year=2026&tenant={x}&format=csv"),
        format!("/api/v1/rollups/breakdown?by=visits_by_kind&year=2026&tenant={x}&format=csv"),
        format!("/api/v1/health?tenant={x}&format=csv"),
    ];
    for path in figures {
        let body = get(&admin, path.clone()).await?;
        assert_no_formula(&path, &body);
        let cells = csv_cells(&body);
        assert!(
            cells.iter().flatten().any(|c| c == &format!("'{FORMULA}")),
            "{path}: the branch's name as text: {body}"
        );
        assert!(
            body.contains("\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""),
            "{path}: {body}"
        );
    }

    // The branch's own members list, with names.
    let path = format!("/api/v1/branches/{}/members?format=csv", branch.id);
    let body = get(&secretary, path.clone()).await?;
    assert_no_formula(&path, &body);
    let cells = csv_cells(&body);
    let header = &cells[0];
    let name = header.iter().position(|h| h == "name").context("name")?;
    let household = header
        .iter()
        .position(|h| h == "household")
        .context("household")?;
    assert_eq!(cells.len(), 2, "one member: {body}");
    assert_eq!(cells[1][name], format!("'{FORMULA}"));
    assert_eq!(cells[1][household], "'@SUM(A1)");
    // Chinese text is untouched.
    assert!(
        get(&admin, "/api/v1/rollups?year=2026&format=csv".into())
            .await?
            .contains("向阳街道")
    );
    Ok(())
}

/// The onboarding pages in a real browser: an invited official opens the
/// invitation link, sets a password (told at once when the two differ,
/// with nothing sent), lands logged in, changes the password on the page,
/// and logs in again with the new one. No `curl` anywhere.
#[tokio::test]
async fn an_invited_official_activates_changes_the_password_and_logs_in_on_the_page()
-> anyhow::Result<()> {
    let (chromium, js) = browser().await?;

    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let admin = server
        .login_as("district", Role::DistrictAdmin, d.district.id)
        .await?;
    let invited: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/users", server.http_url()))
        .bearer_auth(&admin)
        .json(&serde_json::json!({
            "username": "向阳街道管理员",
            "role": "sub_district_admin",
            "tenant_id": d.xiangyang.id.to_string(),
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let code = invited["activation_code"]
        .as_str()
        .context("a sub-district admin's invitation comes with its code")?;

    let url = server.http_url();
    let seen = run_driver(
        &chromium,
        &js,
        "onboarding.mjs",
        &[
            ("DOORSTEP_URL", url.as_str()),
            ("CODE", code),
            ("USERNAME", "向阳街道管理员"),
            ("PASSWORD", "the first long password"),
            ("NEW_PASSWORD", "a second long password"),
        ],
    )
    .await?;
    assert_eq!(seen["prefilled"], true, "{seen}");
    assert!(
        !seen["urlAfter"].as_str().unwrap_or_default().contains(code),
        "the code left in the address bar: {seen}"
    );
    assert!(
        seen["mismatch"]
            .as_str()
            .unwrap_or_default()
            .contains("不一致"),
        "{seen}"
    );
    assert_eq!(seen["sentOnMismatch"], 0, "{seen}");
    assert_eq!(seen["clearedOnMismatch"], true, "{seen}");
    assert_eq!(
        seen["leftBehind"],
        serde_json::json!([]),
        "secrets left in fields after logout: {seen}"
    );
    assert_eq!(seen["activations"], 1, "{seen}");
    for key in ["who", "relogged"] {
        assert!(
            seen[key]
                .as_str()
                .unwrap_or_default()
                .contains("向阳街道管理员"),
            "{key}: {seen}"
        );
    }
    assert!(
        seen["changed"]
            .as_str()
            .unwrap_or_default()
            .contains("密码已修改"),
        "{seen}"
    );
    assert_eq!(seen["activateHidden"], true, "{seen}");

    // The old password no longer logs in; the new one does (the page's
    // last login above), and the invitation cannot be used again.
    let old = reqwest::Client::new()
        .post(format!("{}/api/v1/login", server.http_url()))
        .json(&serde_json::json!({ "username": "向阳街道管理员", "password": "the first long password" }))
        .send()
        .await?;
    assert_eq!(old.status(), reqwest::StatusCode::UNAUTHORIZED);
    let again = reqwest::Client::new()
        .post(format!("{}/api/v1/activate", server.http_url()))
        .json(&serde_json::json!({ "code": code, "password": "a third long password" }))
        .send()
        .await?;
    assert!(again.status().is_client_error(), "{}", again.status());
    Ok(())
}

/// A phone enrolled to `branch` with `members` members in hardship since
/// 1 January of `year`, of whom the first `visited` are visited that year,
/// synced.
async fn phone_with_hardship(
    server: &TestServer,
    branch: TenantId,
    year: i32,
    members: u32,
    visited: u32,
) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let phone = sdk_device(
        &server.store,
        &server.http_url(),
        branch,
        dir.path(),
        |_| {},
    )
    .await?;
    for i in 0..members {
        let member = phone
            .add_member(NewMember {
                name: format!("困难党员{i}"),
                ..NewMember::default()
            })
            .await?;
        phone
            .open_hardship_entry(NewHardshipEntry {
                member_id: member,
                kind: HardshipKind::Illness,
                opened_on: format!("{year}-01-01").parse()?,
                needs: Vec::new(),
            })
            .await?;
        if i < visited {
            phone
                .record_visit(NewVisit {
                    date: format!("{year}-{:02}-15", i % 12 + 1).parse()?,
                    member_id: member,
                    kind: VisitKind::HolidayCondolence,
                    visitors: vec!["v".into()],
                    aid_cash: Fen(10_000 * i64::from(i + 1)),
                    aid_goods: Fen(0),
                    goods_description: None,
                    notes: None,
                    follow_up: None,
                })
                .await?;
        }
    }
    phone.sync_now().await?;
    Ok(dir)
}

/// What `pdftotext`, `pdfinfo` or `pdftoppm` (Debian's poppler-utils)
/// printed for `args`.
async fn poppler(tool: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<Vec<u8>> {
    let output = Command::new(tool)
        .args(args)
        .output()
        .await
        .with_context(|| format!("{tool}: install Debian's poppler-utils (.ci/run does)"))?;
    if !output.status.success() {
        bail!("{tool} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(output.stdout)
}

/// The share of a binary PGM picture's pixels that are not near white.
fn inked_share(pgm: &[u8]) -> anyhow::Result<f64> {
    // "P5", width, height, maxval, each after whitespace, then the pixels.
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while pgm.get(at).context("a PGM header")?.is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while !pgm.get(at).context("a PGM header")?.is_ascii_whitespace() {
            at += 1;
        }
        fields.push(std::str::from_utf8(&pgm[start..at])?.to_owned());
    }
    anyhow::ensure!(fields[0] == "P5", "not a binary PGM: {fields:?}");
    let pixels = &pgm[at + 1..];
    anyhow::ensure!(!pixels.is_empty(), "no pixels");
    Ok(pixels.iter().filter(|p| **p < 200).count() as f64 / pixels.len() as f64)
}

/// The dashboard an office uses, on a laptop, a wide screen and a phone:
/// nothing sticks out sideways, every group of columns can be shown, no
/// two chart labels touch (also with fifteen branches with long names),
/// coverage bars are drawn to scale on a 0–100% axis; the zh/en switch
/// changes every visible label; the CSV follows the view; and the printed
/// report has the table and both charts on A4 pages.
#[tokio::test]
async fn the_dashboard_fits_every_screen_draws_to_scale_speaks_both_languages_and_prints()
-> anyhow::Result<()> {
    let (chromium, js) = browser().await?;
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let many = server
        .store
        .create_tenant(
            Some(d.district.id),
            Level::SubDistrict,
            "十五个支部的街道工委",
        )
        .await?;
    let mut branches = Vec::new();
    for n in 1..=15 {
        branches.push(
            server
                .store
                .create_tenant(
                    Some(many.id),
                    Level::Branch,
                    &format!("第{n}社区党支部（老旧小区片区）"),
                )
                .await?,
        );
    }
    let mut phones = Vec::new();
    // Coverage from 8% to 100%, in branches of both sub-districts.
    for (branch, year, members, visited) in [
        (branches[0].id, 2026, 12, 1),
        (branches[1].id, 2026, 4, 4),
        (branches[2].id, 2026, 5, 3),
        (d.yingfeng.id, 2026, 6, 2),
        (d.fenghuangting.id, 2026, 3, 3),
        // Last year's, for the comparisons to have something to compare.
        (branches[3].id, 2025, 3, 2),
        (d.yingfeng.id, 2025, 1, 1),
    ] {
        phones.push(phone_with_hardship(&server, branch, year, members, visited).await?);
    }
    let password = "a long enough password";
    admin::create_user(
        &server.store,
        "office",
        password,
        Role::DistrictAdmin,
        d.district.id,
        "test",
    )
    .await?;
    let token = server
        .login_as("layout-reader", Role::DistrictAdmin, d.district.id)
        .await?;
    let top = server.get_json(&token, "/api/v1/rollups?year=2026").await?;
    let drilled = server
        .get_json(
            &token,
            &format!("/api/v1/rollups?year=2026&tenant={}", many.id),
        )
        .await?;
    let top_before = server.get_json(&token, "/api/v1/rollups?year=2025").await?;
    let drilled_before = server
        .get_json(
            &token,
            &format!("/api/v1/rollups?year=2025&tenant={}", many.id),
        )
        .await?;
    assert_eq!(top["previous"]["query"], "year=2025");
    assert_eq!(top["year_earlier"]["query"], "year=2025");

    let out = tempfile::tempdir()?;
    let url = server.http_url();
    let out_dir = out.path().to_string_lossy().into_owned();
    let seen = run_driver(
        &chromium,
        &js,
        "layout.mjs",
        &[
            ("DOORSTEP_URL", url.as_str()),
            ("DOORSTEP_USER", "office"),
            ("DOORSTEP_PASSWORD", password),
            ("YEAR", "2026"),
            ("DRILL", many.name.as_str()),
            ("OUT_DIR", out_dir.as_str()),
        ],
    )
    .await?;

    // Every screen, view and group: nothing sideways, every column shown.
    let screens = seen["screens"].as_array().context("screens")?;
    assert_eq!(screens.len(), 6, "three screens, two views each");
    for screen in screens {
        let at = format!("{} px, {}", screen["width"], screen["view"]);
        assert_eq!(screen["overflow"], serde_json::json!([]), "{at}");
        assert_eq!(
            screen["collisions"],
            serde_json::json!([]),
            "{at}: chart labels touch"
        );
        let groups = screen["groups"].as_object().context("groups")?;
        assert_eq!(groups.len(), 4, "{at}");
        let mut keys = Vec::new();
        for (group, seen) in groups {
            assert_eq!(seen["overflow"], serde_json::json!([]), "{at}, {group}");
            let columns = seen["columns"].as_array().context("columns")?;
            assert!(!columns.is_empty(), "{at}, {group}");
            for column in columns {
                assert_eq!(column["shown"], true, "{at}, {group}: {column}");
                keys.push(column["key"].as_str().unwrap_or_default().to_owned());
            }
        }
        // Between them the groups show every figure of the old flat table.
        for key in [
            "visits",
            "aid_total_fen",
            "hardship_visited_pct",
            "fund_payments_fen",
            "team_members",
            "team_backbone_pct",
        ] {
            assert!(keys.iter().any(|k| k == key), "{at}: {key} in no group");
        }
        // Bars to scale: a bar's length over the axis from 0% to 100% is
        // the API's coverage.
        let (api, before) = if screen["view"] == "district" {
            (&top, &top_before)
        } else {
            (&drilled, &drilled_before)
        };
        // The comparisons are the API's figures of this unit, this year
        // and last.
        assert!(before["total"]["visits"].as_i64() > Some(0));
        for key in ["visits", "households_visited", "aid_total_fen"] {
            let shown = &screen["compare"][key];
            assert_eq!(shown["current"], api["total"][key], "{at}: {key}");
            assert_eq!(shown["previous"], before["total"][key], "{at}: {key}");
            assert_eq!(shown["year_earlier"], before["total"][key], "{at}: {key}");
        }
        let rows = api["rows"].as_array().context("rows")?;
        let bars = screen["coverage"].as_array().context("coverage")?;
        assert_eq!(bars.len(), rows.len(), "{at}: a bar per unit");
        for row in rows {
            let bar = bars
                .iter()
                .find(|b| b["tenant"] == row["tenant_id"])
                .with_context(|| format!("{at}: a bar for {}", row["tenant"]))?;
            let want = row["hardship_visited_pct"].as_f64().context("pct")? / 100.0;
            let got = bar["share"].as_f64().context("share")?;
            assert!(
                (got - want).abs() < 0.01,
                "{at}: {} drawn at {got}, is {want}",
                row["tenant"]
            );
            assert_eq!(bar["starts"], true, "{at}: bars start at 0%");
        }
    }
    // The eight-percent branch really is drawn short: 1 of 12.
    assert!(
        drilled["rows"]
            .as_array()
            .context("rows")?
            .iter()
            .any(|r| r["hardship_visited_pct"] == 8.3)
    );

    // The first branch's page, opened with the keyboard: counts only, the
    // API's; names refused without a grant, and nothing listed.
    let page = &seen["branchPage"];
    let first = &drilled["rows"][0];
    assert_eq!(page["title"], first["tenant"], "{page}");
    assert_eq!(page["focused"], "branch-title", "{page}");
    // Reached with Tab alone, and its names button and way back too.
    for key in ["tabsToBranch", "tabsToNames"] {
        assert!(page[key].as_i64() > Some(0), "{key}: {page}");
    }
    assert_eq!(page["backFocused"], "branch-back", "{page}");
    for key in ["visits", "households_visited", "hardship_registered"] {
        assert_eq!(
            page["figures"][key],
            first[key].to_string(),
            "{key}: {page}"
        );
    }
    assert_eq!(
        page["figures"]["hardship_visited_pct"],
        format!("{}%", first["hardship_visited_pct"])
    );
    assert_eq!(page["health"]["devices"], "1", "{page}");
    assert_eq!(page["health"]["future_visits"], "0", "{page}");
    assert!(
        page["namesStatus"]
            .as_str()
            .unwrap_or_default()
            .contains("下钻授权"),
        "{page}"
    );
    assert_eq!(page["namesListed"], 0, "{page}");
    assert_eq!(
        page["backTo"], first["tenant"],
        "focus returns to the row: {page}"
    );

    // Every visible label changes with the language.
    let (zh, en) = (
        seen["zh"]["labels"].as_array().context("zh")?,
        seen["en"]["labels"].as_array().context("en")?,
    );
    assert!(zh.len() > 40, "{zh:?}");
    assert_eq!(
        zh.len(),
        en.len(),
        "the same labels in both: {:?} {:?}",
        &zh[zh.len().saturating_sub(25)..],
        &en[en.len().saturating_sub(25)..]
    );
    let unchanged: Vec<_> = zh.iter().zip(en).filter(|(a, b)| a == b).collect();
    assert!(
        unchanged.is_empty(),
        "labels the switch left alone: {unchanged:?}"
    );
    assert_eq!(seen["en"]["lang"], "en");

    // The CSV follows the view: its language's headings, the unit's name
    // and the period in the file name, yuan not fen.
    let zh_csv = &seen["zh"]["csv"];
    let name = zh_csv["name"].as_str().context("name")?;
    assert!(
        name.contains(&d.district.name) && name.contains("2026年"),
        "{name}"
    );
    let cells = csv_cells(zh_csv["body"].as_str().context("body")?);
    assert_eq!(cells[0][0], "单位");
    assert!(
        cells[0].iter().any(|h| h == "帮扶金额(元) (本期)"),
        "{:?}",
        cells[0]
    );
    let aid = cells[0]
        .iter()
        .position(|h| h == "帮扶金额(元) (本期)")
        .context("aid")?;
    let total = cells.last().context("total row")?;
    assert_eq!(total[0], "合计");
    let fen = top["total"]["aid_total_fen"].as_i64().context("aid")?;
    assert_eq!(
        total[aid].parse::<f64>()?,
        fen as f64 / 100.0,
        "yuan, not fen"
    );
    assert_eq!(
        cells.len(),
        top["rows"].as_array().context("rows")?.len() + 2
    );
    let en_csv = &seen["en"]["csv"];
    let en_name = en_csv["name"].as_str().context("name")?;
    assert!(
        en_name.starts_with("rollup_") && en_name.contains("2026"),
        "{en_name}"
    );
    let en_cells = csv_cells(en_csv["body"].as_str().context("body")?);
    assert_eq!(en_cells[0][0], "Unit");
    assert!(
        en_cells[0]
            .iter()
            .any(|h| h == "Aid (yuan) (in the period)"),
        "{:?}",
        en_cells[0]
    );
    let campaign = seen["campaignCsv"]["name"].as_str().context("campaign")?;
    assert!(campaign.contains("Spring_Festival_2026"), "{campaign}");

    // The printed report: A4 pages, not blank, with the table (every unit
    // of the view), the period and both charts in its text.
    let pdf = out.path().join("report.pdf");
    let info = String::from_utf8(poppler("pdfinfo", &[pdf.as_os_str()]).await?)?;
    assert!(info.contains("(A4)"), "{info}");
    let text = String::from_utf8(poppler("pdftotext", &[pdf.as_os_str(), "-".as_ref()]).await?)?;
    for row in top["rows"].as_array().context("rows")? {
        let name = row["tenant"].as_str().context("name")?;
        assert!(
            text.contains(name),
            "{name} missing from the printed report:\n{text}"
        );
    }
    for words in [
        d.district.name.as_str(),
        "2026-01-01",
        "2026-12-31",
        "帮扶工作报表",
        "每月走访次数与帮扶金额",
        "困难党员走访覆盖率",
        "100%",
        "生成于",
    ] {
        assert!(
            text.contains(words),
            "{words:?} missing from the printed report:\n{text}"
        );
    }
    let prefix = out.path().join("page");
    poppler(
        "pdftoppm",
        &[
            "-gray".as_ref(),
            "-r".as_ref(),
            "40".as_ref(),
            pdf.as_os_str(),
            prefix.as_os_str(),
        ],
    )
    .await?;
    let mut pages: Vec<_> = std::fs::read_dir(out.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pgm"))
        .collect();
    pages.sort();
    assert!(!pages.is_empty(), "pdftoppm drew no page");
    let first = inked_share(&std::fs::read(&pages[0])?)?;
    assert!(first > 0.01, "the first page is blank: {first}");
    Ok(())
}
