//! The connections to PostgreSQL are encrypted and the server verified,
//! when the URL asks (`sslmode=verify-full`, `sslrootcert`), as the
//! README tells operators to run it. The test script's cluster takes TLS
//! only, with a CA of its own, so the whole suite connects so; here the
//! encryption is read back, and a CA that did not sign the server's
//! certificate is refused.
//!
//! Needs `DOORSTEP_TEST_POSTGRES` (the test script sets it).

use doorstep_server::store::{Location, Store};

#[tokio::test]
async fn the_connections_are_encrypted_and_a_server_signed_by_another_ca_is_refused()
-> anyhow::Result<()> {
    let url = doorstep_tests::postgres_database().await?;
    anyhow::ensure!(
        url.contains("sslmode=verify-full") && url.contains("sslrootcert="),
        "the test cluster's URL asks for a verified server (tests/postgres/throwaway-cluster)"
    );
    let store = Store::open_at(&Location::Postgres(url.clone())).await?;
    let version = store.encryption().await?;
    anyhow::ensure!(
        version.as_deref().is_some_and(|v| v.starts_with("TLS")),
        "{version:?}"
    );
    store.close().await;

    // A CA of somebody else's: the server's certificate does not chain to it.
    let stranger = {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&rcgen::KeyPair::generate()?)?.pem()
    };
    let dir = tempfile::tempdir()?;
    let wrong_ca = dir.path().join("stranger.crt");
    std::fs::write(&wrong_ca, stranger)?;
    let mut parsed = url::Url::parse(&url)?;
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "sslrootcert" {
                wrong_ca.to_string_lossy().into_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    let refused = Store::open_at(&Location::Postgres(parsed.to_string())).await;
    match refused {
        Ok(_) => anyhow::bail!("a server whose CA is not trusted was reached"),
        Err(e) => anyhow::ensure!(
            e.to_string().contains("certificate"),
            "refused, but not for its certificate: {e}"
        ),
    }
    Ok(())
}
