//! The `/sync` WebSocket: automerge-repo's protocol, with Doorstep's rules.
//!
//! The device is authenticated at the upgrade (`Authorization: Bearer` or,
//! for browser clients that cannot set headers, `?token=`). A refused token
//! still completes the upgrade and is answered with an `error` message and a
//! close: stock Node clients crash on a failed upgrade, and browsers cannot
//! read its status anyway. Every message that names a document is checked
//! against the database; a document the device may not open gets exactly
//! the `doc-unavailable` a missing one gets.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use doorstep_protocol::wire::{
    self, DecodeError, EXTENSION_COUNTED, EXTENSION_DEFLATE, Message, PROTOCOL_VERSION,
    PeerMetadata,
};
use doorstep_protocol::{DocumentId, PeerId, StorageId, provenance};
use serde::Deserialize;
use tracing::Instrument;

use crate::AppState;
use crate::auth::hash_secret;
use crate::config::Config;
use crate::http::extract::Query;
use crate::hub::{Access, Connection, Ephemeral, Hub, Outbound, SyncRefusal};
use crate::metrics::{self, Direction};
use crate::store::{AuditEntry, Device};
use doorstep_protocol::admission::AdmissionError;
use doorstep_protocol::keeper::Refusal;

/// Close codes (4000-4999 are for applications).
pub mod close_code {
    /// The token is unknown (never issued here, or the server lost it).
    pub const UNAUTHORIZED: u16 = 4401;
    /// The device was revoked, before or while connected.
    pub const REVOKED: u16 = 4403;
    /// The client broke the protocol or a limit.
    pub const PROTOCOL: u16 = 1002;
    pub const TOO_LARGE: u16 = 1009;
    pub const GOING_AWAY: u16 = 1001;
    /// The server could not store what was sent; retry later.
    pub const TRY_AGAIN: u16 = 1013;
    /// A change was refused because the document keeps its edits in
    /// another form (`doorstep_protocol::provenance`): the client re-bases.
    pub const KEPT_IN_ANOTHER_FORM: u16 = 4409;
}

/// Query of `GET /sync`. Browser clients cannot set headers, so their
/// token comes here; it is redacted from `Debug` and the request span logs
/// only the path.
#[derive(Deserialize)]
pub struct SyncQuery {
    token: Option<String>,
}

impl std::fmt::Debug for SyncQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncQuery")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `GET /sync`: authenticates, then hands the socket to [`connection`].
pub async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<SyncQuery>,
    place: Option<axum::Extension<crate::listener::ConnectionPlace>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = crate::http::extract::bearer(&headers)
        .map(str::to_owned)
        .or(query.token);
    let device = match &token {
        Some(token) => state.store.device_for_token(&hash_secret(token)).await,
        None => Ok(None),
    };
    let mut revoked = false;
    if let (Ok(None), Some(token)) = (&device, &token) {
        revoked = state
            .store
            .token_was_revoked(&hash_secret(token))
            .await
            .unwrap_or(false);
        if !revoked {
            record_login_token(&state, token).await;
        }
    }
    if let (Ok(Some(_)), Some(place)) = (&device, place) {
        // A device's sockets are bounded by its own socket budget; its
        // address's share is for connections nobody has vouched for.
        place.authenticated();
    }
    // The client's time to `join` runs from its request, not from whenever
    // the upgraded socket's task first runs.
    let arrived = state.config.clock.monotonic();
    let limit = state.config.limits.max_message_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            let _tracked = state.hub.socket_token();
            match device {
                Ok(Some(device)) => {
                    let span = tracing::info_span!("connection", device = %device.id, branch = %device.branch_id);
                    connection(state.hub.clone(), socket, device, arrived).instrument(span).await
                }
                Ok(None) if revoked => refuse(&state, socket, close_code::REVOKED, "this device was revoked").await,
                Ok(None) => refuse(&state, socket, close_code::UNAUTHORIZED, "unauthorized: unknown device token").await,
                Err(e) => {
                    tracing::error!(error = %e, "token lookup failed");
                    refuse(&state, socket, close_code::TRY_AGAIN, "server error, try again later").await
                }
            }
        })
}

