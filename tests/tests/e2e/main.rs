//! End-to-end tests: the real server on 127.0.0.1:0 with a temporary SQLite
//! database, driven over real sockets.

mod admission;
mod api;
mod authority;
mod backends;
mod bad_input;
mod bombs;
mod budgets;
mod cancellation;
mod cli;
mod convergence;
mod dashboard;
mod device;
mod device_api;
mod device_clock;
mod disk_full;
mod durability;
mod enrollment;
mod failures;
mod frame_fuzz;
mod history;
mod hostile;
mod hygiene;
mod import_fuzz;
mod interop;
mod logins;
mod nodes;
mod openapi;
mod operations;
mod operator;
mod poor_link;
mod postgres_restore;
mod postgres_tls;
mod power_cut;
mod privacy;
mod restore_fuzz;
mod review;
mod rollups;
mod row_security;
mod sdk;
mod store_lifecycle;
mod sync;
mod sync_flood;
mod sync_service;
mod tenancy;
mod tls;

use automerge::ActorId;
use doorstep_protocol::DocumentId;
use doorstep_protocol::schema::roster::{Member, MemberKind};
use doorstep_protocol::schema::{RecordId, write_record};
use doorstep_tests::{Enrolled, TestPeer, register_actor};

#[derive(Debug)]
/// A device enrolled to a branch, connected, with its roster synced and an
/// actor registered for its edits.
pub struct Device {
    pub enrolled: Enrolled,
    pub peer: TestPeer,
    pub roster: DocumentId,
    pub actor: ActorId,
}

pub async fn connected_device(
    http_url: &str,
    ws_url: &str,
    enrolled: Enrolled,
    storage: Option<&str>,
) -> anyhow::Result<Device> {
    let roster: DocumentId = enrolled
        .documents
        .iter()
        .find(|d| d.kind == "roster")
        .ok_or_else(|| anyhow::anyhow!("no roster in the document list"))?
        .document_id
        .parse()?;
    let mut peer = TestPeer::connect(ws_url, &enrolled.token, storage).await?;
    assert_eq!(
        peer.sync(roster).await?,
        doorstep_tests::SyncOutcome::Synced
    );
    let actor = ActorId::random();
    assert!(
        register_actor(http_url, &enrolled.token, &actor)
            .await?
            .is_success()
    );
    peer.document_mut(roster)
        .expect("synced roster")
        .set_actor(actor.clone());
    Ok(Device {
        enrolled,
        peer,
        roster,
        actor,
    })
}

/// A routine visit today by the SDK to `member`, with `cash_yuan` in aid.
pub fn visit_today(
    member: doorstep_client::RecordId,
    cash_yuan: i64,
    notes: Option<String>,
) -> doorstep_client::NewVisit {
    doorstep_client::NewVisit {
        date: doorstep_tests::today(),
        member_id: member,
        kind: doorstep_client::VisitKind::Routine,
        visitors: vec!["王志愿".into()],
        aid_cash: doorstep_client::Fen::from_yuan(cash_yuan),
        aid_goods: doorstep_client::Fen::ZERO,
        goods_description: None,
        notes,
        follow_up: None,
    }
}

/// Adds a member to the device's roster replica (not yet synced).
pub fn add_member(device: &mut Device, name: &str) -> RecordId {
    add_member_with_notes(device, name, None)
}

/// [`add_member`] with notes (large ones make a large change).
pub fn add_member_with_notes(device: &mut Device, name: &str, notes: Option<String>) -> RecordId {
    let id = RecordId::new_v7();
    let member = Member {
        name: name.into(),
        kinds: [MemberKind::Hardship].into(),
        notes,
        ..Member::default()
    };
    let doc = device.peer.document_mut(device.roster).expect("roster");
    let mut tx = doc.transaction();
    write_record(&mut tx, id, &member).expect("write member");
    tx.commit();
    id
}
