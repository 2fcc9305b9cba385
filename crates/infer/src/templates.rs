//! Chat prompts from `ferrotune-data`'s templates (alpaca, llama2, llama3, chatml, vicuna, default, yuan,
//! empty, or a user TOML file): the same slots and per-slot tokenization as training, so the model sees
//! at inference exactly the prompt layout it was fine-tuned on.

use crate::chat::{validate_messages, ChatFormatter, ChatMessage};
use crate::codec::TextCodec;
use crate::error::{InferError, Result};
use ferrotune_data::format::{Example, Message, Role};
use ferrotune_data::template::{ResolvedTemplate, Template};
use ferrotune_tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;

/// A data-crate template bound to the model's tokenizer.
pub struct DataTemplate {
    resolved: ResolvedTemplate,
    tokenizer: Arc<Tokenizer>,
}

impl std::fmt::Debug for DataTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataTemplate({})", self.resolved.template.name)
    }
}

impl DataTemplate {
    /// Template `name` (from `extra` when that TOML file defines it, else a built-in) for `tokenizer`.
    pub fn load(name: &str, extra: Option<&Path>, tokenizer: Arc<Tokenizer>) -> Result<Self> {
        let err = |e: &dyn std::fmt::Display| InferError::Load {
            what: format!("chat template `{name}`"),
            reason: e.to_string(),
        };
        let template = Template::load(name, extra).map_err(|e| err(&e))?;
        let resolved = template.resolve(tokenizer.as_ref()).map_err(|e| err(&e))?;
        Ok(DataTemplate {
            resolved,
            tokenizer,
        })
    }
}

impl ChatFormatter for DataTemplate {
    fn prompt_ids(&self, _codec: &dyn TextCodec, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        validate_messages(messages)?;
        let (system, turns) = match messages.first() {
            Some(m) if m.role == "system" => (Some(m.content.clone()), &messages[1..]),
            _ => (None, messages),
        };
        let msgs: Vec<Message> = turns
            .iter()
            .map(|m| {
                let role = if m.role == "user" {
                    Role::User
                } else {
                    Role::Assistant
                };
                Message::new(role, m.content.clone())
            })
            .collect();
        let ex = Example {
            system,
            messages: msgs.clone(),
            ..Default::default()
        };
        let turns = self
            .resolved
            .encode_turns(self.tokenizer.as_ref(), &ex, &msgs)
            .map_err(|e| InferError::Tokenizer(e.to_string()))?;
        Ok(turns.concat())
    }

    fn stop_strings(&self) -> Vec<String> {
        self.resolved.template.stop_words.clone()
    }

    fn stop_pieces(&self) -> Vec<String> {
        self.resolved.template.stop_words.clone()
    }

    fn name(&self) -> &str {
        &self.resolved.template.name
    }
}