/// An official who tries `/sync` with their login token gets what any bad
/// token gets; the attempt is recorded.
async fn record_login_token(state: &AppState, token: &str) {
    let store = &state.store;
    let recorded = match store.user_of_login_token(&hash_secret(token)).await {
        Ok(Some(user)) => {
            let verdict = state.config.budgets.refusals.verdict_for_known(
                "sync.connect",
                &user.id.to_string(),
                state.config.clock.now_ms(),
            );
            match verdict.detail("a login token is not a device token") {
                Some(detail) => {
                    let entry = AuditEntry::by_user(&user, "sync.connect", "/sync")
                        .detail(detail)
                        .refused();
                    store.record_audit(entry).await
                }
                None => Ok(()),
            }
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "could not record a refused /sync");
    }
}

/// What a close code counts as at `/metrics`; a close that is no refusal
/// (the server shutting down, a device's newer connection) counts as none.
fn refusal_of(code: u16) -> Option<metrics::Refusal> {
    Some(match code {
        close_code::UNAUTHORIZED => metrics::Refusal::UnknownToken,
        close_code::REVOKED => metrics::Refusal::Revoked,
        close_code::PROTOCOL => metrics::Refusal::Protocol,
        close_code::TOO_LARGE => metrics::Refusal::TooLarge,
        close_code::TRY_AGAIN => metrics::Refusal::TryAgain,
        close_code::KEPT_IN_ANOTHER_FORM => metrics::Refusal::KeptInAnotherForm,
        _ => return None,
    })
}

async fn refuse(state: &AppState, mut socket: WebSocket, code: u16, reason: &str) {
    if let Some(refusal) = refusal_of(code) {
        state.config.metrics.refused(refusal);
    }
    let error = Message::Error {
        message: reason.to_owned(),
        sender_id: None,
        target_id: None,
    };
    let _ = socket
        .send(WsMessage::Binary(wire::encode(&error).into()))
        .await;
    let _ = socket
        .send(WsMessage::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// Why a connection ends: sent to the client as an `error` and a close frame.
struct Fatal {
    code: u16,
    reason: String,
}

impl Fatal {
    fn protocol(reason: impl Into<String>) -> Self {
        Fatal {
            code: close_code::PROTOCOL,
            reason: reason.into(),
        }
    }
}

impl From<DecodeError> for Fatal {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::TooLarge { .. } => Fatal {
                code: close_code::TOO_LARGE,
                reason: e.to_string(),
            },
            _ => Fatal::protocol(e.to_string()),
        }
    }
}

impl From<SyncRefusal> for Fatal {
    fn from(e: SyncRefusal) -> Self {
        let code = match &e {
            SyncRefusal::Refused(
                Refusal::Inadmissible(AdmissionError::OverLimit { .. })
                | Refusal::DocumentFull { .. }
                | Refusal::TooManyOrphans { .. }
                | Refusal::TooManyActors { .. }
                | Refusal::DocumentActors { .. }
                | Refusal::DeviceActors { .. }
                | Refusal::DocumentChanges { .. }
                | Refusal::TooDeep { .. },
            ) => close_code::TOO_LARGE,
            SyncRefusal::Refused(Refusal::Busy) => close_code::TRY_AGAIN,
            SyncRefusal::Refused(_) => close_code::PROTOCOL,
            SyncRefusal::Storage(_) | SyncRefusal::Internal => close_code::TRY_AGAIN,
        };
        Fatal {
            code,
            reason: e.to_string(),
        }
    }
}

/// The Doorstep extensions a connection negotiated: those the client
/// offered in `join` that this server speaks (`wire::EXTENSION_COUNTED`,
/// `wire::EXTENSION_DEFLATE`). A stock client offers none and gets plain
/// automerge-repo.
#[derive(Debug, Clone, Copy, Default)]
struct Extensions {
    counted: bool,
    deflate: bool,
}

impl Extensions {
    fn accepted(offered: &[String]) -> Extensions {
        Extensions {
            counted: offered.iter().any(|e| e == EXTENSION_COUNTED),
            deflate: offered.iter().any(|e| e == EXTENSION_DEFLATE),
        }
    }

