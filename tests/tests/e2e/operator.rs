//! The operator's first hour (issue 13): what a new operator meets with the
//! real `doorstep` binary and the real HTTP API, tried as they would try it.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use doorstep_server::tenancy::Role;
use doorstep_tests::{ServerProcess, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_doorstep"))
}

/// `doorstep --data-dir <data> <args>` to completion, with no password in
/// the environment and nothing on standard input.
async fn doorstep(data: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(binary())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("DOORSTEP_PASSWORD")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A district tenant made with the CLI; its id.
async fn district(data: &Path) -> anyhow::Result<String> {
    let out = doorstep(
        data,
        &[
            "--json", "tenant", "create", "--level", "district", "--name", "Yanshan",
        ],
    )
    .await?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    let tenant: Value = serde_json::from_slice(&out.stdout)?;
    Ok(tenant["id"].as_str().context("tenant id")?.to_owned())
}

async fn login(server: &ServerProcess, username: &str, password: &str) -> anyhow::Result<Value> {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/login", server.http_url()))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::OK,
        "login answered {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// Scripts pipe the password on standard input: one line, still read.
/// The session that login opens is listed with readable UTC times, not
/// epoch milliseconds (JSON keeps the numbers).
#[tokio::test]
async fn a_piped_password_creates_a_user_and_session_list_shows_utc_times() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path();
    let tenant = district(data).await?;
    let mut child = Command::new(binary())
        .arg("--data-dir")
        .arg(data)
        .args([
            "user",
            "create",
            "--username",
            "admin",
            "--role",
            "district_admin",
            "--tenant",
            &tenant,
        ])
        .env_remove("DOORSTEP_PASSWORD")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(b"a piped long password\n").await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("created user admin"));

    let server = ServerProcess::start(binary(), data).await?;
    login(&server, "admin", "a piped long password").await?;

    let out = doorstep(data, &["session", "list"]).await?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.contains(" admin "))
        .context("the session")?;
    // `last used 2026-12-06T19:00:00Z expires 2026-12-07T07:00:00Z`
    for word in ["used", "expires"] {
        let at = line
            .split_whitespace()
            .skip_while(|w| *w != word)
            .nth(1)
            .with_context(|| format!("{word} in {line:?}"))?;
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .with_context(|| format!("{at:?} in {line:?} is not RFC 3339"))?;
        assert!(at.ends_with('Z'), "{at} is UTC");
    }
    assert!(
        !line
            .split_whitespace()
            .any(|w| w.len() >= 12 && w.bytes().all(|b| b.is_ascii_digit())),
        "no epoch milliseconds: {line}"
    );
    let out = doorstep(data, &["--json", "session", "list"]).await?;
    let sessions: Value = serde_json::from_slice(&out.stdout)?;
    assert!(sessions[0]["last_used_at"].is_i64(), "{sessions}");
    server.kill().await
}

/// Typed at a terminal, the password is not echoed. `script` gives the
/// command a real pseudo-terminal (with echo on, as a shell leaves it) and
/// copies what the terminal shows to its standard output.
#[tokio::test]
async fn a_password_typed_at_a_terminal_is_not_echoed() -> anyhow::Result<()> {
    const TYPED: &str = "typed-secret-words";
    let dir = tempfile::tempdir()?;
    let data = dir.path();
    let tenant = district(data).await?;
    let command = format!(
        "'{}' --data-dir '{}' user create --username admin --role district_admin --tenant {tenant}",
        binary().display(),
        data.display()
    );
    let mut child = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env_remove("DOORSTEP_PASSWORD")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("`script` (util-linux) runs the command on a pseudo-terminal")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut shown = Vec::new();
    // Type each line once the prompt is up, as a person would; the pause
    // lets the prompt's reader turn echo off first.
    for prompt in 0..2 {
        let seen = tokio::time::timeout(Duration::from_secs(30), async {
            let mut buf = [0u8; 1024];
            loop {
                let n = stdout.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, anyhow::Error>(false);
                }
                shown.extend_from_slice(&buf[..n]);
                let prompts = text(&shown).matches("password").count();
                if prompts > prompt {
                    return Ok(true);
                }
            }
        })
        .await
        .context("no password prompt")??;
        if !seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stdin.write_all(format!("{TYPED}\n").as_bytes()).await?;
        stdin.flush().await?;
    }
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        stdout.read_to_end(&mut shown).await?;
        Ok::<_, anyhow::Error>(child.wait().await?)
    })
    .await
    .context("the command did not finish")??;
    drop(stdin);
    let screen = text(&shown);
    assert!(
        !screen.contains(TYPED),
        "the terminal showed the password:\n{screen}"
    );
    ensure!(status.success(), "user create failed:\n{screen}");
    assert!(screen.contains("created user admin"), "{screen}");

    let server = ServerProcess::start(binary(), data).await?;
    login(&server, "admin", TYPED).await?;
    server.kill().await
}

