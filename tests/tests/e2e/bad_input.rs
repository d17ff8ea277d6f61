//! Bad input closes only the offending connection, with an `error` first,
//! and damages nothing stored.

use std::time::Duration;

use doorstep_protocol::schema::roster::Roster;
use doorstep_protocol::wire::{self, Limits, Message};
use doorstep_protocol::{DocumentId, PeerId};
use doorstep_tests::{SyncOutcome, TestPeer, TestServer};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{add_member, connected_device};

/// Sends `frames` on a fresh connection (after a join, if `join`), and
/// returns the `error` message text and the close code.
async fn answer_to(
    server: &TestServer,
    token: &str,
    join: bool,
    frames: Vec<WsMessage>,
) -> anyhow::Result<(String, u16)> {
    let mut request = server.ws_url().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    if join {
        let join = Message::Join {
            sender_id: PeerId::new("raw")?,
            supported_protocol_versions: vec!["1".into()],
            peer_metadata: None,
        };
        socket
            .send(WsMessage::Binary(wire::encode(&join).into()))
            .await?;
    }
    for frame in frames {
        socket.send(frame).await?;
    }
    let mut error = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await? {
            Some(Ok(WsMessage::Binary(bytes))) => {
                if let Ok(Message::Error { message, .. }) = wire::decode(&bytes, &Limits::default())
                {
                    error = Some(message);
                }
            }
            Some(Ok(WsMessage::Close(Some(frame)))) => {
                return Ok((error.unwrap_or_default(), u16::from(frame.code)));
            }
            Some(Ok(_)) => {}
            other => anyhow::bail!("connection ended without a close frame: {other:?}"),
        }
    }
}

fn binary(bytes: Vec<u8>) -> WsMessage {
    WsMessage::Binary(bytes.into())
}

#[tokio::test]
async fn each_kind_of_bad_input_gets_an_error_and_a_close_while_others_keep_working()
-> anyhow::Result<()> {
    let server = TestServer::spawn_with(|c| c.limits.max_message_bytes = 64 * 1024).await?;
    let d = server.district().await?;
    let mut bystander = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "bystander").await?,
        None,
    )
    .await?;
    let member = add_member(&mut bystander, "在册成员");
    assert_eq!(
        bystander.peer.sync(bystander.roster).await?,
        SyncOutcome::Synced
    );
    let token = server.enroll(d.yingfeng.id, "attacker").await?.token;
    let roster = bystander.roster;

    let sync_with = |data: Vec<u8>| {
        wire::encode(&Message::Sync {
            sender_id: PeerId::new("raw").expect("peer id"),
            target_id: PeerId::new("server").expect("peer id"),
            document_id: roster,
            data,
        })
    };
    let unknown_type = {
        let mut e = minicbor_map(&[("type", "teleport"), ("senderId", "raw")]);
        std::mem::take(&mut e)
    };
    let cases: Vec<(&str, bool, Vec<WsMessage>, &str, u16)> = vec![
        (
            "malformed CBOR",
            true,
            vec![binary(vec![0xff, 0x00, 0x13])],
            "malformed",
            1002,
        ),
        (
            "unknown message type",
            true,
            vec![binary(unknown_type)],
            "unknown message type",
            1002,
        ),
        (
            "garbage sync data",
            true,
            vec![binary(sync_with(vec![0x42, 0xff, 0xff, 0xff, 0x01]))],
            "sync message is malformed",
            1002,
        ),
        (
            "a text frame",
            true,
            vec![WsMessage::Text("hello".into())],
            "text frames",
            1002,
        ),
        (
            "an oversized frame",
            true,
            vec![binary(sync_with(vec![0x42; 100 * 1024]))],
            "too large",
            1009,
        ),
        (
            "sync before join",
            false,
            vec![binary(sync_with(vec![0x42]))],
            "first message must be join",
            1002,
        ),
        (
            "a wrong protocol version",
            false,
            vec![binary(wire::encode(&Message::Join {
                sender_id: PeerId::new("raw")?,
                supported_protocol_versions: vec!["2".into()],
                peer_metadata: None,
            }))],
            "unsupported protocol",
            1002,
        ),
    ];
    for (what, join, frames, expected, code) in cases {
        let (message, close) = answer_to(&server, &token, join, frames).await?;
        assert!(
            message.contains(expected),
            "{what}: error {message:?} should mention {expected:?}"
        );
        assert_eq!(close, code, "{what}");
        // The bystander's connection is untouched and still syncs.
        let extra = add_member(&mut bystander, what);
        assert_eq!(
            bystander.peer.sync(roster).await?,
            SyncOutcome::Synced,
            "{what}"
        );
        assert!(
            Roster::load(&server.stored_document(roster).await?)
                .members
                .contains_key(&extra)
        );
    }
    let stored = Roster::load(&server.stored_document(roster).await?);
    assert!(stored.members.contains_key(&member));
    assert!(stored.invalid.is_empty());
    Ok(())
}

/// A CBOR map of string pairs, built by hand so the test does not depend
/// on our encoder for the input it feeds it.
fn minicbor_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, s: &str) {
        assert!(s.len() < 24);
        out.push(0x60 | s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = vec![0xa0 | pairs.len() as u8];
    for (k, v) in pairs {
        text(&mut out, k);
        text(&mut out, v);
    }
    out
}

#[tokio::test]
async fn an_unknown_token_gets_an_error_and_a_close() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let err = TestPeer::connect(&server.ws_url(), "not-a-token", None)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("4401"), "{err}");
    // No token at all, as a browser client without `?token=` would connect.
    let (socket, _) = tokio_tungstenite::connect_async(server.ws_url()).await?;
    let err = TestPeer::handshake(socket, None)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("4401"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_token_in_the_query_string_works_for_browser_clients() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let enrolled = server.enroll(d.yingfeng.id, "browser").await?;
    let (socket, _) =
        tokio_tungstenite::connect_async(format!("{}?token={}", server.ws_url(), enrolled.token))
            .await?;
    let mut peer = TestPeer::handshake(socket, None).await?;
    assert_eq!(
        peer.sync(DocumentId::roster(d.yingfeng.id)).await?,
        SyncOutcome::Synced
    );
    Ok(())
}

#[tokio::test]
async fn a_sync_message_over_the_change_size_limit_is_refused_and_not_stored() -> anyhow::Result<()>
{
    let server =
        TestServer::spawn_with(|c| c.limits.document.admission.max_inflated_bytes = 4 * 1024)
            .await?;
    let d = server.district().await?;
    let mut device = connected_device(
        &server.http_url(),
        &server.ws_url(),
        server.enroll(d.yingfeng.id, "a").await?,
        None,
    )
    .await?;
    let small = add_member(&mut device, "fits");
    assert_eq!(device.peer.sync(device.roster).await?, SyncOutcome::Synced);

    // Many members in one go: far more than 4 KiB of changes.
    for i in 0..200 {
        add_member(
            &mut device,
            &format!("member number {i} with a long enough name"),
        );
    }
    match device.peer.sync(device.roster).await? {
        SyncOutcome::Refused {
            message,
            close_code,
        } => {
            assert!(message.contains("over the limit"), "{message}");
            assert_eq!(close_code, Some(1009));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let stored = Roster::load(&server.stored_document(device.roster).await?);
    assert_eq!(
        stored.members.keys().copied().collect::<Vec<_>>(),
        vec![small]
    );
    Ok(())
}