    fn names(self) -> Vec<String> {
        let mut names = Vec::new();
        if self.counted {
            names.push(EXTENSION_COUNTED.to_owned());
        }
        if self.deflate {
            names.push(EXTENSION_DEFLATE.to_owned());
        }
        names
    }

    /// A frame for this client: compressed when it accepted that.
    fn frame(self, message: &Message) -> WsMessage {
        let bytes = if self.deflate {
            wire::encode_deflated(message, wire::Inflate::FROM_SERVER)
        } else {
            wire::encode(message)
        };
        WsMessage::Binary(bytes.into())
    }
}

/// What a `join` said.
struct Joined {
    client: PeerId,
    storage_id: Option<String>,
    extensions: Extensions,
    /// When it arrived, on the configured clock: the client's idle time
    /// runs from here, not from when the server is done with its own work
    /// (the liveness check, the last-seen write).
    heard_at: Duration,
}

/// Waits for the client's `join`, due an idle timeout after `arrived`, and
/// answers it with our `peer`.
async fn handshake(
    hub: &Hub,
    socket: &mut WebSocket,
    arrived: Duration,
) -> Result<Joined, Option<Fatal>> {
    let config = hub.config();
    let limits = config.limits.wire_limits();
    let frame = tokio::select! {
        frame = socket.recv() => frame,
        _ = config.clock.sleep_until(arrived.saturating_add(config.idle_timeout)) => {
            return Err(Some(Fatal::protocol("no join message")));
        }
    };
    let heard_at = config.clock.monotonic();
    let bytes = match frame {
        Some(Ok(WsMessage::Binary(bytes))) => bytes,
        Some(Ok(WsMessage::Close(_))) | None => return Err(None),
        Some(Ok(_)) => return Err(Some(Fatal::protocol("expected a binary join message"))),
        Some(Err(e)) => return Err(Some(transport_fatal(&e))),
    };
    let Message::Join {
        sender_id,
        supported_protocol_versions,
        peer_metadata,
    } = wire::decode(&bytes, &limits).map_err(|e| Some(Fatal::from(e)))?
    else {
        return Err(Some(Fatal::protocol("the first message must be join")));
    };
    if !supported_protocol_versions
        .iter()
        .any(|v| v == PROTOCOL_VERSION)
    {
        return Err(Some(Fatal::protocol(format!(
            "unsupported protocol versions {supported_protocol_versions:?}; this server speaks \"1\""
        ))));
    }
    let extensions = Extensions::accepted(
        peer_metadata
            .as_ref()
            .map(|m| m.extensions.as_slice())
            .unwrap_or_default(),
    );
    let storage_id = peer_metadata
        .filter(|m| !m.is_ephemeral)
        .and_then(|m| m.storage_id)
        .map(|s| s.as_str().to_owned());
    let peer = Message::Peer {
        sender_id: hub.peer_id.clone(),
        target_id: sender_id.clone(),
        selected_protocol_version: PROTOCOL_VERSION.to_owned(),
        peer_metadata: Some(PeerMetadata {
            storage_id: StorageId::new(hub.store().epoch()).ok(),
            is_ephemeral: false,
            extensions: extensions.names(),
        }),
    };
    socket
        .send(WsMessage::Binary(wire::encode(&peer).into()))
        .await
        .map_err(|_| None)?;
    Ok(Joined {
        client: sender_id,
        storage_id,
        extensions,
        heard_at,
    })
}

fn transport_fatal(e: &axum::Error) -> Fatal {
    let text = e.to_string();
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Capacity")
    {
        Fatal {
            code: close_code::TOO_LARGE,
            reason: format!("message too large: {text}"),
        }
    } else {
        Fatal::protocol(format!("transport error: {text}"))
    }
}

