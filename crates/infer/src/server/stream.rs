//! The seed's `POST /stream` (`{"prompt": "...", "history": [[user, assistant], ...]}`): the answer as a
//! chunked `text/plain` body of raw text deltas, terminated by the literal marker `[stop]`.
//!
//! Contract (also in the README): status 200, `Content-Type: text/plain; charset=utf-8`, no length; the body
//! is the answer's text exactly, sent piece by piece as it is generated, followed by `[stop]` once it is
//! complete. A failure after the first byte appends `[error] <message>` before `[stop]`. Failures before
//! (bad JSON, too long, unknown model, API key) are OpenAI-shaped JSON errors with their status code.

use super::errors::ApiError;
use super::openai::{pieces, Piece};
use super::params::Knobs;
use super::{parse_body, AppState};
use crate::chat::history_to_messages;
use crate::scheduler::GenRequest;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::stream::StreamExt;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;

/// The end-of-answer marker.
pub const STOP_MARKER: &str = "[stop]";

#[derive(Debug, Deserialize)]
struct StreamRequest {
    prompt: String,
    #[serde(default)]
    history: Vec<(String, String)>,
    /// Adapter or base model name (optional).
    model: Option<String>,
    #[serde(flatten)]
    knobs: Knobs,
}

/// `POST /stream`.
pub async fn stream(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut req: StreamRequest = parse_body(body, s.cfg.max_body_bytes)?;
    let adapter = s.resolve_model(req.model.as_deref())?;
    let messages = history_to_messages(s.cfg.stream_system.as_deref(), &req.history, &req.prompt);
    let ids = s.chat.prompt_ids(s.codec.as_ref(), &messages)?;
    // The seed's generate defaults (alpaca-lora): low temperature, top_p 0.75, top_k 40.
    req.knobs.top_p.get_or_insert(0.75);
    req.knobs.top_k.get_or_insert(40);
    let mut params = req
        .knobs
        .to_params(&s.cfg.limits, 0.1, ids.len(), s.engine.max_context())?;
    params.stop.extend(s.chat.stop_strings());
    params.stop_token_ids = s
        .chat
        .stop_pieces()
        .iter()
        .filter_map(|p| s.codec.piece_id(p))
        .chain(s.cfg.stop_token_ids.iter().copied())
        .collect();
    let rx = s.engine.submit(GenRequest {
        prompt_ids: ids,
        params,
        adapter,
    })?;
    let body = pieces(rx).map(|p| {
        Ok::<_, Infallible>(match p {
            Piece::Delta(d) => d,
            Piece::End(..) => STOP_MARKER.to_string(),
            Piece::Failed(e) => format!("[error] {e}{STOP_MARKER}"),
        })
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response())
}