/// `serve` with something that stops start-up: it must exit non-zero with
/// the given message and never print "listening".
async fn refuses_to_start(data: &Path, extra: &[&str], says: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new(binary());
    command
        .arg("--data-dir")
        .arg(data)
        .arg("serve")
        .args(extra)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .context("serve kept running")??;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{extra:?}: exited 0");
    assert!(
        !stdout.contains("listening"),
        "{extra:?}: said it listens before failing:\n{stdout}\n{stderr}"
    );
    for needle in says {
        assert!(
            stderr.contains(needle),
            "{extra:?}: no {needle:?} in:\n{stderr}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn serve_refuses_a_missing_tls_file_before_listening() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path();
    district(data).await?; // a database with its migrations applied

    // A missing TLS file.
    let missing = data.join("missing-cert.pem");
    let missing = missing.to_str().context("utf-8 path")?;
    refuses_to_start(
        data,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            missing,
            "--tls-key",
            missing,
        ],
        &["TLS", "missing-cert.pem"],
    )
    .await
}

#[tokio::test]
async fn serve_names_the_address_in_use_and_how_to_choose_another() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path();
    // The address taken by another program.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    refuses_to_start(
        data,
        &["--listen", &addr],
        &[&addr, "already in use", "--listen", "DOORSTEP_LISTEN"],
    )
    .await?;
    drop(taken);
    Ok(())
}

/// A database the server may read but not write (files and folder read-
/// only). Root writes anyway, so as root the server runs as `nobody`.
#[tokio::test]
async fn serve_refuses_a_read_only_database_before_listening() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data)?;
    district(&data).await?;
    for entry in std::fs::read_dir(&data)? {
        std::fs::set_permissions(entry?.path(), std::fs::Permissions::from_mode(0o444))?;
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let is_root = text(&std::process::Command::new("id").arg("-u").output()?.stdout).trim() == "0";
    let mut command = if is_root {
        // `nobody` may not reach the build's folder (a checkout under
        // /root): run a link or copy of the binary beside the data.
        let exe = dir.path().join("doorstep");
        if std::fs::hard_link(binary(), &exe).is_err() {
            std::fs::copy(binary(), &exe)?;
        }
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(exe);
        c
    } else {
        Command::new(binary())
    };
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        command
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("serve kept running on a read-only database")??;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "exited 0:\n{stdout}\n{stderr}");
    assert!(
        !stdout.contains("listening"),
        "said it listens on a read-only database:\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("cannot be written"), "{stderr}");
    Ok(())
}

async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<(StatusCode, String, Value)> {
    let response = request.send().await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.text().await?;
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    Ok((status, content_type, json))
}

/// A phone that enrolls twice with one code learns that the code was
/// used, and an expired code says so, instead of "not valid".
// On SQLite only: it reads the SQLite file itself.
#[tokio::test]
async fn a_reused_enrollment_code_says_it_was_already_used() -> anyhow::Result<()> {
    doorstep_tests::on_sqlite(a_reused_enrollment_code_says_it_was_already_used_on_sqlite()).await
}

async fn a_reused_enrollment_code_says_it_was_already_used_on_sqlite() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let enroll = |code: String| {
        send(
            reqwest::Client::new()
                .post(format!("{}/api/v1/enroll", server.http_url()))
                .json(&json!({ "code": code })),
        )
    };
    let issued = doorstep_server::admin::issue_enrollment_code(
        &server.store,
        d.yingfeng.id,
        "Li Na's phone",
        72,
        "cli",
    )
    .await?;
    let (status, _, _) = enroll(issued.code.clone()).await?;
    assert_eq!(status, StatusCode::CREATED);
    let (status, content_type, again) = enroll(issued.code.clone()).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert!(content_type.starts_with("application/json"));
    assert_eq!(again["code"], "enrollment_code_used");
    assert!(
        again["error"]
            .as_str()
            .is_some_and(|e| e.contains("already used")),
        "{again}"
    );

    let expiring = doorstep_server::admin::issue_enrollment_code(
        &server.store,
        d.yingfeng.id,
        "spare tablet",
        1,
        "cli",
    )
    .await?;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", server.database_path().display()))
        .await?;
    sqlx::query("update enrollment_codes set expires_at = 0 where id = ?")
        .bind(expiring.details.id.to_string())
        .execute(&pool)
        .await?;
    pool.close().await;
    let (status, _, expired) = enroll(expiring.code).await?;
    assert_eq!(status, StatusCode::GONE, "{expired}");
    assert_eq!(expired["code"], "enrollment_code_expired");

    // A code nobody issued still says only "not valid".
    let (status, _, unknown) = enroll("BCWX-8XSK-C3PX".into()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{unknown}");
    assert!(unknown.get("code").is_none(), "{unknown}");
    Ok(())
}

