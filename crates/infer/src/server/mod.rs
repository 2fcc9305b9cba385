//! The HTTP server (axum on tokio): the seed's `POST /stream`, OpenAI-compatible `/v1/chat/completions`,
//! `/v1/completions` and `/v1/models`, and `GET /health` with the in-flight request count.
//!
//! Handlers turn a request into token ids and [`GenerationParams`], submit it to the continuous-batching
//! engine and relay its events; a client that disconnects drops the relay, which drops the engine's event
//! receiver, which cancels the row before the next decode step.

mod errors;
mod openai;
mod params;
mod stream;

pub use errors::ApiError;
pub use params::RequestLimits;

use crate::chat::ChatFormatter;
use crate::codec::TextCodec;
use crate::scheduler::EngineHandle;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Name of the base model in `/v1/models` and the `model` field.
    pub model_name: String,
    /// Bearer key required on every endpoint but `/health` (none: open).
    pub api_key: Option<String>,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Token limits for requests.
    pub limits: RequestLimits,
    /// System prompt used by `/stream` (which has no system field).
    pub stream_system: Option<String>,
    /// Ids that end every generation besides the tokenizer's EOS (the model config's `eos_token_id`s).
    pub stop_token_ids: Vec<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_name: "ferrotune".into(),
            api_key: None,
            max_body_bytes: 1 << 20,
            limits: RequestLimits::default(),
            stream_system: None,
            stop_token_ids: Vec::new(),
        }
    }
}

/// Shared state of the handlers.
pub struct AppState {
    /// The engine.
    pub engine: EngineHandle,
    /// The tokenizer.
    pub codec: Arc<dyn TextCodec>,
    /// Chat prompt rendering.
    pub chat: Arc<dyn ChatFormatter>,
    /// Settings.
    pub cfg: ServerConfig,
    next_id: AtomicU64,
    created: u64,
}

impl AppState {
    /// State for `router`.
    pub fn new(
        engine: EngineHandle,
        codec: Arc<dyn TextCodec>,
        chat: Arc<dyn ChatFormatter>,
        cfg: ServerConfig,
    ) -> Arc<Self> {
        Arc::new(AppState {
            engine,
            codec,
            chat,
            cfg,
            next_id: AtomicU64::new(1),
            created: unix_now(),
        })
    }

    /// A fresh response id with `prefix`.
    fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{:08x}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The adapter a `model` field names (`None`: base model); 404 for an unknown name.
    fn resolve_model(&self, name: Option<&str>) -> Result<Option<String>, ApiError> {
        match name {
            None => Ok(None),
            Some(n) if n == self.cfg.model_name => Ok(None),
            Some(n) if self.engine.adapters().iter().any(|a| a == n) => Ok(Some(n.to_string())),
            Some(n) => Err(ApiError::unknown_model(n)),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a JSON body, mapping every failure to an OpenAI-shaped 400 (413 when over the size limit).
pub(crate) fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(r.body_text(), None)
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}"), None))
}

async fn require_key(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn health(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "model": s.cfg.model_name,
        "adapters": s.engine.adapters(),
        "template": s.chat.name(),
        "in_flight": s.engine.in_flight(),
    }))
}

async fn models(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let names =
        std::iter::once(s.cfg.model_name.clone()).chain(s.engine.adapters().iter().cloned());
    let data: Vec<_> = names
        .map(|id| json!({"id": id, "object": "model", "created": s.created, "owned_by": "ferrotune"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "Unknown endpoint.".into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("not_found"),
    }
}

/// All routes.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    let protected = Router::new()
        .route("/stream", post(stream::stream))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(models))
        .layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves on `addr` until `shutdown` resolves; `on_bound` gets the actual address (port 0 = ephemeral).
pub async fn serve(
    state: Arc<AppState>,
    addr: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    on_bound(listener.local_addr()?);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves on `addr` from a fresh multi-threaded tokio runtime until Ctrl-C (or SIGTERM), then drains.
pub fn run_blocking(
    state: Arc<AppState>,
    addr: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferrotune-http")
        .build()?;
    rt.block_on(serve(state, addr, on_bound, shutdown_signal()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
