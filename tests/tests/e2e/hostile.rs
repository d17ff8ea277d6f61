//! Hostile sync messages against the real binary: each is refused with an
//! `error` and a close of that connection only, while another device keeps
//! syncing, and the server's peak memory stays small.

use std::time::Duration;

use automerge::sync;
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_protocol::schema::{DocumentKind, RecordId, genesis, write_record};
use doorstep_protocol::wire::Message;
use doorstep_protocol::{DocumentId, Month};
use doorstep_server::store::Store;
use doorstep_tests::{ServerProcess, SyncOutcome, TestPeer, enroll, make_district};

/// A sync message with one `have` whose bloom filter is `bloom` (the bytes
/// after the length prefix): heads, need and changes empty.
fn with_bloom(bloom: &[u8]) -> Vec<u8> {
    let mut data = vec![0x42, 0, 0, 1, 0];
    leb128(&mut data, bloom.len() as u64);
    data.extend_from_slice(bloom);
    data.push(0);
    data
}

fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A chain of `len` changes whose first dependency is withheld: every one
/// of them waits, as an orphan, for a change that never comes.
fn orphan_flood(branch: doorstep_protocol::TenantId, month: Month, len: usize) -> Vec<u8> {
    let mut doc =
        genesis(branch, DocumentKind::MonthlyLog(month)).with_actor(automerge::ActorId::random());
    let add = |doc: &mut automerge::Automerge| {
        let visit = crate::sync::visit("2026-11-09", RecordId::new_v7(), 100);
        let mut tx = doc.transaction();
        write_record(&mut tx, RecordId::new_v7(), &visit).expect("visit");
        tx.commit();
    };
    add(&mut doc);
    let withheld = doc.get_heads();
    for _ in 0..len {
        add(&mut doc);
    }
    let changes: Vec<Vec<u8>> = doc
        .get_changes(&withheld)
        .into_iter()
        .map(|mut c| c.bytes().into_owned())
        .collect();
    sync::Message {
        heads: doc.get_heads(),
        need: Vec::new(),
        have: vec![sync::Have::default()],
        changes: sync::ChunkList::from(changes),
        flags: None,
        version: sync::MessageVersion::V1,
    }
    .encode()
}

/// Sends `data` as a `request` for `document` on a fresh connection and
/// returns the server's `error` text and close code.
async fn refused(
    ws_url: &str,
    token: &str,
    document: DocumentId,
    data: Vec<u8>,
) -> anyhow::Result<(String, u16)> {
    let mut peer = TestPeer::connect(ws_url, token, None).await?;
    peer.send(&Message::Request {
        sender_id: peer.peer_id.clone(),
        target_id: peer.server_peer.clone(),
        document_id: document,
        data,
    })
    .await?;
    loop {
        if let Message::Error { message, .. } = peer.recv(Duration::from_secs(30)).await? {
            let (code, _) = peer.closed(Duration::from_secs(10)).await?;
            return Ok((message, code));
        }
    }
}

#[tokio::test]
async fn hostile_sync_messages_close_only_their_connection_and_memory_stays_small()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_doorstep"));
    let store = Store::open(&dir.path().join("doorstep.db")).await?;
    let d = make_district(&store).await?;
    let branch = d.yingfeng.id;
    let month: Month = "2026-11".parse()?;
    let log = DocumentId::monthly_log(branch, month);
    let server = ServerProcess::start(binary, dir.path()).await?;
    let attacker = enroll(&store, &server.http_url(), branch, "attacker").await?;
    let honest = enroll(&store, &server.http_url(), branch, "honest").await?;

    // The honest device keeps recording and syncing throughout.
    let ws = server.ws_url();
    let honest_token = honest.token.clone();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let honest_device = tokio::spawn(async move {
        let mut peer = TestPeer::connect(&ws, &honest_token, None).await?;
        peer.open(
            log,
            genesis(branch, DocumentKind::MonthlyLog(month))
                .with_actor(automerge::ActorId::random()),
        );
        let mut synced = 0usize;
        loop {
            let doc = peer.document_mut(log).expect("open");
            let mut tx = doc.transaction();
            let visit = crate::sync::visit("2026-11-10", RecordId::new_v7(), 500);
            write_record(&mut tx, RecordId::new_v7(), &visit)?;
            tx.commit();
            assert_eq!(peer.sync(log).await?, SyncOutcome::Synced);
            synced += 1;
            if stopped.try_recv().is_ok() {
                return Ok::<usize, anyhow::Error>(synced);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let attacks: Vec<(&str, Vec<u8>)> = vec![
        // One entry, zero bits per entry: `% 0` inside Automerge.
        ("zero-sized bloom filter", with_bloom(&[1, 0, 7])),
        // 2^32-1 probes: a 16 GiB allocation inside Automerge.
        ("huge probe count", {
            let mut bloom = vec![1, 10];
            leb128(&mut bloom, u64::from(u32::MAX));
            bloom.extend_from_slice(&[0xff, 0xff]);
            with_bloom(&bloom)
        }),
        // Millions of probes on a valid filter: minutes of CPU per message.
        ("CPU-burning probe count", {
            let mut bloom = vec![8, 10];
            leb128(&mut bloom, 5_000_000);
            bloom.extend_from_slice(&[0xff; 10]);
            with_bloom(&bloom)
        }),
        // A billion entries whose bits are not there.
        ("bloom filter larger than the message", {
            let mut bloom = Vec::new();
            leb128(&mut bloom, 1_000_000_000);
            bloom.extend_from_slice(&[10, 7, 0, 0]);
            with_bloom(&bloom)
        }),
        ("operation bomb", crate::bombs::operation_bomb()),
        ("deflate bomb", crate::bombs::deflate_bomb()),
        ("flood of orphans", orphan_flood(branch, month, 1100)),
        // Passes admission, then panics inside Automerge.
        (
            "change that panics Automerge",
            crate::bombs::panicking_change(&genesis(branch, DocumentKind::MonthlyLog(month))),
        ),
    ];
    for (name, data) in attacks {
        assert!(
            data.len() <= 64 * 1024 || name == "flood of orphans",
            "{name} is {} bytes",
            data.len()
        );
        let (message, code) = refused(&server.ws_url(), &attacker.token, log, data).await?;
        assert!(
            [1002, 1009, 1013].contains(&code),
            "{name}: closed with {code}: {message}"
        );
        assert!(!message.is_empty(), "{name}: the device is told why");
    }

    let _ = stop.send(());
    let synced = honest_device.await??;
    assert!(synced > 0);
    let peak = server.peak_rss_bytes()?;
    assert!(
        peak < 200 * 1024 * 1024,
        "peak RSS {} MiB",
        peak / (1024 * 1024)
    );

    // The document is healthy after all of it: a new device syncs it whole.
    let mut late = TestPeer::connect(&server.ws_url(), &attacker.token, None).await?;
    assert_eq!(late.sync(log).await?, SyncOutcome::Synced);
    assert_eq!(
        MonthlyLog::load(late.document(log).expect("log"))
            .visits
            .len(),
        synced
    );

    // Nothing of the attacks was stored; every honest visit was.
    let stored = MonthlyLog::load(&doorstep_tests::stored_document(&store, log).await?);
    assert_eq!(stored.visits.len(), synced);
    server.kill().await?;
    Ok(())
}
