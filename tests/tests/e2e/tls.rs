//! HTTPS and WSS with certificates from a test CA made by rcgen.

use std::sync::Arc;

use doorstep_protocol::DocumentId;
use doorstep_tests::{SyncOutcome, TestPeer, tls_server};
use tokio_tungstenite::Connector;

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

/// A ClientHello for `version` with no supported_versions extension (so it
/// offers exactly that version): ECDHE-ECDSA suites rustls speaks, the
/// groups and signature schemes they need.
fn client_hello(version: [u8; 2]) -> anyhow::Result<Vec<u8>> {
    let mut extensions = Vec::new();
    let mut extension = |kind: u16, body: &[u8]| -> anyhow::Result<()> {
        extensions.extend_from_slice(&kind.to_be_bytes());
        extensions.extend_from_slice(&u16::try_from(body.len())?.to_be_bytes());
        extensions.extend_from_slice(body);
        Ok(())
    };
    extension(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17])?; // groups: x25519, P-256
    extension(0x000b, &[0x01, 0x00])?; // point formats: uncompressed
    extension(0x000d, &[0x00, 0x04, 0x04, 0x03, 0x05, 0x03])?; // ECDSA P-256/P-384 SHA-2
    extension(0x0017, &[])?; // extended master secret
    extension(0xff01, &[0x00])?; // renegotiation info
    let mut hello = version.to_vec();
    hello.extend_from_slice(&[0x42; 32]);
    hello.push(0x00); // no session id
    // ECDHE-ECDSA with AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305.
    hello.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2c, 0xcc, 0xa9]);
    hello.extend_from_slice(&[0x01, 0x00]); // no compression
    hello.extend_from_slice(&u16::try_from(extensions.len())?.to_be_bytes());
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&u16::try_from(hello.len())?.to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len())?.to_be_bytes());
    record.extend_from_slice(&handshake);
    Ok(record)
}

/// The server's first bytes after `hello`.
async fn answer_to(addr: std::net::SocketAddr, hello: &[u8]) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(hello).await?;
    let mut answer = vec![0u8; 16];
    let n =
        tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut answer)).await??;
    answer.truncate(n);
    Ok(answer)
}

/// TLS 1.2 and 1.3 only: the same hand-made ClientHello (no maintained
/// client still speaks TLS 1.0 or 1.1) gets a ServerHello when it offers
/// TLS 1.2 and one fatal alert when it offers TLS 1.0 or 1.1; and a rustls
/// client that speaks 1.2 and nothing newer is served.
#[tokio::test]
async fn only_tls_1_2_and_1_3_are_spoken() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (server, ca, _pems) = tls_server().await?;
    let addr = server.addr;

    let answer = answer_to(addr, &client_hello([0x03, 0x03])?).await?;
    assert_eq!(
        (answer.first(), answer.get(5)),
        (Some(&0x16), Some(&0x02)),
        "TLS 1.2 is not answered with a ServerHello: {answer:02x?}"
    );
    for old in [[0x03, 0x01], [0x03, 0x02]] {
        let answer = answer_to(addr, &client_hello(old)?).await?;
        // A fatal alert, and nothing else.
        assert_eq!(
            answer.first(),
            Some(&0x15),
            "{old:02x?} is not refused: {answer:02x?}"
        );
        assert_eq!(answer.get(5), Some(&2), "not fatal: {answer:02x?}");
        assert_eq!(answer.len(), 7, "more than one alert: {answer:02x?}");
    }

    // A client that speaks TLS 1.2 and nothing newer is served.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut tls = connector.connect(name, tcp).await?;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await?;
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    Ok(())
}
