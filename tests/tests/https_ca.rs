#![allow(clippy::expect_used, clippy::unwrap_used)]
//! `jst.ca_file` / `kingdee.ca_file`: an HTTPS server whose certificate comes from a private CA
//! (made with openssl by `e2e::certificates`) is trusted with the CA's PEM file and refused
//! without it, with a message that says why.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use e2e::{Scratch, certificates};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTPS server answering `ok` to every request; its address.
async fn serve(dir: &Path) -> String {
    common::http::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    format!("https://localhost:{port}/")
}

#[tokio::test]
async fn a_private_ca_is_trusted_from_its_file_and_nothing_else_is() {
    let scratch = Scratch::new("https-ca");
    let dir = scratch.0.clone();
    certificates(&dir);
    let url = serve(&dir).await;

    let trusted = common::http::ca_certificates("kingdee.ca_file", &dir.join("ca.pem")).unwrap();
    let client = common::http::client_trusting(Duration::from_secs(10), &trusted).unwrap();
    let answer = client
        .get(&url)
        .send()
        .await
        .expect("trusted through the CA file");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "ok");

    // Without the file the usual roots do not know the CA: refused, and the message says so.
    let plain = common::http::client(Duration::from_secs(10)).unwrap();
    let err = plain
        .get(&url)
        .send()
        .await
        .expect_err("an unknown CA is refused");
    let text = common::http::transport_message(&err);
    eprintln!("without the CA: {text}");
    assert!(text.contains("connection failed"), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");

    // A file that is not a certificate is named, its content never shown.
    let e = common::http::ca_certificates("jst.ca_file", &dir.join("server.key"))
        .expect_err("a key is not a CA");
    assert!(e.contains("jst.ca_file") && !e.contains("PRIVATE"), "{e}");
    let e = common::http::ca_certificates("jst.ca_file", &dir.join("missing.pem"))
        .expect_err("missing");
    assert!(e.contains("cannot read"), "{e}");
}
