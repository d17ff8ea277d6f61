//! Connections to the server: HTTPS for enrollment, WSS for sync, both
//! over rustls with the system's roots plus an optional extra CA.

use std::sync::Arc;

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
}

fn tls_config(extra_ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    // A machine without system roots can still use an extra CA.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
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
        Ok(Transport { base, tls, http })
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
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            true,
            Some(Connector::Rustls(self.tls.clone())),
        );
        let (socket, _) = tokio::time::timeout(std::time::Duration::from_secs(15), connect)
            .await
            .map_err(|_| ClientError::Network("connecting timed out".into()))?
            .map_err(|e| ClientError::Network(e.to_string()))?;
        Ok(socket)
    }
}
