//! A connection's frame sequence under fuzzing (issue 15), against the real
//! binary. Each case is one connection of an enrolled device sending a
//! seeded sequence of frames: every protocol message type (valid, for its
//! own roster, a cousin branch's, a document that does not exist), real
//! sync messages with and without changes, garbage, mutated encodings, text
//! frames, pings, a join missing, repeated or of a wrong version; ten
//! connections of two devices at a time. Each must end: the server answers only frames
//! that decode, names no document but its own roster in anything but
//! `doc-unavailable`, closes after every `error`, never with a server
//! failure, and ends after the client's close, never waiting five seconds
//! for a frame. The
//! process logs no panic, another device of the branch keeps syncing
//! throughout, and nothing it stored is lost or made invalid.
//!
//! `DOORSTEP_FRAME_FUZZ_CASES` sets the number of connections (2,000 by
//! default), `DOORSTEP_FRAME_FUZZ_SEED` the seed (printed).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use automerge::Automerge;
use automerge::sync::{self, SyncDoc};
use doorstep_protocol::mutation::{Seeded, mutate};
use doorstep_protocol::schema::roster::Roster;
use doorstep_protocol::wire::{self, Limits, Message, PeerMetadata, RemoteHeads};
use doorstep_protocol::{DocumentId, PeerId, StorageId, TenantId};
use doorstep_server::store::Store;
use doorstep_tests::{ServerProcess, SyncOutcome, TestPeer, enroll, make_district};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{add_member, connected_device};

/// How many kinds of message [`Vocabulary::of_kind`] makes: every message
/// type of the protocol (see [`kind_of`]), a join of a wrong version, and a
/// sync under another peer's name.
pub(crate) const KINDS: u64 = 14;

/// The kind number of a message: a new message type does not compile
/// until it is given one here and in [`Vocabulary::of_kind`], so neither
/// this harness nor the flood in `sync_flood` can leave it out.
pub(crate) fn kind_of(message: &Message) -> u64 {
    match message {
        Message::Join { .. } => 0,
        Message::Request { .. } => 2,
        Message::Sync { .. } => 3,
        Message::DocUnavailable { .. } => 4,
        Message::Ephemeral { .. } => 5,
        Message::Leave { .. } => 6,
        Message::Error { .. } => 7,
        Message::RemoteSubscriptionChange { .. } => 8,
        Message::RemoteHeadsChanged { .. } => 9,
        Message::CountedRequest { .. } => 10,
        Message::Peer { .. } => 11,
        Message::Counted { .. } => 12,
    }
}

/// What one case's frames are made of.
pub(crate) struct Vocabulary {
    pub(crate) roster: DocumentId,
    pub(crate) cousin: DocumentId,
    pub(crate) missing: DocumentId,
    /// Sync messages a real peer sends: first messages (heads and a bloom
    /// filter) from a copy of the roster and from an empty document, and
    /// messages carrying new members by the device's registered actor.
    pub(crate) data: Vec<Vec<u8>>,
}

impl Vocabulary {
    fn document(&self, cases: &mut Seeded) -> DocumentId {
        match cases.below(4) {
            0 | 1 => self.roster,
            2 => self.cousin,
            _ => self.missing,
        }
    }

    fn data(&self, cases: &mut Seeded) -> Vec<u8> {
        let pick = usize::try_from(cases.below(self.data.len() as u64 + 1)).unwrap_or(0);
        self.data.get(pick).cloned().unwrap_or_else(|| {
            let len = cases.below(64);
            (0..len)
                .map(|_| cases.next_u64().to_le_bytes()[0])
                .collect()
        })
    }

    /// A message; `polite` keeps to those a stock peer sends once joined.
    fn message(&self, cases: &mut Seeded, me: &PeerId, polite: bool) -> Message {
        let kind = if polite {
            [2, 3, 3, 4, 5, 8, 9][usize::try_from(cases.below(7)).unwrap_or(0)]
        } else {
            cases.below(KINDS)
        };
        self.of_kind(kind, cases, me)
    }

