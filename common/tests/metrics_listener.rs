#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The metrics listener against slow and excess connections: a client that never finishes its
//! headers is cut at the header timeout, connections past the cap are closed at once, and a
//! real scrape is served as soon as a slot is free.

use std::time::{Duration, Instant};

use common::telemetry::{Health, Metrics, ServeLimits, Stage, serve_http_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn serve(limits: ServeLimits) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cancel = CancellationToken::new();
    tokio::spawn(serve_http_with(
        listener,
        Metrics::new(&[Stage::Loader]),
        Health::new(),
        cancel.clone(),
        limits,
    ));
    (addr, cancel)
}

/// Waits until the server closes the connection; how long that took, or `None` past `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

async fn scrape(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut() {
    let (addr, _stop) = serve(ServeLimits {
        max_connections: 4,
        header_timeout: Duration::from_millis(300),
        connection_lifetime: Duration::from_secs(30),
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    for s in &mut slow {
        let took = closed_within(s, Duration::from_secs(5))
            .await
            .expect("a slow client is cut");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    let answer = scrape(&addr).await.expect("served after the slow ones");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let (addr, _stop) = serve(ServeLimits {
        max_connections: 8,
        header_timeout: Duration::from_secs(20),
        connection_lifetime: Duration::from_secs(30),
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Give the server a moment to accept the eight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut excess = Vec::new();
    for _ in 0..50 {
        excess.push(TcpStream::connect(&addr).await.unwrap());
    }
    for s in &mut excess {
        assert!(
            closed_within(s, Duration::from_secs(2)).await.is_some(),
            "a connection past the cap was kept open"
        );
    }
    for s in &mut held {
        assert!(
            closed_within(s, Duration::from_millis(100)).await.is_none(),
            "a connection within the cap was closed"
        );
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(answer) = scrape(&addr).await
            && answer.starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