/// Runs one device connection until it closes.
async fn connection(hub: Arc<Hub>, mut socket: WebSocket, device: Device, arrived: Duration) {
    // Registered for revocation before the handshake, so a socket that has
    // not joined yet closes at once too.
    let waiting = hub.connect(device.clone(), None);
    let joined = tokio::select! {
        joined = handshake(&hub, &mut socket, arrived) => joined,
        _ = waiting.revoked.notified() => Err(Some(stopped(&waiting))),
    };
    let Joined {
        client,
        storage_id,
        extensions,
        heard_at,
    } = match joined {
        Ok(joined) => joined,
        Err(fatal) => {
            hub.disconnect(&waiting).await;
            if let Some(fatal) = fatal {
                close_with(&mut socket, &hub, None, fatal).await;
            }
            return;
        }
    };
    // `waiting` leaves before `conn` counts against the device's sockets,
    // so one socket is never counted twice. A revocation that notified
    // neither committed before the check below, so it sees it; any later
    // one notifies `conn`.
    hub.disconnect(&waiting).await;
    // A restore while it joined: it announced the old epoch.
    if waiting.revoked.is_restored() {
        return close_with(&mut socket, &hub, Some(&client), stopped(&waiting)).await;
    }
    let conn = hub.connect(device, storage_id);
    match hub.store().device_is_live(conn.device.id).await {
        Ok(true) => {}
        Ok(false) => {
            hub.disconnect(&conn).await;
            return close_with(&mut socket, &hub, Some(&client), revoked()).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "liveness check failed");
            hub.disconnect(&conn).await;
            let fatal = Fatal {
                code: close_code::TRY_AGAIN,
                reason: "server error, try again later".into(),
            };
            return close_with(&mut socket, &hub, Some(&client), fatal).await;
        }
    }
    let _counted = hub.config().metrics.sync_connection();
    tracing::info!(peer = %client, "device connected");
    if let Err(e) = hub_store_touch(&hub, &conn.device).await {
        tracing::warn!(error = %e, "could not record last seen");
    }
    let fatal = serve(&hub, &mut socket, &conn, &client, extensions, heard_at).await;
    hub.disconnect(&conn).await;
    if let Some(fatal) = fatal {
        close_with(&mut socket, &hub, Some(&client), fatal).await;
    }
    tracing::info!(peer = %client, "device disconnected");
}

async fn hub_store_touch(hub: &Hub, device: &Device) -> Result<(), crate::store::StoreError> {
    hub.store().touch_device(device.id).await
}

