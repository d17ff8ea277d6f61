//! The operator's path from the README: the real `doorstep` binary creates
//! the tenants and an enrollment code, and a device enrolls with it.

use std::path::Path;

use anyhow::{Context, bail};
use doorstep_protocol::DocumentId;
use doorstep_tests::{ServerProcess, SyncOutcome, TestPeer};
use serde_json::Value;
use tokio::process::Command;

async fn doorstep(data_dir: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_doorstep"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--json")
        .args(args)
        .env("DOORSTEP_PASSWORD", "a long enough password")
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "doorstep {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test]
async fn an_operator_sets_up_a_district_and_enrolls_a_device_with_the_cli() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path();
    let server = ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_doorstep")), data).await?;

    let district = doorstep(
        data,
        &[
            "tenant", "create", "--level", "district", "--name", "Yanshan",
        ],
    )
    .await?;
    let district_id = district["id"].as_str().context("district id")?;
    let admin = doorstep(
        data,
        &[
            "user",
            "create",
            "--username",
            "admin",
            "--role",
            "district_admin",
            "--tenant",
            district_id,
        ],
    )
    .await?;
    assert_eq!(admin["role"], "district_admin");
    let sub = doorstep(
        data,
        &[
            "tenant",
            "create",
            "--level",
            "sub_district",
            "--name",
            "Xiangyang",
            "--parent",
            district_id,
        ],
    )
    .await?;
    let branch = doorstep(
        data,
        &[
            "tenant",
            "create",
            "--level",
            "branch",
            "--name",
            "Yingfeng-Yili",
            "--parent",
            sub["id"].as_str().context("id")?,
        ],
    )
    .await?;
    let branch_id = branch["id"].as_str().context("branch id")?;
    let code = doorstep(
        data,
        &[
            "enroll-code",
            "create",
            "--branch",
            branch_id,
            "--label",
            "Li Na's phone",
        ],
    )
    .await?;

    // What the phone does with the code.
    let enrolled: doorstep_tests::Enrolled = reqwest::Client::new()
        .post(format!("{}/api/v1/enroll", server.http_url()))
        .json(&serde_json::json!({ "code": code["code"] }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(enrolled.branch_id, branch_id);
    let roster: DocumentId = enrolled.documents[0].document_id.parse()?;
    let mut peer = TestPeer::connect(&server.ws_url(), &enrolled.token, None).await?;
    assert_eq!(peer.sync(roster).await?, SyncOutcome::Synced);

    let devices = doorstep(data, &["device", "list"]).await?;
    assert_eq!(devices[0]["id"], enrolled.device_id.as_str());
    let documents = doorstep(data, &["device", "documents", &enrolled.device_id]).await?;
    assert_eq!(documents[0]["url"], roster.to_url());

    // A tenant under the wrong level is a clear error, not a crash.
    let wrong = doorstep(
        data,
        &[
            "tenant",
            "create",
            "--level",
            "branch",
            "--name",
            "x",
            "--parent",
            district_id,
        ],
    )
    .await;
    assert!(
        wrong
            .expect_err("a branch under a district is refused")
            .to_string()
            .contains("belongs under a sub_district")
    );
    server.kill().await
}

// Issue 16: SQLite lets two processes share the file, so a second `serve`
// on one data directory used to start and serve beside the first.
#[tokio::test]
async fn a_second_server_on_one_data_directory_is_refused_naming_the_first() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let binary = Path::new(env!("CARGO_BIN_EXE_doorstep"));
    let first = ServerProcess::start(binary, &data).await?;
    let pid = first.pid().context("the first server's process id")?;

    let second = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        Command::new(binary)
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the second server neither failed nor stopped")??;
    assert!(!second.status.success(), "a second server started");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains(&format!("another doorstep server (process {pid})"))
            && said.contains(&data.display().to_string()),
        "{said}"
    );
    assert!(
        !String::from_utf8_lossy(&second.stdout).contains("listening"),
        "the refused server said it was listening"
    );

    // The admin commands still work beside the running server.
    let tenants = doorstep(&data, &["tenant", "list"]).await?;
    assert!(tenants.is_array(), "{tenants}");

    // Killed, it leaves the directory free.
    first.kill().await?;
    let again = ServerProcess::start(binary, &data).await?;
    again.kill().await?;
    Ok(())
}

// Issue 16: an admin command run from the wrong folder (or with a mistyped
// --data-dir) used to make an empty database there and act on it.
#[tokio::test]
async fn an_admin_command_without_a_data_directory_is_refused_unless_asked_to_create_one()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("no-such-data");
    let refused = Command::new(env!("CARGO_BIN_EXE_doorstep"))
        .arg("--data-dir")
        .arg(&missing)
        .args(["tenant", "list"])
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    assert!(!refused.status.success(), "an empty database was made");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("there is no data directory at")
            && said.contains(&missing.display().to_string())
            && said.contains("--create"),
        "{said}"
    );
    assert!(!missing.exists(), "the refused command made the directory");

    // A folder that exists but is not a data directory (a mistyped path to
    // a parent, say) is refused too, and given no database.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere)?;
    std::fs::write(elsewhere.join("notes.txt"), "not Doorstep's")?;
    let refused = Command::new(env!("CARGO_BIN_EXE_doorstep"))
        .arg("--data-dir")
        .arg(&elsewhere)
        .args(["tenant", "list"])
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    assert!(!refused.status.success(), "an empty database was made");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("holds no Doorstep database"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!elsewhere.join("doorstep.db").exists());

    // Asked to, it makes one and works on it.
    let tenants = doorstep(&missing, &["--create", "tenant", "list"]).await?;
    assert_eq!(tenants, serde_json::json!([]));
    assert!(missing.join("doorstep.db").exists());
    Ok(())
}

// Issue 16: JSON logs as an option, for a log shipper.
#[tokio::test]
async fn the_log_is_one_json_object_a_line_when_asked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = Command::new(env!("CARGO_BIN_EXE_doorstep"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["tenant", "list"])
        .env("RUST_LOG", "info")
        .env("DOORSTEP_LOG_FORMAT", "json")
        .output()
        .await?;
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("a line that is not JSON in:\n{log}"))?;
    assert!(
        lines.iter().any(|line| line["level"] == "INFO"
            && line["fields"]["message"] == "using the database"
            && line["fields"]["database"]
                .as_str()
                .is_some_and(|db| db.ends_with("doorstep.db"))),
        "{log}"
    );
    Ok(())
}
