//! Prometheus metrics over plain HTTP (`--metrics-listen`): `GET /metrics` answers the
//! registry in the OpenMetrics text format. Meant for a scraper on a private network or
//! loopback; it serves nothing else.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::task::AbortOnDropHandle;

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A metrics endpoint serving in the background; it stops when dropped.
pub struct MetricsServer {
    pub addr: SocketAddr,
    _task: AbortOnDropHandle<()>,
}

/// Serves `registry` at `http://{listen}/metrics`.
pub async fn serve(listen: SocketAddr, registry: Registry) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(registry));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    Ok(MetricsServer {
        addr,
        _task: AbortOnDropHandle::new(task),
    })
}

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    let mut text = String::new();
    match encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "encoding the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