async fn close_with(socket: &mut WebSocket, hub: &Hub, client: Option<&PeerId>, fatal: Fatal) {
    tracing::info!(code = fatal.code, reason = %fatal.reason, "closing connection");
    if let Some(refusal) = refusal_of(fatal.code) {
        hub.config().metrics.refused(refusal);
    }
    let error = Message::Error {
        message: fatal.reason.clone(),
        sender_id: Some(hub.peer_id.clone()),
        target_id: client.cloned(),
    };
    // A client that stopped reading must not hold this task: the goodbye
    // gets a few seconds, then the socket is dropped.
    let goodbye = async {
        socket
            .send(WsMessage::Binary(wire::encode(&error).into()))
            .await?;
        // Close reasons are limited to 123 bytes by the protocol.
        let mut reason = fatal.reason;
        while reason.len() > 120 {
            reason.pop();
        }
        socket
            .send(WsMessage::Close(Some(CloseFrame {
                code: fatal.code,
                reason: reason.into(),
            })))
            .await
    };
    let code = fatal.code;
    let said = tokio::time::timeout(Duration::from_secs(5), goodbye)
        .await
        .is_ok_and(|sent| sent.is_ok());
    if said && code == close_code::KEPT_IN_ANOTHER_FORM {
        // The phone must read this reason to re-base, and it is often
        // still sending (its first flight carries every document): dropping
        // the socket with its bytes unread resets the connection, and a
        // reset throws away what we sent before the client read it. So what
        // comes is read and dropped until its close: at most 10 s, and no
        // longer than 2 s of silence (a part of an upload on a slow link
        // takes that). Only for this refusal: every connection place a
        // drain holds is one nobody else has.
        let drain = async {
            while let Ok(Some(Ok(frame))) =
                tokio::time::timeout(Duration::from_secs(2), socket.recv()).await
            {
                if matches!(frame, WsMessage::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    }
}

/// The message loop, for a client last heard at `last_heard` (on the
/// configured clock). Returns why it ended, if the client should be told.
async fn serve(
    hub: &Hub,
    socket: &mut WebSocket,
    conn: &Arc<Connection>,
    client: &PeerId,
    extensions: Extensions,
    mut last_heard: Duration,
) -> Option<Fatal> {
    let config = hub.config();
    // A deflated frame is inflated only for a client that negotiated it,
    // and only so far past its size (`Inflate::FROM_DEVICE`).
    let limits = wire::Limits {
        inflate: extensions.deflate.then_some(wire::Inflate::FROM_DEVICE),
        ..config.limits.wire_limits()
    };
    let mut shutdown = hub.shutdown_signal();
    // A socket that joined after shutdown began sees no change to wait for.
    if *shutdown.borrow_and_update() {
        return Some(Fatal {
            code: close_code::GOING_AWAY,
            reason: "server shutting down".into(),
        });
    }
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.reset();
    // On the configured clock, so a test moves it instead of sleeping.
    let clock = &config.clock;
    let mut roster_opened = false;
    loop {
        let idle_until = last_heard.saturating_add(config.idle_timeout);
        tokio::select! {
            _ = conn.overflow.notified() => {
                return Some(Fatal { code: close_code::TRY_AGAIN, reason: "too far behind; reconnect to resume".into() });
            }
            _ = conn.revoked.notified() => return Some(stopped(conn)),
            _ = shutdown.changed() => {
                return Some(Fatal { code: close_code::GOING_AWAY, reason: "server shutting down".into() });
            }
            _ = clock.sleep_until(idle_until) => {
                config.metrics.refused(metrics::Refusal::Unresponsive);
                return Some(Fatal { code: close_code::GOING_AWAY, reason: "no traffic from the client".into() });
            }
            _ = ping.tick() => {
                if let Err(fatal) = send_frame(socket, conn, WsMessage::Ping(Default::default()), config).await {
                    return fatal;
                }
            }
            (out, in_flight) = conn.outbox.pop() => {
                let message = match out {
                    Outbound::Sync { document_id, data } => Message::Sync {
                        sender_id: hub.peer_id.clone(),
                        target_id: client.clone(),
                        document_id,
                        data,
                    },
                    Outbound::Ephemeral(e) => Message::Ephemeral {
                        sender_id: e.sender_id.clone(),
                        target_id: client.clone(),
                        count: e.count,
                        session_id: e.session_id.clone(),
                        document_id: e.document_id,
                        data: e.data.clone(),
                    },
                };
                let frame = extensions.frame(&message);
                drop(message);
                // Revoked while it waited in the queue: it must not go.
                if conn.revoked.is_revoked() {
                    return Some(stopped(conn));
                }
                if let Err(fatal) = send_frame(socket, conn, frame, config).await {
                    return fatal;
                }
                // The socket took it: its bytes leave the budget now.
                drop(in_flight);
            }
            frame = socket.recv() => {
                // Any frame at all, a ping or a pong included, is a sign of life:
                // a client busy opening many documents is never cut off.
                last_heard = clock.monotonic();
                match frame {
                    None | Some(Ok(WsMessage::Close(_))) => return None,
                    Some(Err(e)) => return Some(transport_fatal(&e)),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    Some(Ok(WsMessage::Text(_))) => {
                        return Some(Fatal::protocol("text frames are not part of the protocol; send binary CBOR"));
                    }
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        config.metrics.frame(Direction::In, bytes.len());
                        let wait = hub.throttle(conn.device.id);
                        if !wait.is_zero() {
                            tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                        }
                        let message = match wire::decode(&bytes, &limits) {
                            Ok(message) => message,
                            Err(e) => return Some(e.into()),
                        };
                        match handle(hub, socket, conn, client, extensions, message, &mut roster_opened).await {
                            // Time the server spent on the message is not the
                            // client's silence: the idle clock starts now.
                            Ok(true) => last_heard = clock.monotonic(),
                            Ok(false) => return None,
                            Err(fatal) => return Some(fatal),
                        }
                    }
                }
            }
        }
    }
}

/// Sends one frame, unless the device is revoked or the client stops
/// reading first: a client whose socket buffers are full would otherwise
/// park this connection in `send`, where neither revocation nor the idle
/// timeout could reach it. `Err(None)` is a closed socket.
async fn send_frame(
    socket: &mut WebSocket,
    conn: &Connection,
    frame: WsMessage,
    config: &Config,
) -> Result<(), Option<Fatal>> {
    let message_bytes = match &frame {
        WsMessage::Binary(bytes) => Some(bytes.len()),
        _ => None,
    };
    tokio::select! {
        sent = tokio::time::timeout(config.send_timeout, socket.send(frame)) => match sent {
            Ok(Ok(())) => {
                if let Some(bytes) = message_bytes {
                    config.metrics.frame(Direction::Out, bytes);
                }
                Ok(())
            }
            Ok(Err(_)) => Err(None),
            Err(_) => {
                config.metrics.refused(metrics::Refusal::Unresponsive);
                Err(Some(Fatal {
                    code: close_code::GOING_AWAY,
                    reason: "the client stopped reading".into(),
                }))
            }
        },
        _ = conn.revoked.notified() => Err(Some(stopped(conn))),
    }
}

/// Handles one decoded message. `Ok(false)` ends the connection quietly.
async fn handle(
    hub: &Hub,
    socket: &mut WebSocket,
    conn: &Arc<Connection>,
    client: &PeerId,
    extensions: Extensions,
    message: Message,
    roster_opened: &mut bool,
) -> Result<bool, Fatal> {
    match message {
        Message::Request {
            document_id, data, ..
        }
        | Message::Sync {
            document_id, data, ..
        } => {
            let span = tracing::debug_span!("document", document = %document_id);
            async {
                match check_access(hub, conn, document_id).await? {
                    Access::Open => {
                        record_roster_open(hub, conn, document_id, roster_opened).await?;
                        let arrived = std::time::Instant::now();
                        hub.receive_sync(conn, document_id, data)
                            .await
                            .inspect(|()| hub.config().metrics.acknowledged(arrived.elapsed()))
                            .map_err(|refusal| match refusal {
                                // Worded so the phone can tell what to re-make.
                                SyncRefusal::Refused(Refusal::KeptInAnotherForm { hash }) => {
                                    Fatal {
                                        code: close_code::KEPT_IN_ANOTHER_FORM,
                                        reason: provenance::refusal_text(document_id, &hash),
                                    }
                                }
                                other => Fatal::from(other),
                            })
                    }
                    Access::Unavailable => {
                        unavailable(hub, socket, conn, client, document_id).await
                    }
                    Access::Revoked => Err(revoked()),
                }
            }
            .instrument(span)
            .await?;
            Ok(true)
        }
        Message::Ephemeral {
            sender_id: _,
            count,
            session_id,
            document_id,
            data,
            ..
        } => {
            match check_access(hub, conn, document_id).await? {
                Access::Open => {
                    // Relayed under the peer id this connection joined with,
                    // whatever the message claims.
                    let ephemeral = Ephemeral {
                        sender_id: client.clone(),
                        document_id,
                        count,
                        session_id,
                        data,
                    };
                    hub.relay_ephemeral(conn, ephemeral).await
                }
                Access::Unavailable => unavailable(hub, socket, conn, client, document_id).await?,
                Access::Revoked => return Err(revoked()),
            }
            Ok(true)
        }
        Message::Leave { .. } => Ok(false),
        // The client lacks a document we asked about (we never ask), or
        // gossips heads (not enabled by default in automerge-repo): no reply.
        Message::DocUnavailable { .. }
        | Message::RemoteSubscriptionChange { .. }
        | Message::RemoteHeadsChanged { .. } => Ok(true),
        Message::Error { message, .. } => {
            tracing::info!(%message, "client reported an error");
            Ok(false)
        }
        Message::CountedRequest { .. } if extensions.counted => {
            counted(hub, socket, conn, client, extensions).await?;
            Ok(true)
        }
        Message::CountedRequest { .. } => Err(Fatal::protocol(format!(
            "{EXTENSION_COUNTED} was not negotiated in join"
        ))),
        Message::Counted { .. } => Err(Fatal::protocol("only the server sends doorstep-counted")),
        Message::Join { .. } | Message::Peer { .. } => Err(Fatal::protocol("already joined")),
    }
}

/// Answers a `doorstep-counted-request`: the heads the rollups count each
/// of the device's documents up to, the same list `GET
/// /api/v1/device/documents` gives, on the socket the device already has.
/// Messages the device sent before the request were handled (and their
/// changes persisted) first: this loop handles one message at a time.
async fn counted(
    hub: &Hub,
    socket: &mut WebSocket,
    conn: &Connection,
    client: &PeerId,
    extensions: Extensions,
) -> Result<(), Fatal> {
    let entries = crate::admin::device_documents(hub.store(), &conn.device)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not list counted heads");
            Fatal {
                code: close_code::TRY_AGAIN,
                reason: "server error, try again later".into(),
            }
        })?;
    let counted = entries
        .into_iter()
        .filter_map(|entry| {
            let id: DocumentId = entry.document_id.parse().ok()?;
            Some((id, entry.counted_heads))
        })
        .collect();
    let message = Message::Counted {
        sender_id: hub.peer_id.clone(),
        target_id: client.clone(),
        counted,
    };
    let frame = extensions.frame(&message);
    send_frame(socket, conn, frame, hub.config())
        .await
        .map_err(|fatal| fatal.unwrap_or_else(|| Fatal::protocol("socket closed")))
}

