//! Budgets by generator on the sync socket (issue 15): every kind of sync
//! message (`frame_fuzz::KINDS`, which a new message type cannot be left
//! out of) sent as fast as a socket takes it, from many sockets at once:
//! of one device (three times the sockets a device may hold), with no
//! token, and with a garbled one, each from its own address, while a
//! device of another branch keeps syncing. The real binary's memory,
//! threads, open files, audit rows and disk must stay within bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use doorstep_protocol::mutation::Seeded;
use doorstep_protocol::wire;
use doorstep_protocol::{DocumentId, PeerId, TenantId};
use doorstep_server::store::Store;
use doorstep_tests::{ServerProcess, enroll, make_district};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::budgets::{
    MIB, assert_within_process_budgets, audit_rows, honest_device, watch_threads_and_files,
};
use crate::connected_device;
use crate::frame_fuzz::{KINDS, Vocabulary, join, real_messages};

/// Messages each socket sends of its kind.
const PER_SOCKET: usize = 200;

/// One socket from `ip`: joins, sends `PER_SOCKET` messages of `kind` while
/// reading (and dropping) what comes back, then closes. Returns how many
/// messages it got out before the server closed it.
async fn flood(
    ws_url: String,
    ip: [u8; 4],
    token: Option<String>,
    vocabulary: Arc<Vocabulary>,
    kind: u64,
    seed: u64,
) -> anyhow::Result<usize> {
    let addr: std::net::SocketAddr = ws_url
        .trim_start_matches("ws://")
        .trim_end_matches("/sync")
        .parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((ip, 0)))?;
    let stream = socket.connect(addr).await?;
    let mut request = ws_url.into_client_request()?;
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
    let (mut sink, mut stream) = socket.split();
    let me = PeerId::new(format!("flood-{seed}"))?;
    let mut cases = Seeded::new(seed);
    let frames: Vec<Vec<u8>> = std::iter::once(wire::encode(&join(&me, "1")))
        .chain((0..PER_SOCKET).map(|_| wire::encode(&vocabulary.of_kind(kind, &mut cases, &me))))
        .collect();
    let reading = tokio::spawn(async move {
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await
        {}
    });
    let mut sent = 0;
    for frame in frames {
        if sink.send(WsMessage::Binary(frame.into())).await.is_err() {
            break;
        }
        sent += 1;
    }
    let _ = sink.send(WsMessage::Close(None)).await;
    reading.await?;
    Ok(sent)
}

/// The bytes the database's content takes: its pages in use, the
/// write-ahead log's committed pages included. Unlike the files' sizes
/// this grows with every row kept: the log file is reused after each
/// checkpoint and would hide a row written per message.
async fn database_bytes(path: &std::path::Path) -> anyhow::Result<u64> {
    use sqlx::Connection;
    let mut db =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display())).await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut db)
        .await?;
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(&mut db)
        .await?;
    let size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut db)
        .await?;
    db.close().await?;
    Ok(u64::try_from((pages - free) * size)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_message_kind_flooded_from_many_sockets_stays_within_the_process_budgets()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let store = Store::open(&data.path().join("doorstep.db")).await?;
    let d = make_district(&store).await?;
    let server = ServerProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_doorstep")),
        data.path(),
    )
    .await?;
    let (http, ws) = (server.http_url(), server.ws_url());
    let mut flooder = connected_device(
        &http,
        &ws,
        enroll(&store, &http, d.yingfeng.id, "flooding phone").await?,
        None,
    )
    .await?;
    let roster = flooder.roster;
    let server_view = flooder
        .peer
        .document(roster)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no roster"))?;
    let mine = flooder
        .peer
        .document_mut(roster)
        .ok_or_else(|| anyhow::anyhow!("no roster"))?;
    let vocabulary = Arc::new(Vocabulary {
        roster,
        cousin: DocumentId::roster(d.fenghuangting.id),
        missing: DocumentId::roster(TenantId::new_v7()),
        data: real_messages(&server_view, mine)?,
    });
    let token = flooder.enrolled.token.clone();
    let honest = connected_device(
        &http,
        &ws,
        enroll(&store, &http, d.fenghuangting.id, "honest phone").await?,
        None,
    )
    .await?;
    let audit_before = audit_rows(&store).await?;
    let database = data.path().join("doorstep.db");
    let disk_before = database_bytes(&database).await?;
    let threads_before = server.threads()?;
    let files_before = server.open_files()? as u64;
    let busy = Arc::new(AtomicBool::new(true));
    let pid = server.pid().expect("running");
    let (threads, files) = watch_threads_and_files(pid, busy.clone());
    let syncing = honest_device(honest, busy.clone());

    // Per kind: 12 sockets of the device, 6 with no token, 6 with a
    // garbled one; each its own address.
    let callers: [(Option<String>, usize); 3] = [
        (Some(token), 12),
        (None, 6),
        (Some("dev_garbled-token-0123456789abcdef".into()), 6),
    ];
    let (mut sockets, mut messages) = (0usize, 0usize);
    for kind in 0..KINDS {
        let mut batch = Vec::new();
        for (c, (token, count)) in callers.iter().enumerate() {
            for i in 0..*count {
                let ip = [127, 0, 10 + c as u8, 1 + i as u8];
                batch.push(tokio::spawn(flood(
                    ws.clone(),
                    ip,
                    token.clone(),
                    vocabulary.clone(),
                    kind,
                    kind * 100 + (c * 20 + i) as u64,
                )));
            }
        }
        for socket in batch {
            messages += socket.await??;
            sockets += 1;
        }
    }
    busy.store(false, Ordering::SeqCst);
    let rounds = syncing.await??;
    let (threads, files) = (threads.await?, files.await?);
    let peak = server.peak_rss_bytes()?;
    let audit = audit_rows(&store).await? - audit_before;
    let disk = database_bytes(&database).await?.saturating_sub(disk_before);
    eprintln!(
        "sync flood: {KINDS} kinds, {sockets} sockets, {messages} messages sent; peak RSS {} MiB, threads {threads_before} -> peak {threads}, open files {files_before} -> peak {files}, audit rows +{audit}, disk +{} KiB, the other device synced {rounds} times",
        peak / MIB,
        disk / 1024
    );
    assert_within_process_budgets(peak, threads_before, threads, files);
    // Refusals and roster opens are audited once per kind, not per socket.
    assert!(
        audit <= sockets / 20,
        "{audit} audit rows for {sockets} sockets"
    );
    // What may be stored meanwhile: the flood's three members, the device's
    // sync state and the other branch's members (under 1 KiB a round), never
    // a row per message (thousands of them: hundreds of KiB).
    let allowed = 64 * 1024 + 2 * 1024 * rounds as u64;
    assert!(
        disk < allowed,
        "the database grew {} KiB for {messages} messages and {rounds} rounds of the other device",
        disk / 1024
    );
    assert!(rounds >= 1, "the other branch synced meanwhile");
    let health = reqwest::get(format!("{http}/healthz")).await?;
    assert!(health.status().is_success());
    server.kill().await?;
    Ok(())
}