    /// A message of kind `kind` (below [`KINDS`]), its document and data
    /// drawn from `cases`.
    pub(crate) fn of_kind(&self, kind: u64, cases: &mut Seeded, me: &PeerId) -> Message {
        let server = PeerId::new("server").expect("peer id");
        let sender_id = me.clone();
        match kind {
            0 => join(me, "1"),
            1 => join(me, if cases.chance(50) { "2" } else { "" }),
            2 => Message::Request {
                sender_id,
                target_id: server,
                document_id: self.document(cases),
                data: self.data(cases),
            },
            3 => Message::Sync {
                sender_id,
                target_id: server,
                document_id: self.document(cases),
                data: self.data(cases),
            },
            4 => Message::DocUnavailable {
                sender_id,
                target_id: server,
                document_id: self.document(cases),
            },
            5 => Message::Ephemeral {
                sender_id,
                target_id: server,
                count: cases.next_u64(),
                session_id: "s".into(),
                document_id: self.document(cases),
                data: self.data(cases),
            },
            6 => Message::Leave { sender_id },
            7 => Message::Error {
                message: "from the client".into(),
                sender_id: Some(sender_id),
                target_id: None,
            },
            8 => Message::RemoteSubscriptionChange {
                sender_id,
                target_id: server,
                add: vec![StorageId::new("someone-elses-storage").expect("storage id")],
                remove: Vec::new(),
            },
            9 => Message::RemoteHeadsChanged {
                sender_id,
                target_id: server,
                document_id: self.document(cases),
                new_heads: BTreeMap::from([(
                    StorageId::new("someone-elses-storage").expect("storage id"),
                    RemoteHeads {
                        heads: vec!["AAAA".into()],
                        timestamp: cases.next_u64(),
                    },
                )]),
            },
            10 => Message::CountedRequest {
                sender_id,
                target_id: server,
            },
            11 => Message::Peer {
                sender_id,
                target_id: server,
                selected_protocol_version: "1".into(),
                peer_metadata: None,
            },
            12 => Message::Counted {
                sender_id,
                target_id: server,
                counted: BTreeMap::from([(self.document(cases), vec!["00".repeat(32)])]),
            },
            _ => Message::Sync {
                // Another peer's name as the sender.
                sender_id: PeerId::new("someone-else").expect("peer id"),
                target_id: server,
                document_id: self.roster,
                data: self.data(cases),
            },
        }
    }

    /// One frame: a message as encoded, mutated or deflated, or not a
    /// message at all; `polite`, a message a stock peer could send.
    fn frame(&self, cases: &mut Seeded, me: &PeerId, polite: bool) -> WsMessage {
        let message = self.message(cases, me, polite);
        if polite {
            return WsMessage::Binary(wire::encode(&message).into());
        }
        match cases.below(12) {
            0 | 1 => {
                let mut bytes = wire::encode(&message);
                mutate(&mut bytes, &cases.mutations());
                WsMessage::Binary(bytes.into())
            }
            2 => WsMessage::Binary(
                wire::encode_deflated(&message, wire::Inflate::FROM_SERVER).into(),
            ),
            3 => {
                let len = cases.below(200);
                let bytes: Vec<u8> = (0..len)
                    .map(|_| cases.next_u64().to_le_bytes()[0])
                    .collect();
                WsMessage::Binary(bytes.into())
            }
            4 => WsMessage::Text("hello".into()),
            5 => WsMessage::Ping(vec![1, 2, 3].into()),
            _ => WsMessage::Binary(wire::encode(&message).into()),
        }
    }
}

pub(crate) fn join(me: &PeerId, version: &str) -> Message {
    Message::Join {
        sender_id: me.clone(),
        supported_protocol_versions: vec![version.to_owned()],
        peer_metadata: Some(PeerMetadata {
            storage_id: None,
            is_ephemeral: true,
            extensions: Vec::new(),
        }),
    }
}

/// How one connection ended.
#[derive(Debug, Default)]
struct Ended {
    close_code: Option<u16>,
    errors: Vec<String>,
    /// Messages after an `error` other than the close.
    after_error: usize,
    /// Sync messages the server sent for the roster.
    synced: usize,
}

