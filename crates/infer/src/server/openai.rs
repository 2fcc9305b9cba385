//! OpenAI-compatible `POST /v1/chat/completions` and `POST /v1/completions`, streamed as Server-Sent
//! Events (`data: {chunk}` lines, then `data: [DONE]`) or answered as one JSON object.

use super::errors::ApiError;
use super::params::Knobs;
use super::{parse_body, unix_now, AppState};
use crate::chat::ChatMessage;
use crate::scheduler::{Event, GenRequest};
use crate::sequence::FinishReason;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(default)]
    text: String,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    knobs: Knobs,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    prompt: PromptField,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    knobs: Knobs,
}

/// What a finished request reports.
pub(crate) struct Outcome {
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Waits for a request's end, gathering its text.
pub(crate) async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<Outcome, ApiError> {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Delta(d)) => text.push_str(&d),
            Some(Event::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                return Ok(Outcome {
                    text,
                    finish: finish_reason,
                    prompt_tokens,
                    completion_tokens,
                })
            }
            Some(Event::Error(e)) => return Err(ApiError::internal(e)),
            None => return Err(ApiError::internal("the generation engine stopped")),
        }
    }
}

/// One step of a streamed request.
pub(crate) enum Piece {
    Delta(String),
    End(FinishReason, usize, usize),
    Failed(String),
}

/// The engine's events as a stream ending after `Done` / `Error`. Dropping it cancels the request.
pub(crate) fn pieces(rx: UnboundedReceiver<Event>) -> impl Stream<Item = Piece> + Send {
    stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        Some(match rx.recv().await {
            Some(Event::Delta(d)) => (Piece::Delta(d), Some(rx)),
            Some(Event::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => (
                Piece::End(finish_reason, prompt_tokens, completion_tokens),
                None,
            ),
            Some(Event::Error(e)) => (Piece::Failed(e), None),
            None => (Piece::Failed("the generation engine stopped".into()), None),
        })
    })
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

fn usage(p: usize, c: usize) -> Value {
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

fn sse(chunks: impl Stream<Item = Value> + Send + 'static) -> Response {
    let events = chunks
        .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())))
        .chain(stream::once(async {
            Ok::<_, Infallible>(SseEvent::default().data("[DONE]"))
        }));
    Sse::new(events).into_response()
}

fn error_chunk(msg: String) -> Value {
    ApiError::internal(msg).body()
}

async fn submit(s: &AppState, req: GenRequest) -> Result<UnboundedReceiver<Event>, ApiError> {
    s.engine.submit(req).map_err(ApiError::from)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_body(body, s.cfg.max_body_bytes)?;
    let adapter = s.resolve_model(req.model.as_deref())?;
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| s.cfg.model_name.clone());
    let messages: Vec<ChatMessage> = req
        .messages
        .into_iter()
        .map(|m| {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(p)) => p.into_iter().map(|p| p.text).collect(),
            };
            ChatMessage {
                role: m.role,
                content,
            }
        })
        .collect();
    let ids = s.chat.prompt_ids(s.codec.as_ref(), &messages)?;
    let mut params = req
        .knobs
        .to_params(&s.cfg.limits, 1.0, ids.len(), s.engine.max_context())?;
    params.stop.extend(s.chat.stop_strings());
    params.stop_token_ids = s
        .chat
        .stop_pieces()
        .iter()
        .filter_map(|p| s.codec.piece_id(p))
        .chain(s.cfg.stop_token_ids.iter().copied())
        .collect();
    let rx = submit(
        &s,
        GenRequest {
            prompt_ids: ids,
            params,
            adapter,
        },
    )
    .await?;
    let id = s.id("chatcmpl");
    let created = unix_now();
    if !req.stream {
        let o = collect(rx).await?;
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": o.text},
                         "logprobs": null, "finish_reason": finish_str(o.finish)}],
            "usage": usage(o.prompt_tokens, o.completion_tokens),
        }))
        .into_response());
    }
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), None);
    let rest = pieces(rx).map(move |p| match p {
        Piece::Delta(d) => chunk(json!({"content": d}), None),
        Piece::End(f, pt, ct) => {
            let mut c = chunk(json!({}), Some(finish_str(f)));
            c["usage"] = usage(pt, ct);
            c
        }
        Piece::Failed(e) => error_chunk(e),
    });
    Ok(sse(stream::once(async move { first }).chain(rest)))
}

/// `POST /v1/completions` (one prompt per request).
pub async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_body(body, s.cfg.max_body_bytes)?;
    let adapter = s.resolve_model(req.model.as_deref())?;
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| s.cfg.model_name.clone());
    let prompt = match req.prompt {
        PromptField::One(p) => p,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(_) => {
            return Err(ApiError::bad_request(
                "Send one prompt per request.",
                Some("prompt"),
            ))
        }
    };
    let ids = s.codec.encode(&prompt, true)?;
    let mut params = req
        .knobs
        .to_params(&s.cfg.limits, 1.0, ids.len(), s.engine.max_context())?;
    params.stop_token_ids = s.cfg.stop_token_ids.clone();
    let rx = submit(
        &s,
        GenRequest {
            prompt_ids: ids,
            params,
            adapter,
        },
    )
    .await?;
    let id = s.id("cmpl");
    let created = unix_now();
    if !req.stream {
        let o = collect(rx).await?;
        return Ok(Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": o.text, "logprobs": null, "finish_reason": finish_str(o.finish)}],
            "usage": usage(o.prompt_tokens, o.completion_tokens),
        }))
        .into_response());
    }
    let chunk = move |text: String, finish: Option<&str>| {
        json!({"id": id, "object": "text_completion", "created": created, "model": model,
               "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]})
    };
    let rest = pieces(rx).map(move |p| match p {
        Piece::Delta(d) => chunk(d, None),
        Piece::End(f, pt, ct) => {
            let mut c = chunk(String::new(), Some(finish_str(f)));
            c["usage"] = usage(pt, ct);
            c
        }
        Piece::Failed(e) => error_chunk(e),
    });
    Ok(sse(rest))
}
