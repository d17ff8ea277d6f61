//! A minimal automerge-repo peer over a real WebSocket.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use automerge::Automerge;
use doorstep_protocol::session::DocSession;
use doorstep_protocol::wire::{self, Limits, Message, PeerMetadata};
use doorstep_protocol::{DocumentId, PeerId, StorageId};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a sync of one document ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Both sides have each other's changes.
    Synced,
    /// The server answered `doc-unavailable`; these are its raw bytes.
    Unavailable(Vec<u8>),
    /// The server sent an `error` and closed.
    Refused {
        message: String,
        close_code: Option<u16>,
    },
}

/// One device connection: a WebSocket plus a session per document.
#[derive(Debug)]
pub struct TestPeer {
    socket: Socket,
    pub peer_id: PeerId,
    pub server_peer: PeerId,
    docs: HashMap<DocumentId, DocSession>,
    requested: HashMap<DocumentId, bool>,
    received: HashMap<DocumentId, usize>,
    limits: Limits,
}

impl TestPeer {
    /// Connects with a bearer token in the header and completes the handshake.
    pub async fn connect(
        ws_url: &str,
        token: &str,
        storage_id: Option<&str>,
    ) -> anyhow::Result<TestPeer> {
        let mut request = ws_url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Self::handshake(socket, storage_id).await
    }

    /// Connects through an already-made socket (TLS tests make their own).
    pub async fn handshake(socket: Socket, storage_id: Option<&str>) -> anyhow::Result<TestPeer> {
        let peer_id = PeerId::new(format!("test-{}", uuid::Uuid::new_v4()))?;
        let mut peer = TestPeer {
            socket,
            peer_id: peer_id.clone(),
            server_peer: PeerId::new("unknown")?,
            docs: HashMap::new(),
            requested: HashMap::new(),
            received: HashMap::new(),
            limits: Limits::default(),
        };
        peer.send(&Message::Join {
            sender_id: peer_id,
            supported_protocol_versions: vec!["1".into()],
            peer_metadata: Some(PeerMetadata {
                storage_id: storage_id.map(StorageId::new).transpose()?,
                is_ephemeral: storage_id.is_none(),
                extensions: Vec::new(),
            }),
        })
        .await?;
        match peer.recv(Duration::from_secs(5)).await? {
            Message::Peer {
                sender_id,
                selected_protocol_version,
                ..
            } if selected_protocol_version == "1" => {
                peer.server_peer = sender_id;
                Ok(peer)
            }
            Message::Error { message, .. } => {
                let (code, _) = peer.closed(Duration::from_secs(5)).await?;
                bail!("refused: {message} (close code {code})")
            }
            other => bail!("expected peer, got {other:?}"),
        }
    }

    pub async fn send(&mut self, message: &Message) -> anyhow::Result<()> {
        self.send_raw(wire::encode(message)).await
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.socket.send(WsMessage::Binary(bytes.into())).await?;
        Ok(())
    }