/// One case: connects, sends the frames, closes, and reads everything the
/// server sends until the connection ends.
async fn run_case(
    ws_url: &str,
    token: &str,
    vocabulary: &Vocabulary,
    seed: u64,
) -> anyhow::Result<Ended> {
    let mut cases = Seeded::new(seed);
    let me = PeerId::new(format!("fuzz-{seed}"))?;
    let mut frames = Vec::new();
    if cases.chance(75) {
        frames.push(WsMessage::Binary(wire::encode(&join(&me, "1")).into()));
    }
    // Half the cases keep to polite frames until the last, to reach the
    // states deeper in a connection's life.
    let polite = cases.chance(50);
    let length = cases.below(10) + 1;
    for n in 0..length {
        frames.push(vocabulary.frame(&mut cases, &me, polite && n + 1 < length));
    }
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    let (mut sink, mut stream) = socket.split();
    // Sending and reading at once: the server may close at any frame.
    let send = async move {
        for frame in frames {
            if sink.send(frame).await.is_err() {
                return;
            }
        }
        let _ = sink.send(WsMessage::Close(None)).await;
    };
    let read = async move {
        let mut ended = Ended::default();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .map_err(|_| anyhow::anyhow!("seed {seed}: the connection did not end"))?;
            match frame {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    let message = wire::decode(&bytes, &Limits::default()).map_err(|e| {
                        anyhow::anyhow!(
                            "seed {seed}: the server sent a frame that does not decode: {e}"
                        )
                    })?;
                    if !ended.errors.is_empty() {
                        ended.after_error += 1;
                    }
                    match &message {
                        Message::Error { message, .. } => ended.errors.push(message.clone()),
                        Message::DocUnavailable { .. } => {}
                        Message::Sync { document_id, .. } if *document_id == vocabulary.roster => {
                            ended.synced += 1;
                        }
                        Message::Sync { document_id, .. }
                        | Message::Request { document_id, .. }
                        | Message::Ephemeral { document_id, .. }
                        | Message::RemoteHeadsChanged { document_id, .. } => {
                            anyhow::ensure!(
                                *document_id == vocabulary.roster,
                                "seed {seed}: the server sent {} for {document_id}",
                                message.type_name()
                            );
                        }
                        Message::Counted { counted, .. } => {
                            anyhow::ensure!(
                                counted.keys().all(|d| *d != vocabulary.cousin),
                                "seed {seed}: counted names the cousin branch's roster"
                            );
                        }
                        _ => {}
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    ended.close_code = frame.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => {}
                // The server may drop the TCP connection after its close.
                Some(Err(_)) | None => return Ok(ended),
            }
        }
    };
    let ((), ended) = tokio::join!(send, read);
    ended
}

