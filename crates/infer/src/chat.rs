//! Chat prompts: messages (system / user / assistant) rendered into the prompt text a model was trained on.
//!
//! The engine only needs [`ChatFormatter`]; `ferrotune-data`'s templates (alpaca, llama2, llama3, chatml,
//! vicuna, ...) implement it in `templates.rs`. [`PlainChat`] is a template-free fallback used in tests.

use crate::codec::TextCodec;
use crate::error::{InferError, Result};
use serde::{Deserialize, Serialize};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// Turns a conversation (ending with a user turn) into the prompt ids for the assistant's next answer.
pub trait ChatFormatter: Send + Sync {
    /// The prompt ids (BOS included where the template puts it); the answer is generated right after.
    fn prompt_ids(&self, codec: &dyn TextCodec, messages: &[ChatMessage]) -> Result<Vec<u32>>;
    /// Strings that end an answer (e.g. the template's next-turn marker).
    fn stop_strings(&self) -> Vec<String> {
        Vec::new()
    }
    /// Pieces whose ids end an answer (e.g. `<|eot_id|>`), looked up in the vocabulary.
    fn stop_pieces(&self) -> Vec<String> {
        Vec::new()
    }
    /// Template name (for logs and `/health`).
    fn name(&self) -> &str;
}

/// Checks roles and order: optional system first, then user/assistant alternating, ending with user.
pub fn validate_messages(messages: &[ChatMessage]) -> Result<()> {
    let body = match messages.first() {
        Some(m) if m.role == "system" => &messages[1..],
        _ => messages,
    };
    if body.is_empty() {
        return Err(InferError::param(
            "messages",
            "need at least one user message",
        ));
    }
    for (i, m) in body.iter().enumerate() {
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        if m.role != want {
            return Err(InferError::param(
                "messages",
                format!("message {} has role `{}`, expected `{want}` (optional system first, then user/assistant alternating)", i + messages.len() - body.len(), m.role),
            ));
        }
    }
    if body.len() % 2 == 0 {
        return Err(InferError::param(
            "messages",
            "the last message must be from the user",
        ));
    }
    Ok(())
}

/// `"<system>\n\nHuman: ...\nAssistant: ..."`: a template-free fallback.
#[derive(Debug, Clone, Default)]
pub struct PlainChat;

impl PlainChat {
    /// The prompt text.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        validate_messages(messages)?;
        let mut out = String::new();
        for m in messages {
            match m.role.as_str() {
                "system" => out.push_str(&format!("{}\n\n", m.content)),
                "user" => out.push_str(&format!("Human: {}\nAssistant:", m.content)),
                _ => out.push_str(&format!(" {}\n", m.content)),
            }
        }
        Ok(out)
    }
}

impl ChatFormatter for PlainChat {
    fn prompt_ids(&self, codec: &dyn TextCodec, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        codec.encode(&self.render(messages)?, true)
    }

    fn stop_strings(&self) -> Vec<String> {
        vec!["\nHuman:".to_string()]
    }

    fn name(&self) -> &str {
        "plain"
    }
}

/// The seed's `/stream` history (`[[user, assistant], ...]`) plus the new prompt as messages.
pub fn history_to_messages(
    system: Option<&str>,
    history: &[(String, String)],
    prompt: &str,
) -> Vec<ChatMessage> {
    let mut m: Vec<ChatMessage> = system
        .filter(|s| !s.is_empty())
        .map(|s| ChatMessage::new("system", s))
        .into_iter()
        .collect();
    for (u, a) in history {
        m.push(ChatMessage::new("user", u.clone()));
        m.push(ChatMessage::new("assistant", a.clone()));
    }
    m.push(ChatMessage::new("user", prompt));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_chat_renders_and_checks_order() {
        let m = history_to_messages(Some("Be brief."), &[("hi".into(), "hello".into())], "bye");
        assert_eq!(
            PlainChat.render(&m).unwrap(),
            "Be brief.\n\nHuman: hi\nAssistant: hello\nHuman: bye\nAssistant:"
        );
        let bad = vec![ChatMessage::new("assistant", "x")];
        assert!(PlainChat
            .render(&bad)
            .unwrap_err()
            .to_string()
            .contains("messages"));
    }
}
