//! The dashboard's HTTP side (axum): the page, `/api/status`, `/metrics`, and the token check
//! that every request must pass when the dashboard listens beyond loopback.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
};

use ringrun_runtime::progress::unix_ms;

use super::{metrics, view::JobView};

const PAGE: &str = include_str!("page.html");

#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) view: Arc<Mutex<JobView>>,
    /// Required on every request when set (the dashboard listens beyond loopback).
    pub(crate) token: Option<Arc<str>>,
}

/// The router over `shared`.
pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/metrics", get(prometheus))
        .layer(middleware::from_fn_with_state(shared.clone(), authorise))
        .with_state(shared)
}

/// Serves `router` on `listener` until the process ends.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Shared) {
    if let Err(e) = axum::serve(listener, router(shared)).await {
        eprintln!("ringrun: dashboard stopped: {e}");
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn status(State(s): State<Shared>) -> Response {
    let body = s
        .view
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .status_json(unix_ms());
    axum::Json(body).into_response()
}

async fn prometheus(State(s): State<Shared>) -> Response {
    let text = metrics::render(&s.view.lock().unwrap_or_else(|e| e.into_inner()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Lets a request through when no token is needed, or when it carries the token as
/// `Authorization: Bearer TOKEN` or `?token=TOKEN` (the page forwards the one in its URL).
async fn authorise(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    if bearer
        .or(query)
        .is_some_and(|t| same(t.as_bytes(), token.as_bytes()))
    {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a token is required: the URL the launcher printed carries it\n",
    )
        .into_response()
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a dashboard on `addr` needs the token: anything but loopback does.
pub(crate) fn needs_token(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_goes_without_a_token() {
        assert!(!needs_token("127.0.0.1:8080".parse().unwrap()));
        assert!(!needs_token("[::1]:8080".parse().unwrap()));
        assert!(needs_token("0.0.0.0:8080".parse().unwrap()));
        assert!(needs_token("10.1.2.3:8080".parse().unwrap()));
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