/// Sync messages a real peer of this roster sends, first messages and
/// messages with changes made on `mine` (which has the device's actor).
pub(crate) fn real_messages(
    server_view: &Automerge,
    mine: &mut Automerge,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut data = vec![
        server_view
            .generate_sync_message(&mut sync::State::new())
            .map(sync::Message::encode)
            .unwrap_or_default(),
        Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .map(sync::Message::encode)
            .unwrap_or_default(),
    ];
    for n in 0..3 {
        let mut tx = mine.transaction();
        let id = doorstep_protocol::schema::RecordId::new_v7();
        let member = doorstep_protocol::schema::roster::Member {
            name: format!("帧测试{n}"),
            ..Default::default()
        };
        doorstep_protocol::schema::write_record(&mut tx, id, &member)?;
        tx.commit();
        // Run the exchange locally until the device's side sends changes.
        let (mut ours, mut theirs) = (sync::State::new(), sync::State::new());
        let mut remote = server_view.clone();
        let mut local = mine.clone();
        for _ in 0..4 {
            let Some(message) = local.generate_sync_message(&mut ours) else {
                break;
            };
            if !message.changes.is_empty() {
                data.push(message.encode());
                break;
            }
            remote.receive_sync_message(&mut theirs, message)?;
            if let Some(reply) = remote.generate_sync_message(&mut theirs) {
                local.receive_sync_message(&mut ours, reply)?;
            }
        }
    }
    anyhow::ensure!(data.len() == 5, "no message carried changes");
    Ok(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_frame_sequences_end_cleanly_and_leave_the_server_whole() -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let store = Store::open(&data_dir.path().join("doorstep.db")).await?;
    let d = make_district(&store).await?;
    let log = data_dir.path().join("server.log");
    let server = ServerProcess::start_logging(
        Path::new(env!("CARGO_BIN_EXE_doorstep")),
        data_dir.path(),
        "warn",
        Some(&log),
    )
    .await?;
    let (http, ws) = (server.http_url(), server.ws_url());
    let mut bystander = connected_device(
        &http,
        &ws,
        enroll(&store, &http, d.yingfeng.id, "bystander").await?,
        None,
    )
    .await?;
    let mut kept = vec![add_member(&mut bystander, "在册成员")];
    assert_eq!(
        bystander.peer.sync(bystander.roster).await?,
        SyncOutcome::Synced
    );
    let mut fuzzer = connected_device(
        &http,
        &ws,
        enroll(&store, &http, d.yingfeng.id, "fuzzer").await?,
        None,
    )
    .await?;
    let roster = fuzzer.roster;
    let server_view = fuzzer
        .peer
        .document(roster)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no roster"))?;
    let mine = fuzzer
        .peer
        .document_mut(roster)
        .ok_or_else(|| anyhow::anyhow!("no roster"))?;
    let vocabulary = Vocabulary {
        roster,
        cousin: DocumentId::roster(d.fenghuangting.id),
        missing: DocumentId::roster(TenantId::new_v7()),
        data: real_messages(&server_view, mine)?,
    };
    // Two devices of the branch send the cases, five connections each at a
    // time: one more than a device may hold, so the server's replacing of a
    // device's oldest connection is in the mix, and the second device sends
    // changes by the first one's actor.
    let tokens = [
        fuzzer.enrolled.token.clone(),
        enroll(&store, &http, d.yingfeng.id, "second fuzzer")
            .await?
            .token,
    ];

    let count: u64 = std::env::var("DOORSTEP_FRAME_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let seed: u64 = std::env::var("DOORSTEP_FRAME_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x00f2_a3e5);
    eprintln!("frame fuzz: {count} connections, seed {seed}");
    let mut closes: BTreeMap<Option<u16>, u64> = BTreeMap::new();
    let (mut errors, mut synced) = (BTreeMap::<String, u64>::new(), 0u64);
    for batch in (0..count).collect::<Vec<_>>().chunks(10) {
        let runs = batch.iter().map(|n| {
            let token = &tokens[usize::from(n % 2 == 1)];
            run_case(&ws, token, &vocabulary, seed.wrapping_add(*n))
        });
        for (n, ended) in batch.iter().zip(futures_util::future::join_all(runs).await) {
            let ended = ended?;
            *closes.entry(ended.close_code).or_default() += 1;
            for error in &ended.errors {
                // The kind of error, without the particulars.
                let kind: String = error
                    .split([':', '(', '"'])
                    .next()
                    .unwrap_or_default()
                    .into();
                *errors.entry(kind).or_default() += 1;
            }
            synced += ended.synced as u64;
            let case = seed.wrapping_add(*n);
            assert!(
                ended.errors.len() <= 1 && ended.after_error == 0,
                "case {case}: the connection went on after an error: {ended:?}"
            );
            assert!(
                !ended
                    .errors
                    .iter()
                    .any(|e| e.contains("server failed") || e.contains("could not store")),
                "case {case}: a server failure: {ended:?}"
            );
            assert!(
                !matches!(ended.close_code, Some(1011)),
                "case {case}: closed as a server error: {ended:?}"
            );
        }
        // The branch's other device still syncs, and what it synced stays.
        kept.push(add_member(&mut bystander, &format!("第{}批", batch[0])));
        assert_eq!(
            bystander.peer.sync(bystander.roster).await?,
            SyncOutcome::Synced,
            "after the batch from {}",
            batch[0]
        );
    }
    eprintln!(
        "frame fuzz: closes by code {closes:?}, errors {errors:?}, {synced} sync messages answered"
    );

    // Nothing stored was lost or made invalid: a new connection reads it all.
    let mut reader = TestPeer::connect(&ws, &bystander.enrolled.token, None).await?;
    assert_eq!(reader.sync(roster).await?, SyncOutcome::Synced);
    let stored = Roster::load(reader.document(roster).expect("synced"));
    for member in &kept {
        assert!(stored.members.contains_key(member), "lost {member}");
    }
    assert!(stored.invalid.is_empty(), "{:?}", stored.invalid);
    let entered = stored
        .members
        .values()
        .filter(|m| m.name.starts_with("帧测试"))
        .count();
    eprintln!("frame fuzz: {entered} of the 3 members sent in sync messages were stored");
    let health = reqwest::get(format!("{http}/healthz")).await?;
    assert!(health.status().is_success());
    let log = std::fs::read_to_string(&log)?;
    assert!(
        !log.contains("panicked"),
        "the server logged a panic:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        closes.len() > 2 && !errors.is_empty() && synced > 0,
        "the sequences provoked too little: {closes:?}"
    );
    Ok(())
}

#[test]
fn every_message_type_is_made_by_some_kind() -> anyhow::Result<()> {
    let vocabulary = Vocabulary {
        roster: DocumentId::roster(TenantId::new_v7()),
        cousin: DocumentId::roster(TenantId::new_v7()),
        missing: DocumentId::roster(TenantId::new_v7()),
        data: Vec::new(),
    };
    let me = PeerId::new("me")?;
    let made: std::collections::BTreeSet<u64> = (0..KINDS)
        .map(|k| kind_of(&vocabulary.of_kind(k, &mut Seeded::new(k), &me)))
        .collect();
    // `kind_of` numbers the message types 0 and 2 to 12 (1 and 13 are a
    // join and a sync again, with a wrong version and a wrong sender).
    let types: std::collections::BTreeSet<u64> = (0..=12).filter(|k| *k != 1).collect();
    assert_eq!(made, types);
    Ok(())
}
