//! Durable acknowledgement: a change the server acknowledged survives the
//! server process being killed the moment after.

use doorstep_protocol::schema::roster::Roster;
use doorstep_server::store::Store;
use doorstep_tests::{
    ServerProcess, SyncOutcome, TestPeer, enroll, make_district, stored_document,
};

use crate::{add_member, connected_device};

#[tokio::test]
async fn an_acknowledged_change_survives_kill_9_and_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_doorstep"));
    let store = Store::open(&dir.path().join("doorstep.db")).await?;
    let d = make_district(&store).await?;

    let server = ServerProcess::start(binary, dir.path()).await?;
    let enrolled = enroll(&store, &server.http_url(), d.yingfeng.id, "phone").await?;
    let mut device =
        connected_device(&server.http_url(), &server.ws_url(), enrolled.clone(), None).await?;
    let member = add_member(&mut device, "李淑芬");
    // `Synced` means the server's heads cover the change: the acknowledgement.
    assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);
    server.kill().await?;

    // On disk, read by another process (this one).
    let on_disk = Roster::load(&stored_document(&store, device.roster).await?);
    assert_eq!(on_disk.members[&member].name, "李淑芬");

    // And served again after a restart, to a device starting from nothing.
    let server = ServerProcess::start(binary, dir.path()).await?;
    let mut fresh = TestPeer::connect(&server.ws_url(), &enrolled.token, None).await?;
    assert_eq!(fresh.sync(device.roster).await?, SyncOutcome::Synced);
    let served = Roster::load(fresh.document(device.roster).expect("roster"));
    assert_eq!(served.members[&member].name, "李淑芬");
    server.kill().await?;
    Ok(())
}
