//! The operator's HTTP port: `/metrics` (Prometheus), `/healthz` (alive), `/readyz`
//! (serving, state loaded), `/` (the dashboard, embedded: no CDN, no build step) and its JSON
//! API (`/api/status`, `/api/rounds`, `/api/profile`). It binds loopback unless the operator
//! says otherwise, and then every request needs the bearer token from a file.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Telemetry;

/// The dashboard page (HTML, CSS and JavaScript in one file, compiled in).
const DASHBOARD: &str = include_str!("dashboard.html");

/// Who may read the port.
#[derive(Debug, Clone)]
pub enum Access {
    /// Loopback only: anyone on this machine.
    Loopback,
    /// Any address, with `Authorization: Bearer <token>` on every request.
    Token(Arc<str>),
}

impl Access {
    /// The access for `addr`: loopback needs nothing; another address needs a token file
    /// (at least 16 characters, its first line) and the operator's explicit flag.
    pub fn for_address(addr: SocketAddr, token_file: Option<&Path>, allow_remote: bool) -> Result<Self, String> {
        match (addr.ip().is_loopback(), token_file) {
            (_, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("--metrics-token {}: {e}", path.display()))?;
                let token = text.lines().next().unwrap_or("").trim().to_owned();
                if token.len() < 16 {
                    return Err(format!("--metrics-token {}: the token must be at least 16 characters", path.display()));
                }
                if !addr.ip().is_loopback() && !allow_remote {
                    return Err(format!("--metrics-listen {addr} is not loopback: add --metrics-allow-remote to serve it beyond this machine"));
                }
                Ok(Access::Token(token.into()))
            }
            (true, None) => Ok(Access::Loopback),
            (false, None) => Err(format!(
                "--metrics-listen {addr} is not loopback: the dashboard shows site names and refusals; give --metrics-token FILE and --metrics-allow-remote"
            )),
        }
    }
}

#[derive(Clone)]
struct AppState {
    telemetry: Arc<Telemetry>,
    access: Access,
}

/// The router, for tests and for [`serve`].
pub fn router(telemetry: Arc<Telemetry>, access: Access) -> Router {
    let state = AppState { telemetry, access };
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/status", get(|State(s): State<AppState>| async move { axum::Json(s.telemetry.status()) }))
        .route("/api/rounds", get(|State(s): State<AppState>| async move { axum::Json(s.telemetry.rounds()) }))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Serves the port until `shutdown`.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, access: Access, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(telemetry, access)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    (headers, s.telemetry.encode()).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.telemetry.is_ready() { (StatusCode::OK, "ready\n").into_response() } else { (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response() }
}

/// With a token, every request but the page itself (which holds no data; it reads the token
/// from the URL's `#token=` fragment, never sent to the server) must carry it; the comparison
/// does not stop at the first differing byte.
async fn authorize(State(s): State<AppState>, request: Request, next: Next) -> Response {
    if let Access::Token(token) = &s.access
        && request.uri().path() != "/"
    {
        let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        let same = given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same {
            return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "a bearer token is needed\n").into_response();
        }
    }
    next.run(request).await
}