/// The roster holds the branch's names: the first time a connection opens
/// it is recorded, and committed before anything of it is sent.
async fn record_roster_open(
    hub: &Hub,
    conn: &Connection,
    document_id: DocumentId,
    roster_opened: &mut bool,
) -> Result<(), Fatal> {
    if *roster_opened || document_id != DocumentId::roster(conn.device.branch_id) {
        return Ok(());
    }
    // Once per device and interval: a device reconnecting in a loop must
    // not grow the append-only log by a row per connection.
    let verdict = hub.config().budgets.refusals.verdict_for_known(
        "roster.open",
        &conn.device.id.to_string(),
        hub.config().clock.now_ms(),
    );
    if let Some(detail) = verdict.detail(format!("connection {}", conn.id)) {
        let entry = AuditEntry::by_device(&conn.device, "roster.open", document_id.to_string())
            .detail(detail);
        hub.store().record_audit(entry).await.map_err(|e| {
            tracing::error!(error = %e, "could not record a roster opening");
            Fatal {
                code: close_code::TRY_AGAIN,
                reason: "server error, try again later".into(),
            }
        })?;
    }
    *roster_opened = true;
    Ok(())
}

fn revoked() -> Fatal {
    Fatal {
        code: close_code::REVOKED,
        reason: "device revoked".into(),
    }
}

