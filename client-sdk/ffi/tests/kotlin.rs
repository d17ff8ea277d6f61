//! Compiles the generated Kotlin bindings with a real Kotlin/JVM compiler
//! and runs a small Kotlin program against a real server (`kotlin/Main.kt`).
//!
//! The compiler is the npm package `kotlin-compiler` (the full Kotlin
//! distribution, with kotlinx-coroutines-core-jvm), installed by
//! `npm ci` in `tests/kotlin`; JNA is Debian's `libjna-java`; the JVM is
//! the system's (17). `.ci/run` installs all three.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_protocol::{DocumentId, Month};
use doorstep_server::admin::issue_enrollment_code;
use doorstep_tests::TestServer;
use tokio::process::Command;

mod support;

/// Debian's JNA (package `libjna-java`).
const JNA: &str = "/usr/share/java/jna.jar";

fn kotlin_home() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kotlin/node_modules/kotlin-compiler")
}

#[tokio::test]
async fn kotlin_compiles_the_bindings_and_records_a_visit_through_them() -> anyhow::Result<()> {
    let home = kotlin_home();
    let kotlinc = home.join("bin/kotlinc");
    if !kotlinc.exists() || !Path::new(JNA).exists() {
        bail!(
            "the Kotlin toolchain is not installed: run `npm ci` in client-sdk/ffi/tests/kotlin \
             and `apt-get install libjna-java` (as .ci/run does)"
        );
    }
    let library = support::build_library().await?;
    let out = tempfile::tempdir()?;
    let bindings = out.path().join("bindings");
    support::generate(&library, "kotlin", &bindings).await?;
    let mut sources: Vec<PathBuf> = ["doorstep_protocol", "doorstep_client", "doorstep_ffi"]
        .iter()
        .map(|ns| bindings.join(format!("uniffi/{ns}/{ns}.kt")))
        .collect();
    sources.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kotlin/Main.kt"));
    let coroutines = home.join("lib/kotlinx-coroutines-core-jvm.jar");
    let classpath = format!("{JNA}:{}", coroutines.display());
    let jar = out.path().join("test.jar");
    let compiled = Command::new(&kotlinc)
        .args(&sources)
        .args(["-nowarn", "-cp", &classpath, "-d"])
        .arg(&jar)
        .output()
        .await
        .context("running kotlinc")?;
    if !compiled.status.success() {
        bail!(
            "kotlinc failed:\n{}",
            String::from_utf8_lossy(&compiled.stderr)
        );
    }

    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let code = issue_enrollment_code(&server.store, d.yingfeng.id, "kotlin", 1, "test").await?;
    let now = time::OffsetDateTime::now_utc();
    let month = Month::new(now.year(), now.month() as u8).context("this month")?;
    let data = tempfile::tempdir()?;
    let library_dir = library.parent().context("the library's directory")?;
    let run = Command::new("java")
        .arg(format!("-Djna.library.path={}", library_dir.display()))
        .arg("-cp")
        .arg(format!(
            "{}:{classpath}:{}",
            jar.display(),
            home.join("lib/kotlin-stdlib.jar").display()
        ))
        .arg("MainKt")
        .arg(server.http_url())
        .arg(data.path())
        .arg(&code.code)
        .arg(month.to_string())
        .output()
        .await
        .context("running java")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        bail!(
            "the Kotlin program failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().context("no output")?)?;
    let visit = summary["visit"].as_str().context("visit id")?.parse()?;
    let stored = MonthlyLog::load(
        &server
            .stored_document(DocumentId::monthly_log(d.yingfeng.id, month))
            .await?,
    );
    assert!(
        stored.visits.contains_key(&visit),
        "{visit} is not on the server"
    );
    Ok(())
}
