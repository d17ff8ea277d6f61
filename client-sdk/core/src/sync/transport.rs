//! Connections to the server: HTTPS for enrollment, WSS for sync, both
//! over rustls.
//!
//! Trusted roots: Mozilla's, bundled (`webpki-roots`), so a phone needs no
//! platform certificate store (rustls-native-certs finds none on Android or
//! iOS); the system's, where there is a readable store (desktop Linux,
//! macOS); and an optional extra CA for a server with a private one. The
//! platform verifier would also honour user-installed CAs, but on Android
//! it needs a JNI hand-off from the app's process, which a UniFFI library
//! cannot do on its own; the extra CA covers private deployments instead.

use std::sync::{Arc, Mutex};

use doorstep_protocol::PeerId;
use doorstep_protocol::wire::PeerMetadata;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::ClientError;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Clone)]
pub(crate) struct Transport {
    base: String,
    tls: Arc<rustls::ClientConfig>,
    http: reqwest::Client,
    /// The server's time, from the `Date` of its answers (see `clock`).
    pub server_time: Arc<crate::clock::ServerTime>,
    /// The server as its last `peer` message described it: its peer id and
    /// the extensions it accepted. With it the next connection sends its
    /// `join` and first messages back to back.
    server: Arc<Mutex<Option<KnownServer>>>,
}

/// What a server said about itself in `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownServer {
    pub peer: PeerId,
    pub extensions: Vec<String>,
    /// The server's storage id: its database's epoch, which a restore
    /// of the server's data changes.
    pub epoch: Option<String>,
}

impl KnownServer {
    /// The server as its `peer` message describes it.
    pub fn announced(peer: PeerId, metadata: Option<PeerMetadata>) -> KnownServer {
        let metadata = metadata.unwrap_or_default();
        KnownServer {
            peer,
            epoch: metadata.storage_id.map(|id| id.as_str().to_owned()),
            extensions: metadata.extensions,
        }
    }
}

fn trusted_roots(extra_ca_pem: Option<&[u8]>) -> Result<rustls::RootCertStore, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Absent or unreadable on phones: the bundled roots stand in.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = extra_ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ClientError::invalid("extra_ca_pem", e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::invalid("extra_ca_pem", e.to_string()))?;
        }
    }
    Ok(roots)
}

fn tls_config(extra_ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ClientError> {
    let roots = trusted_roots(extra_ca_pem)?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::invalid("extra_ca_pem", e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

impl Transport {
    pub fn new(server_url: &str, extra_ca_pem: Option<&[u8]>) -> Result<Transport, ClientError> {
        let base = server_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::invalid(
                "server_url",
                format!("must start with http:// or https://: {base}"),
            ));
        }
        let tls = Arc::new(tls_config(extra_ca_pem)?);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::invalid("server_url", e.to_string()))?;
        Ok(Transport {
            base,
            tls,
            http,
            server_time: Arc::default(),
            server: Arc::new(Mutex::new(None)),
        })
    }

    /// The server as last seen, if a connection has seen it.
    pub fn known_server(&self) -> Option<KnownServer> {
        self.server.lock().ok().and_then(|known| known.clone())
    }

    pub fn remember_server(&self, server: KnownServer) {
        if let Ok(mut known) = self.server.lock() {
            *known = Some(server);
        }
    }

    /// `GET /api/v1/device/documents`: the device's documents as the
    /// server lists them (months held, counted heads), each read into `T`.
    /// Notes the server's time; a refusal is typed as `sync::refusal` does.
    pub async fn device_documents<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
    ) -> Result<Vec<T>, ClientError> {
        let response = self
            .http
            .get(self.url("/api/v1/device/documents"))
            .bearer_auth(token)
            .send()
            .await?;
        self.server_time.note(response.status(), response.headers());
        if !response.status().is_success() {
            return Err(super::refusal(response, "listing documents").await);
        }
        Ok(response.json().await?)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Opens the sync WebSocket with the device token in the header.
    pub async fn connect(&self, token: &str) -> Result<Socket, ClientError> {
        let ws_url = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}/sync")
        } else {
            format!("ws://{}/sync", self.base.trim_start_matches("http://"))
        };
        let mut request = ws_url
            .into_client_request()
            .map_err(|e| ClientError::invalid("server_url", e.to_string()))?;
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Storage("the stored token is not a valid header".into()))?;
        request.headers_mut().insert("authorization", header);
        // tungstenite caps frames at 16 MiB by default; a first sync of a
        // big roster is one whole-document message.
        let limits = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(super::MAX_MESSAGE_BYTES))
            .max_frame_size(Some(super::MAX_MESSAGE_BYTES));
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(limits),
            true,
            Some(Connector::Rustls(self.tls.clone())),
        );
        let (socket, response) = tokio::time::timeout(std::time::Duration::from_secs(15), connect)
            .await
            .map_err(|_| ClientError::Network("connecting timed out".into()))?
            .map_err(|e| ClientError::Network(e.to_string()))?;
        self.server_time.note(response.status(), response.headers());
        Ok(socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_roots_are_trusted_without_a_system_store() -> Result<(), ClientError> {
        // Mozilla's list has well over a hundred roots; a phone gets them all
        // whatever its own store holds.
        let roots = trusted_roots(None)?;
        assert!(
            roots.len() >= webpki_roots::TLS_SERVER_ROOTS.len(),
            "{}",
            roots.len()
        );
        assert!(roots.len() > 100, "{} roots", roots.len());
        Ok(())
    }

    #[test]
    fn a_malformed_extra_ca_is_refused() {
        let err = trusted_roots(Some(
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        ))
        .expect_err("refused");
        assert!(matches!(err, ClientError::Invalid { .. }), "{err}");
    }
}