/// Why a connection told to stop stops: its device was revoked, newer
/// connections of the device took its place, or the database was restored
/// under it (neither a revocation: the close code must not make a client
/// give up).
fn stopped(conn: &Connection) -> Fatal {
    if conn.revoked.is_superseded() {
        Fatal {
            code: close_code::GOING_AWAY,
            reason: "replaced by newer connections of this device".into(),
        }
    } else if conn.revoked.is_restored() {
        Fatal {
            code: close_code::GOING_AWAY,
            reason: "the server's data was restored from a backup; reconnect to sync again".into(),
        }
    } else {
        revoked()
    }
}

async fn check_access(
    hub: &Hub,
    conn: &Connection,
    document_id: DocumentId,
) -> Result<Access, Fatal> {
    hub.access(&conn.device, document_id).await.map_err(|e| {
        tracing::error!(error = %e, "access check failed");
        Fatal {
            code: close_code::TRY_AGAIN,
            reason: "server error, try again later".into(),
        }
    })
}

async fn unavailable(
    hub: &Hub,
    socket: &mut WebSocket,
    conn: &Connection,
    client: &PeerId,
    document_id: DocumentId,
) -> Result<(), Fatal> {
    hub.config()
        .metrics
        .refused(metrics::Refusal::DocumentUnavailable);
    let message = Message::DocUnavailable {
        sender_id: hub.peer_id.clone(),
        target_id: client.clone(),
        document_id,
    };
    // Like every other send: a client that stops reading, or is revoked,
    // does not park this task.
    let frame = WsMessage::Binary(wire::encode(&message).into());
    send_frame(socket, conn, frame, hub.config())
        .await
        .map_err(|fatal| fatal.unwrap_or_else(|| Fatal::protocol("socket closed")))
}
