//! HTTPS and WSS with certificates from a test CA made by rcgen.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use doorstep_protocol::DocumentId;
use doorstep_tests::{SyncOutcome, TestPeer, TestServer};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use tokio_tungstenite::Connector;

#[tokio::test]
async fn devices_sync_over_wss_with_a_certificate_from_their_ca() -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let cert = params.signed_by(&server_key, &ca, &ca_key)?;

    let pem_dir = tempfile::tempdir()?;
    let cert_path = pem_dir.path().join("cert.pem");
    let key_path = pem_dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, server_key.serialize_pem())?;

    let server = TestServer::spawn_with(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
    })
    .await?;
    let d = server.district().await?;
    // Enrollment itself goes over HTTPS.
    let issued = doorstep_server::admin::issue_enrollment_code(
        &server.store,
        d.yingfeng.id,
        "tls phone",
        1,
        "test",
    )
    .await?;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes())?)
        .build()?;
    let enrolled: serde_json::Value = https
        .post(format!(
            "https://127.0.0.1:{}/api/v1/enroll",
            server.addr.port()
        ))
        .json(&serde_json::json!({ "code": issued.code }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = enrolled["token"].as_str().expect("token");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let url = format!("wss://127.0.0.1:{}/sync?token={token}", server.addr.port());
    let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(Connector::Rustls(Arc::new(client))),
    )
    .await?;
    let mut peer = TestPeer::handshake(socket, None).await?;
    assert_eq!(
        peer.sync(DocumentId::roster(d.yingfeng.id)).await?,
        SyncOutcome::Synced
    );

    // Plain HTTP on the TLS port does not work.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/healthz", server.addr.port()))
            .await
            .is_err()
            || !reqwest::get(format!("http://127.0.0.1:{}/healthz", server.addr.port()))
                .await?
                .status()
                .is_success()
    );
    Ok(())
}
