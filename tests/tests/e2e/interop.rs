//! A client nobody here wrote: stock `@automerge/automerge-repo` 2.5 with
//! its WebSocket adapter, in Node, against the real server.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use doorstep_protocol::DocumentId;
use doorstep_protocol::schema::RecordId;
use doorstep_protocol::schema::roster::{MemberKind, Roster};
use doorstep_tests::{TestServer, eventually, workspace_root};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Installs the pinned packages from the committed lock file, once.
pub(crate) async fn npm_ci(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.join("node_modules/@automerge/automerge-repo").exists()
        && dir.join("node_modules/playwright-core").exists()
    {
        return Ok(());
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .await
        .context("running npm (Node 20 and npm are needed for this test)")?;
    if !status.success() {
        bail!("npm ci failed in {}", dir.display());
    }
    Ok(())
}

#[tokio::test]
async fn the_stock_automerge_repo_client_adds_a_member_and_is_refused_another_branch()
-> anyhow::Result<()> {
    let js = workspace_root().join("tests/js");
    npm_ci(&js).await?;
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let enrolled = server.enroll(d.yingfeng.id, "js client").await?;
    let roster = DocumentId::roster(d.yingfeng.id);
    let member = RecordId::new_v7();

    let mut child = Command::new("node")
        .arg("interop.mjs")
        .current_dir(&js)
        .env("DOORSTEP_URL", server.http_url())
        .env("DOORSTEP_TOKEN", &enrolled.token)
        .env("ROSTER_URL", roster.to_url())
        .env(
            "FOREIGN_URL",
            DocumentId::roster(d.fenghuangting.id).to_url(),
        )
        .env("MEMBER_ID", member.to_string())
        .env("MEMBER_NAME", "张建国")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting node")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next_event = async || -> anyhow::Result<Value> {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the JS client said nothing for 60 s")??
            .context("the JS client exited")?;
        let event: Value = serde_json::from_str(&line)?;
        if event["event"] == "error" {
            bail!("the JS client failed: {event}");
        }
        Ok(event)
    };

    let added = next_event().await?;
    assert_eq!(added["event"], "member_added", "{added}");
    // The Rust side sees the member, typed, in what the server stored.
    eventually(Duration::from_secs(10), || async {
        let stored = Roster::load(&server.stored_document(roster).await?);
        Ok(stored
            .members
            .get(&member)
            .is_some_and(|m| m.name == "张建国" && m.kinds.contains(&MemberKind::NoPost)))
    })
    .await?;
    let stored = server
        .store
        .change_sender(roster, &last_change_hash(&server, roster).await?)
        .await?;
    assert_eq!(
        stored.map(|(actor, _)| actor),
        added["actor_id"].as_str().map(str::to_owned)
    );

    let foreign = next_event().await?;
    assert_eq!(
        foreign,
        serde_json::json!({ "event": "foreign", "result": "unavailable" })
    );

    drop(child.stdin.take());
    let done = next_event().await?;
    assert_eq!(done["event"], "done");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert!(status.success());
    Ok(())
}

async fn last_change_hash(server: &TestServer, id: DocumentId) -> anyhow::Result<String> {
    let doc = server.stored_document(id).await?;
    let heads = doc.get_heads();
    Ok(heads.first().context("heads")?.to_string())
}
