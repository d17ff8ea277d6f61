//! A disk that fills and then frees (issue 13, section 3): the real binary
//! on a small tmpfs. While it is full nothing is acknowledged and readiness
//! says so; once there is room again every write works, without a restart
//! (before, pooled connections kept a broken transaction after
//! `SQLITE_FULL` and 20 of 20 logins answered 500 until a restart).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use automerge::ReadDoc;
use doorstep_protocol::DocumentId;
use doorstep_server::admin;
use doorstep_server::store::Store;
use doorstep_server::tenancy::Role;
use doorstep_tests::{ServerProcess, SyncOutcome, TestPeer, enroll, eventually, make_district};
use reqwest::StatusCode;
use serde_json::json;

use crate::{add_member, connected_device};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` where mounting is not allowed (not root): the caller skips,
    /// except in CI, which runs as root and must run this test.
    fn mount(size: &str) -> anyhow::Result<Option<SmallDisk>> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Ok(Some(SmallDisk { dir })),
            other => {
                anyhow::ensure!(
                    std::env::var_os("CI").is_none(),
                    "CI must be able to mount a tmpfs (it runs as root): {other:?}"
                );
                eprintln!("skipping: cannot mount a tmpfs here ({other:?})");
                Ok(None)
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills what is left of the disk with one file.
fn fill(path: &Path) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let filler = path.join("filler");
    let mut file = std::fs::File::create(&filler)?;
    let block = vec![0x55u8; 64 * 1024];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => return Err(e),
        }
    }
    // Small writes fill the last partial block too.
    while file.write_all(&[0x55]).is_ok() {}
    let _ = file.sync_all();
    Ok(filler)
}

async fn login(url: &str) -> anyhow::Result<StatusCode> {
    Ok(reqwest::Client::new()
        .post(format!("{url}/api/v1/login"))
        .json(&json!({ "username": "secretary", "password": "a long enough password" }))
        .send()
        .await?
        .status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_stops_acknowledgements_and_writes_work_again_once_freed()
-> anyhow::Result<()> {
    let Some(disk) = SmallDisk::mount("24m")? else {
        return Ok(());
    };
    let data = disk.path().join("data");
    let store = Store::open(&data.join("doorstep.db")).await?;
    let d = make_district(&store).await?;
    admin::create_user(
        &store,
        "secretary",
        "a long enough password",
        Role::BranchSecretary,
        d.yingfeng.id,
        "test",
    )
    .await?;
    let binary = Path::new(env!("CARGO_BIN_EXE_doorstep"));
    let server = ServerProcess::start(binary, &data).await?;
    let url = server.http_url();
    let mut device = connected_device(
        &url,
        &server.ws_url(),
        enroll(&store, &url, d.yingfeng.id, "phone").await?,
        None,
    )
    .await?;
    add_member(&mut device, "王秀兰");
    assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);
    assert_eq!(login(&url).await?, StatusCode::OK);

    // Full: the change is refused, not acknowledged; readiness says so
    // while liveness does not.
    let filler = fill(disk.path())?;
    let roster: DocumentId = device.roster;
    add_member(&mut device, "李建国");
    let unacknowledged = device.peer.document(roster).expect("roster").get_heads();
    let outcome = device.peer.sync(roster).await?;
    assert!(
        matches!(
            outcome,
            SyncOutcome::Refused {
                close_code: Some(1013),
                ..
            }
        ),
        "{outcome:?}"
    );
    for _ in 0..5 {
        let status = login(&url).await?;
        assert!(status.is_server_error(), "{status}");
    }
    let ready = reqwest::get(format!("{url}/readyz")).await?;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reqwest::get(format!("{url}/healthz")).await?.status(),
        StatusCode::OK
    );

    // Freed: the same server takes writes again.
    std::fs::remove_file(filler)?;
    eventually(Duration::from_secs(10), || async {
        Ok(reqwest::get(format!("{url}/readyz")).await?.status() == StatusCode::OK)
    })
    .await?;
    for _ in 0..20 {
        assert_eq!(login(&url).await?, StatusCode::OK);
    }
    let mut again = TestPeer::connect(&server.ws_url(), &device.enrolled.token, None).await?;
    let mut replica = device.peer.document(roster).expect("roster").clone();
    replica.set_actor(device.actor.clone());
    again.open(roster, replica);
    assert_eq!(again.sync(roster).await?, SyncOutcome::Synced);
    for _ in 0..10 {
        let doc = again.document_mut(roster).expect("roster");
        let mut tx = doc.transaction();
        doorstep_protocol::schema::write_record(
            &mut tx,
            doorstep_protocol::schema::RecordId::new_v7(),
            &doorstep_protocol::schema::roster::Member {
                name: "张桂英".into(),
                ..Default::default()
            },
        )?;
        tx.commit();
        assert_eq!(again.sync(roster).await?, SyncOutcome::Synced);
    }

    // Nothing acknowledged is lost, and the change refused while full
    // arrived once there was room.
    server.kill().await?;
    let stored = doorstep_tests::stored_document(&store, roster).await?;
    for head in unacknowledged {
        assert!(stored.get_change_by_hash(&head).is_some());
    }
    store.close().await;
    Ok(())
}
