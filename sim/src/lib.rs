//! Simulators of the two services jst2kd talks to, used by `jst2kd sim`, `jst2kd demo` and the
//! tests. They follow `apis/*.md`: the same signatures, envelopes, error codes and validation as
//! the real services; where the real behaviour is uncertain they are the stricter side.

pub mod jst;
pub mod kingdee;
pub mod sign;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Serves `router` on a free loopback port in the background; returns its base URL.
pub async fn spawn_local(router: Router, cancel: CancellationToken) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, router, cancel));
    Ok(format!("http://{addr}"))
}