    /// The next protocol message, skipping pings.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Message> {
        let bytes = self.recv_raw(timeout).await?;
        Ok(wire::decode(&bytes, &self.limits)?)
    }

    /// The next binary frame; a close frame is an error naming its code.
    pub async fn recv_raw(&mut self, timeout: Duration) -> anyhow::Result<Vec<u8>> {
        loop {
            let frame = tokio::time::timeout(timeout, self.socket.next())
                .await
                .map_err(|_| anyhow!("no message within {timeout:?}"))?;
            match frame {
                Some(Ok(WsMessage::Binary(bytes))) => return Ok(bytes.to_vec()),
                Some(Ok(WsMessage::Close(frame))) => {
                    bail!(
                        "closed: {:?}",
                        frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                    )
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket ended"),
            }
        }
    }

    /// Waits for the close frame; returns its code and reason.
    pub async fn closed(&mut self, timeout: Duration) -> anyhow::Result<(u16, String)> {
        loop {
            let frame = tokio::time::timeout(timeout, self.socket.next())
                .await
                .map_err(|_| anyhow!("not closed within {timeout:?}"))?;
            match frame {
                Some(Ok(WsMessage::Close(Some(f)))) => {
                    return Ok((u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(WsMessage::Close(None))) | None => return Ok((1005, String::new())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
            }
        }
    }

    /// Sync payload bytes the server has sent for a document so far.
    pub fn bytes_received(&self, id: DocumentId) -> usize {
        self.received.get(&id).copied().unwrap_or(0)
    }

    /// Starts tracking a document with a local replica.
    pub fn open(&mut self, id: DocumentId, doc: Automerge) {
        let mut session = DocSession::new(doc, 0);
        session
            .add_peer(self.server_peer.clone(), None, 0)
            .expect("a fresh sync state");
        self.docs.insert(id, session);
    }

    pub fn document(&self, id: DocumentId) -> Option<&Automerge> {
        self.docs.get(&id).map(DocSession::document)
    }

    pub fn document_mut(&mut self, id: DocumentId) -> Option<&mut Automerge> {
        self.docs.get_mut(&id).map(DocSession::document_mut)
    }

    /// Applies whatever sync messages arrive within `window`, answering
    /// them; for devices that wait to be told about others' changes.
    pub async fn listen(&mut self, window: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + window;
        let server = self.server_peer.clone();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            let bytes = match self.recv_raw(left).await {
                Ok(bytes) => bytes,
                Err(_) => return Ok(()),
            };
            if let Message::Sync {
                document_id, data, ..
            } = wire::decode(&bytes, &self.limits)?
                && let Some(session) = self.docs.get_mut(&document_id)
            {
                session.receive(&server, &data, 0)?;
                if let Some(reply) = session.generate(&server, 0) {
                    let message = Message::Sync {
                        sender_id: self.peer_id.clone(),
                        target_id: server.clone(),
                        document_id,
                        data: reply,
                    };
                    self.send(&message).await?;
                }
            }
        }
    }

    /// Syncs one document until the server has all our changes and we have
    /// all of the server's, or the server refuses.
    pub async fn sync(&mut self, id: DocumentId) -> anyhow::Result<SyncOutcome> {
        if !self.docs.contains_key(&id) {
            self.open(id, Automerge::new());
        }
        let server = self.server_peer.clone();
        let first = !self.requested.contains_key(&id);
        self.requested.insert(id, true);
        if let Some(data) = self
            .docs
            .get_mut(&id)
            .context("open doc")?
            .generate(&server, 0)
        {
            let message = if first {
                Message::Request {
                    sender_id: self.peer_id.clone(),
                    target_id: server.clone(),
                    document_id: id,
                    data,
                }
            } else {
                Message::Sync {
                    sender_id: self.peer_id.clone(),
                    target_id: server.clone(),
                    document_id: id,
                    data,
                }
            };
            self.send(&message).await?;
        }
        loop {
            {
                let session = self.docs.get(&id).context("open doc")?;
                let ours = session.heads();
                let theirs_known = session.their_heads(&server).is_some_and(|h| {
                    h.iter()
                        .all(|h| session.document().get_change_meta_by_hash(h).is_some())
                });
                if theirs_known && session.peer_covers(&server, &ours) {
                    return Ok(SyncOutcome::Synced);
                }
            }
            let bytes = match self.recv_raw(Duration::from_secs(10)).await {
                Ok(bytes) => bytes,
                Err(e) => return Err(e.context(format!("syncing {id}"))),
            };
            match wire::decode(&bytes, &self.limits)? {
                Message::Sync {
                    document_id, data, ..
                } if document_id == id => {
                    *self.received.entry(id).or_default() += data.len();
                    let session = self.docs.get_mut(&id).context("open doc")?;
                    session.receive(&server, &data, 0)?;
                    if let Some(reply) = session.generate(&server, 0) {
                        let message = Message::Sync {
                            sender_id: self.peer_id.clone(),
                            target_id: server.clone(),
                            document_id: id,
                            data: reply,
                        };
                        self.send(&message).await?;
                    }
                }
                Message::Sync {
                    document_id, data, ..
                } => {
                    // Another document's news: apply it so nothing is lost.
                    if let Some(session) = self.docs.get_mut(&document_id) {
                        session.receive(&server, &data, 0)?;
                    }
                }
                Message::DocUnavailable { document_id, .. } if document_id == id => {
                    return Ok(SyncOutcome::Unavailable(bytes));
                }
                Message::Error { message, .. } => {
                    let close_code = self
                        .closed(Duration::from_secs(5))
                        .await
                        .ok()
                        .map(|(code, _)| code);
                    return Ok(SyncOutcome::Refused {
                        message,
                        close_code,
                    });
                }
                _ => {}
            }
        }
    }
}