/// What axum's extractors refuse answers in the API's own error shape:
/// JSON with `error` and a `code`, never plain text.
#[tokio::test]
async fn extractor_rejections_answer_json_like_every_api_error() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let admin = server
        .login_as("admin", Role::DistrictAdmin, d.district.id)
        .await?;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.http_url());
    let cases = [
        (
            "no content type",
            http.post(url("/api/v1/login"))
                .body(r#"{"username": "a", "password": "b"}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "text/plain",
            http.post(url("/api/v1/login"))
                .header("content-type", "text/plain")
                .body(r#"{"username": "a", "password": "b"}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "not JSON",
            http.post(url("/api/v1/login"))
                .header("content-type", "application/json")
                .body("{username"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "a field of the wrong type",
            http.post(url("/api/v1/login"))
                .json(&json!({ "username": 5, "password": "b" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "a missing field",
            http.post(url("/api/v1/tenants"))
                .bearer_auth(&admin)
                .json(&json!({ "name": "x" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "a query that does not parse",
            http.get(url("/api/v1/health?stale_days=a-week"))
                .bearer_auth(&admin),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "a path that is not UTF-8",
            http.post(url("/api/v1/devices/%FF%FE/revoke"))
                .bearer_auth(&admin)
                .json(&json!({})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    let too_large = format!(
        r#"{{"username": "{}", "password": "b"}}"#,
        "a".repeat(100 * 1024)
    );
    let cases = cases.into_iter().chain([(
        "a body over the limit",
        http.post(url("/api/v1/login"))
            .header("content-type", "application/json")
            .body(too_large.clone()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )]);
    for (what, request, status, code) in cases {
        let (got, content_type, body) = send(request).await?;
        assert_eq!(got, status, "{what}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{what}: answered {content_type}"
        );
        assert_eq!(body["code"], code, "{what}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
    }

    // The same body sent in chunks, with no length up front: refused while
    // it is read, in the same shape.
    let mut socket = tokio::net::TcpStream::connect(server.addr).await?;
    let mut request = format!(
        "POST /api/v1/login HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        server.addr
    )
    .into_bytes();
    for chunk in too_large.as_bytes().chunks(8 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before it has read everything.
    let _ = socket.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer)).await;
    let answer = text(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").context("an HTTP answer")?;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    assert!(body.contains("payload_too_large"), "{body}");
    Ok(())
}

/// `year=26` is a typo, not the year 26: every form of a period wants a
/// four-digit year in a sane range, and says so in a JSON 400.
#[tokio::test]
async fn rollup_periods_want_four_digit_years() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let admin = server
        .login_as("admin", Role::DistrictAdmin, d.district.id)
        .await?;
    let http = reqwest::Client::new();
    for query in [
        "year=26",
        "year=0026",
        "year=+2026",
        "year=20266",
        "quarter=26-Q4",
        "quarter=2026-Q5",
        "month=2026-13",
        "month=26-11",
        "from=0026-01-01&to=2026-12-31",
        "from=2026-01-01&to=9999-12-31",
    ] {
        let (status, _, body) = send(
            http.get(format!("{}/api/v1/rollups?{query}", server.http_url()))
                .bearer_auth(&admin),
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["code"], "invalid_period", "{query}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("1900 to 2100")),
            "{query}: {body}"
        );
    }
    for query in ["year=2026", "quarter=2026-Q4", "month=2026-11"] {
        let (status, _, body) = send(
            http.get(format!("{}/api/v1/rollups?{query}", server.http_url()))
                .bearer_auth(&admin),
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
    }
    Ok(())
}

/// Every command and argument explains itself, and `--help` works for
/// each: clap's own consistency checks, then a walk of the whole tree.
#[tokio::test]
async fn every_command_and_argument_has_help() -> anyhow::Result<()> {
    let command = doorstep_server::cli::command();
    command.clone().debug_assert();
    let mut missing = Vec::new();
    let mut paths = vec![Vec::<String>::new()];
    let mut stack = vec![(Vec::<String>::new(), command)];
    while let Some((path, command)) = stack.pop() {
        if !path.is_empty() && command.get_about().is_none_or(|a| a.to_string().is_empty()) {
            missing.push(format!("doorstep {}", path.join(" ")));
        }
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg
                .get_help()
                .is_none_or(|h| h.to_string().trim().is_empty())
            {
                missing.push(format!("doorstep {} <{id}>", path.join(" ")));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let mut sub_path = path.clone();
            sub_path.push(sub.get_name().to_owned());
            paths.push(sub_path.clone());
            stack.push((sub_path, sub.clone()));
        }
    }
    assert!(missing.is_empty(), "no help text: {missing:#?}");
    assert!(paths.len() > 25, "walked {} commands", paths.len());

    for path in paths {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = Command::new(binary()).args(&args).output().await?;
        if !out.status.success() {
            bail!("doorstep {args:?} failed: {}", text(&out.stderr));
        }
        assert!(text(&out.stdout).contains("Usage:"), "{args:?}");
    }
    // The main commands show examples.
    for path in [
        &["serve"][..],
        &["tenant", "create"],
        &["user", "create"],
        &["user", "invite"],
        &["enroll-code", "create"],
        &["device", "revoke"],
        &["audit", "list"],
    ] {
        let out = Command::new(binary())
            .args(path)
            .arg("--help")
            .output()
            .await?;
        assert!(
            text(&out.stdout).contains("Examples:\n  doorstep"),
            "{path:?} shows no examples"
        );
    }
    Ok(())
}

/// The same promise as above, generated from the route table: every API
/// route, as a district admin, as a device and with no token, sent a body that is not
/// JSON, JSON that does not parse, JSON of the wrong shape, a body over the
/// limit, an id that is no id and a query that does not parse. Whatever is
/// refused is refused in the API's JSON error shape, and nothing is a 500:
/// a new route cannot answer in plain text unseen.
#[tokio::test]
async fn every_api_route_refuses_bad_input_in_json() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let admin = server
        .login_as("admin", Role::DistrictAdmin, d.district.id)
        .await?;
    // A device's token too: device routes read their body after it.
    let device = server.enroll(d.yingfeng.id, "phone").await?.token;
    let http = reqwest::Client::new();
    let too_large = format!(r#"{{"name": "{}"}}"#, "a".repeat(100 * 1024));
    let bodies: [(&str, Option<&str>, String); 5] = [
        ("no body", None, String::new()),
        ("text/plain", Some("text/plain"), r#"{"name": "x"}"#.into()),
        ("not JSON", Some("application/json"), "{name".into()),
        (
            "the wrong shape",
            Some("application/json"),
            r#"[1, 2, 3]"#.into(),
        ),
        ("over the limit", Some("application/json"), too_large),
    ];
    // Logging out ends the admin's session: last.
    let (logout, mut routes): (Vec<_>, Vec<_>) = crate::openapi::router_operations()?
        .into_iter()
        .partition(|(_, path)| path == "/api/v1/logout");
    routes.extend(logout);
    let mut refused = std::collections::BTreeMap::<u16, usize>::new();
    let mut wrong = Vec::new();
    for (method, path) in &routes {
        if !path.starts_with("/api/") {
            continue;
        }
        let method: reqwest::Method = method.parse()?;
        for id in ["not-an-id", &uuid::Uuid::now_v7().to_string()] {
            let query = "?year=26&month=x&stale_days=a-week&format=xml&by=nothing&limit=-1";
            let url = format!("{}{}{query}", server.http_url(), path.replace("{id}", id));
            for token in [Some(admin.as_str()), Some(device.as_str()), None] {
                for (what, content_type, body) in &bodies {
                    let mut request = http.request(method.clone(), &url);
                    if let Some(token) = token {
                        request = request.bearer_auth(token);
                    }
                    if method != reqwest::Method::GET {
                        if let Some(content_type) = content_type {
                            request = request.header("content-type", *content_type);
                        }
                        request = request.body(body.clone());
                    }
                    let response = request.send().await?;
                    let status = response.status();
                    let content_type = response
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let text = response.text().await?;
                    if status.is_success() {
                        continue;
                    }
                    *refused.entry(status.as_u16()).or_default() += 1;
                    // The documented shape: `error` always, `code` where
                    // there is one to act on, and always for a body refused.
                    let needs_code = matches!(status.as_u16(), 413 | 415 | 422);
                    let shaped = serde_json::from_str::<Value>(&text).is_ok_and(|v| {
                        v["error"].as_str().is_some_and(|e| !e.is_empty())
                            && match &v["code"] {
                                Value::Null => !needs_code,
                                code => code.as_str().is_some_and(|c| !c.is_empty()),
                            }
                    });
                    if status.is_server_error()
                        || !content_type.starts_with("application/json")
                        || !shaped
                    {
                        wrong.push(format!(
                            "{method} {path} ({what}, id {id}, token {}): {status} {content_type} {text:.200}",
                            token.is_some()
                        ));
                    }
                }
            }
        }
    }
    eprintln!("bad input on every route: refusals by status {refused:?}");
    assert!(
        wrong.is_empty(),
        "answers not in the API's JSON error shape:\n{}",
        wrong.join("\n")
    );
    assert!(refused.values().sum::<usize>() > 300, "{refused:?}");
    Ok(())
}
