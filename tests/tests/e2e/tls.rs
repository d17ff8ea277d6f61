//! HTTPS and WSS with certificates from a test CA made by rcgen.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use doorstep_protocol::DocumentId;
use doorstep_tests::{SyncOutcome, TestPeer, TestServer};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use tokio_tungstenite::Connector;

/// A TLS server whose certificate comes from a test CA; returns the CA.
async fn tls_server() -> anyhow::Result<(TestServer, rcgen::Certificate, tempfile::TempDir)> {
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
    Ok((server, ca, pem_dir))
}

#[tokio::test]
async fn the_sdk_enrolls_and_syncs_over_https_and_wss_with_the_extra_ca() -> anyhow::Result<()> {
    let (server, ca, _pems) = tls_server().await?;
    let d = server.district().await?;
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let trust_the_ca = |c: &mut doorstep_client::ClientConfig| {
        c.extra_ca_pem = Some(ca.pem().into_bytes());
    };
    let a = doorstep_tests::sdk_device(
        &server.store,
        &url,
        d.yingfeng.id,
        dir_a.path(),
        trust_the_ca,
    )
    .await?;
    let b = doorstep_tests::sdk_device(
        &server.store,
        &url,
        d.yingfeng.id,
        dir_b.path(),
        trust_the_ca,
    )
    .await?;
    let member = a
        .add_member(doorstep_client::NewMember {
            name: "经由TLS".into(),
            ..Default::default()
        })
        .await?;
    a.sync_now().await?;
    b.sync_now().await?;
    assert_eq!(b.member(member).await?.name, "经由TLS");

    // Without the CA, the bundled and system roots do not vouch for it:
    // the connection fails as a network error, and nothing is lost.
    let dir_c = tempfile::tempdir()?;
    let refused =
        doorstep_tests::sdk_device(&server.store, &url, d.yingfeng.id, dir_c.path(), |_| {})
            .await
            .expect_err("an unknown CA is not trusted");
    assert!(
        format!("{refused:#}")
            .to_lowercase()
            .contains("certificate")
            || format!("{refused:?}")
                .to_lowercase()
                .contains("certificate"),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn devices_sync_over_wss_with_a_certificate_from_their_ca() -> anyhow::Result<()> {
    let (server, ca, _pems) = tls_server().await?;
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
