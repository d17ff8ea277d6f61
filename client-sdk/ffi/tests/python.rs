//! Generates the Python bindings with `uniffi-bindgen` and runs the Python
//! test (`tests/python/test_sdk.py`) against a real server.

use std::path::Path;

use anyhow::{Context, bail};
use doorstep_protocol::schema::RecordId;
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_protocol::{DocumentId, Month};
use doorstep_server::admin::issue_enrollment_code;
use doorstep_tests::TestServer;
use tokio::process::Command;

mod support;

#[tokio::test]
async fn python_enrolls_records_offline_syncs_and_reads_the_servers_view() -> anyhow::Result<()> {
    let library = support::build_library().await?;
    // One module per UniFFI namespace (protocol, client, ffi), importing
    // each other relatively: they form a package, with the library beside them.
    let bindings = tempfile::tempdir()?;
    let package = bindings.path().join("doorstep_sdk");
    support::generate(&library, "python", &package).await?;
    std::fs::write(package.join("__init__.py"), "")?;
    std::fs::copy(
        &library,
        package.join(library.file_name().context("library name")?),
    )?;

    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let code =
        |label: &'static str| issue_enrollment_code(&server.store, d.yingfeng.id, label, 1, "test");
    let (phone, office, worker) = (
        code("phone").await?.code,
        code("office").await?.code,
        code("worker").await?.code,
    );
    let now = time_now_month();
    let data = tempfile::tempdir()?;
    let output = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_sdk.py"))
        .env("BINDINGS_DIR", bindings.path())
        .env("DATA_DIR", data.path())
        .env("DOORSTEP_URL", server.http_url())
        .env("CODE_PHONE", phone)
        .env("CODE_OFFICE", office)
        .env("CODE_WORKER", worker)
        .env("MONTH", now.to_string())
        .output()
        .await
        .context("running python3")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the Python test failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // What the Python side logged (the log sink's line count and targets).
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().context("no output")?)?;

    // And the server itself has every visit the Python device recorded.
    let stored = MonthlyLog::load(
        &server
            .stored_document(DocumentId::monthly_log(d.yingfeng.id, now))
            .await?,
    );
    for id in summary["visits"].as_array().context("visits")? {
        let id: RecordId = id.as_str().context("visit id")?.parse()?;
        assert!(stored.visits.contains_key(&id), "{id} is not on the server");
    }
    Ok(())
}

fn time_now_month() -> Month {
    let now = time::OffsetDateTime::now_utc();
    Month::new(now.year(), now.month() as u8).expect("a current month")
}
