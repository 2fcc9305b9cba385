//! Dataset formats → one in-memory shape, [`Example`]: alpaca (instruction/input/output, optional system and
//! history), sharegpt (from/value conversations with human/gpt/system/function_call/observation roles and
//! tools), OpenAI messages (role/content, a sharegpt special case), preference pairs (chosen/rejected) and
//! plain text for pre-training. The conversion follows LLaMA-Factory's converters: user-like turns (user,
//! observation) sit at even positions and assistant-like turns (assistant, function call) at odd ones.

use crate::error::{DataError, Result};
use crate::registry::{DatasetAttr, Formatting, Tags};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    System,
    Function,
    Observation,
}

impl Role {
    /// Assistant-like turns (assistant text, function calls) are the ones trained.
    pub fn is_assistant_like(self) -> bool {
        matches!(self, Role::Assistant | Role::Function)
    }
}

/// One turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Alpaca's `input` for the final instruction, kept apart so templates with a dedicated with-input
    /// prompt (Stanford's) can use it; other templates join it to the content with `\n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            input: None,
        }
    }
}

/// One record in the common shape.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Example {
    pub system: Option<String>,
    pub tools: Option<String>,
    /// Alternating user-like / assistant-like turns. For SFT the last one is the response.
    pub messages: Vec<Message>,
    /// Preference pairs: the prompt is `messages`, the two candidate responses are these.
    pub chosen: Option<Message>,
    pub rejected: Option<Message>,
    pub kto_tag: Option<bool>,
}

impl Example {
    /// Pre-training text: the single user turn's content (alpaca with only a prompt column, or `.txt`).
    pub fn text(&self) -> Option<&str> {
        match self.messages.as_slice() {
            [m] => Some(&m.content),
            _ => None,
        }
    }
}

/// What a record is needed for: supervised responses or plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Supervised fine-tuning: prompts are masked, responses trained.
    #[default]
    Sft,
    /// Pre-training: every token is trained.
    Pt,
}

struct Ctx<'a> {
    path: &'a Path,
    index: u64,
}

impl Ctx<'_> {
    fn err(&self, field: Option<&str>, msg: impl Into<String>) -> DataError {
        DataError::record(self.path, self.index, field, msg)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string field: `Ok(None)` when absent or null, an error when of another type.
fn opt_str(obj: &Value, key: &str, cx: &Ctx) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(cx.err(Some(key), format!("expected a string, found {}", kind(v)))),
    }
}

fn req_str(obj: &Value, key: &str, cx: &Ctx) -> Result<String> {
    match opt_str(obj, key, cx)? {
        None => Err(cx.err(Some(key), "missing required field")),
        Some(s) if s.trim().is_empty() => Err(cx.err(Some(key), "required field is empty")),
        Some(s) => Ok(s),
    }
}

/// Message content: a string, or a list of `{"type": "text", "value"|"text": ...}` parts (joined).
fn content_of(v: Option<&Value>, field: &str, cx: &Ctx) -> Result<String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match p.get("value").or_else(|| p.get("text")) {
                    Some(Value::String(s)) => out.push_str(s),
                    _ => return Err(cx.err(Some(field), "content part without a text `value`")),
                }
            }
            Ok(out)
        }
        None | Some(Value::Null) => Err(cx.err(Some(field), "missing message content")),
        Some(v) => Err(cx.err(Some(field), format!("expected a string, found {}", kind(v)))),
    }
}

/// Converts one parsed record of a dataset with registry entry `attr`.
pub fn convert(
    v: &Value,
    attr: &DatasetAttr,
    stage: Stage,
    path: &Path,
    index: u64,
) -> Result<Example> {
    let cx = Ctx { path, index };
    if !v.is_object() {
        return Err(cx.err(None, format!("expected a JSON object, found {}", kind(v))));
    }
    match attr.formatting {
        Formatting::Alpaca => convert_alpaca(v, attr, stage, &cx),
        Formatting::Sharegpt => convert_sharegpt(v, attr, stage, &cx),
    }
}

fn convert_alpaca(v: &Value, attr: &DatasetAttr, stage: Stage, cx: &Ctx) -> Result<Example> {
    let c = &attr.columns;
    let mut messages = Vec::new();
    if let Some(h) = &c.history {
        match v.get(h) {
            None | Some(Value::Null) => {}
            Some(Value::Array(turns)) => {
                for (i, t) in turns.iter().enumerate() {
                    let pair = t.as_array().filter(|p| p.len() == 2).ok_or_else(|| {
                        cx.err(
                            Some(h),
                            format!("history[{i}] must be a [prompt, response] pair"),
                        )
                    })?;
                    let (Some(q), Some(a)) = (pair[0].as_str(), pair[1].as_str()) else {
                        return Err(cx.err(Some(h), format!("history[{i}] must hold two strings")));
                    };
                    messages.push(Message::new(Role::User, q));
                    messages.push(Message::new(Role::Assistant, a));
                }
            }
            Some(x) => return Err(cx.err(Some(h), format!("expected an array, found {}", kind(x)))),
        }
    }
    let instruction = req_str(v, &c.prompt, cx)?;
    let input = opt_str(v, &c.query, cx)?.filter(|s| !s.is_empty());
    messages.push(Message {
        role: Role::User,
        content: instruction,
        input,
    });
    let system = match &c.system {
        Some(k) => opt_str(v, k, cx)?.filter(|s| !s.is_empty()),
        None => None,
    };
    let tools = match &c.tools {
        Some(k) => opt_str(v, k, cx)?.filter(|s| !s.is_empty()),
        None => None,
    };
    let mut ex = Example {
        system,
        tools,
        messages,
        ..Default::default()
    };
    if attr.ranking {
        let (ck, rk) = preference_keys(attr, cx)?;
        ex.chosen = Some(Message::new(Role::Assistant, req_str(v, &ck, cx)?));
        ex.rejected = Some(Message::new(Role::Assistant, req_str(v, &rk, cx)?));
        return Ok(ex);
    }
    if let Some(k) = &c.kto_tag {
        ex.kto_tag = v.get(k).and_then(Value::as_bool);
    }
    match stage {
        Stage::Pt => {
            if let Some(out) = opt_str(v, &c.response, cx)?.filter(|s| !s.is_empty()) {
                ex.messages.push(Message::new(Role::Assistant, out));
            }
        }
        Stage::Sft => {
            let out = req_str(v, &c.response, cx)?;
            ex.messages.push(Message::new(Role::Assistant, out));
        }
    }
    Ok(ex)
}

fn preference_keys(attr: &DatasetAttr, cx: &Ctx) -> Result<(String, String)> {
    match (&attr.columns.chosen, &attr.columns.rejected) {
        (Some(c), Some(r)) => Ok((c.clone(), r.clone())),
        _ => Err(cx.err(
            None,
            "ranking dataset without `chosen`/`rejected` columns in its registry entry",
        )),
    }
}

fn role_of(tag: &str, tags: &Tags) -> Option<Role> {
    if tag == tags.user_tag {
        Some(Role::User)
    } else if tag == tags.assistant_tag {
        Some(Role::Assistant)
    } else if tag == tags.observation_tag {
        Some(Role::Observation)
    } else if tag == tags.function_tag {
        Some(Role::Function)
    } else if tag == tags.system_tag {
        Some(Role::System)
    } else {
        None
    }
}

fn parse_message(m: &Value, tags: &Tags, field: &str, cx: &Ctx) -> Result<Message> {
    let role_tag = match m.get(&tags.role_tag) {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(cx.err(
                Some(field),
                format!("message without a string `{}`", tags.role_tag),
            ))
        }
    };
    let role = role_of(&role_tag, tags)
        .ok_or_else(|| cx.err(Some(field), format!("unknown role `{role_tag}`")))?;
    let content = content_of(m.get(&tags.content_tag), field, cx)?;
    Ok(Message::new(role, content))
}

fn convert_sharegpt(v: &Value, attr: &DatasetAttr, stage: Stage, cx: &Ctx) -> Result<Example> {
    let c = &attr.columns;
    let key = c.messages.as_str();
    let list = match v.get(key) {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(cx.err(Some(key), "missing required field")),
        Some(x) => return Err(cx.err(Some(key), format!("expected an array, found {}", kind(x)))),
    };
    let mut msgs = list
        .iter()
        .enumerate()
        .map(|(i, m)| parse_message(m, &attr.tags, &format!("{key}[{i}]"), cx))
        .collect::<Result<Vec<_>>>()?;
    let mut system = match &c.system {
        Some(k) => opt_str(v, k, cx)?,
        None => None,
    };
    if msgs.first().map(|m| m.role) == Some(Role::System) {
        system = Some(msgs.remove(0).content);
    }
    for (i, m) in msgs.iter().enumerate() {
        let ok = if i % 2 == 0 {
            matches!(m.role, Role::User | Role::Observation)
        } else {
            m.role.is_assistant_like()
        };
        if !ok {
            return Err(cx.err(
                Some(key),
                format!(
                    "turn {i} has role {:?}: user/observation turns must be at even positions and assistant/function turns at odd ones",
                    m.role
                ),
            ));
        }
    }
    let tools = match &c.tools {
        Some(k) => match v.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
            Some(x) => Some(x.to_string()),
        },
        None => None,
    };
    let mut ex = Example {
        system: system.filter(|s| !s.is_empty()),
        tools,
        messages: msgs,
        ..Default::default()
    };
    if attr.ranking {
        if ex.messages.len().is_multiple_of(2) {
            return Err(cx.err(Some(key), "a preference prompt must end with a user turn"));
        }
        let (ck, rk) = preference_keys(attr, cx)?;
        for (k, slot) in [(ck, &mut ex.chosen), (rk, &mut ex.rejected)] {
            let m = v
                .get(&k)
                .ok_or_else(|| cx.err(Some(&k), "missing required field"))?;
            let m = parse_message(m, &attr.tags, &k, cx)?;
            if !m.role.is_assistant_like() {
                return Err(cx.err(Some(&k), "must be an assistant message"));
            }
            *slot = Some(m);
        }
        return Ok(ex);
    }
    if let Some(k) = &c.kto_tag {
        ex.kto_tag = v.get(k).and_then(Value::as_bool);
    }
    if stage == Stage::Sft {
        if ex.messages.is_empty() || !ex.messages.len().is_multiple_of(2) {
            return Err(cx.err(
                Some(key),
                format!(
                    "{} turns: a conversation must end with an assistant turn",
                    ex.messages.len()
                ),
            ));
        }
        if let Some((i, _)) = ex
            .messages
            .iter()
            .enumerate()
            .find(|(_, m)| m.role.is_assistant_like() && m.content.trim().is_empty())
        {
            return Err(cx.err(Some(&format!("{key}[{i}]")), "empty assistant turn"));
        }
    }
    Ok(ex)
}

/// Guesses the registry entry for a bare data file from its first record: `conversations` → sharegpt,
/// `messages` with role/content → OpenAI, `chosen`/`rejected` → preference, `text` only → plain text,
/// else alpaca.
pub fn infer_attr(first: &Value) -> DatasetAttr {
    let mut attr = DatasetAttr::default();
    let has = |k: &str| first.get(k).is_some();
    if has("conversations") || has("messages") {
        attr.formatting = Formatting::Sharegpt;
        if has("messages") && !has("conversations") {
            attr.columns.messages = "messages".into();
            let role_style = first["messages"]
                .as_array()
                .and_then(|a| a.first())
                .is_some_and(|m| m.get("role").is_some());
            if role_style {
                attr.tags = Tags::openai();
            }
        }
        for k in ["system", "tools"] {
            if has(k) {
                let v = Some(k.to_string());
                if k == "system" {
                    attr.columns.system = v;
                } else {
                    attr.columns.tools = v;
                }
            }
        }
    } else if has("text") && !has("instruction") {
        attr.columns.prompt = "text".into();
    } else {
        if has("system") {
            attr.columns.system = Some("system".into());
        }
        if has("history") {
            attr.columns.history = Some("history".into());
        }
    }
    if has("chosen") && has("rejected") {
        attr.ranking = true;
        attr.columns.chosen = Some("chosen".into());
        attr.columns.rejected = Some("rejected".into());
    }
    attr
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p() -> &'static Path {
        Path::new("d.json")
    }

    #[test]
    fn alpaca_with_history_system_and_input() {
        let mut attr = DatasetAttr::default();
        attr.columns.history = Some("history".into());
        attr.columns.system = Some("system".into());
        let v = json!({"instruction": "q2", "input": "ctx", "output": "a2", "system": "S",
                       "history": [["q1", "a1"]]});
        let ex = convert(&v, &attr, Stage::Sft, p(), 0).unwrap();
        let roles: Vec<Role> = ex.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::User, Role::Assistant, Role::User, Role::Assistant]
        );
        assert_eq!(ex.messages[2].input.as_deref(), Some("ctx"));
        assert_eq!(ex.system.as_deref(), Some("S"));
    }

    #[test]
    fn bad_records_name_index_and_field() {
        let attr = DatasetAttr::default();
        let e = convert(&json!({"instruction": "q"}), &attr, Stage::Sft, p(), 7).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.json: record 7, field `output`: missing required field"
        );
        let e = convert(
            &json!({"instruction": "q", "output": " "}),
            &attr,
            Stage::Sft,
            p(),
            1,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("field `output`: required field is empty"),
            "{e}"
        );
        let e = convert(
            &json!({"instruction": 3, "output": "a"}),
            &attr,
            Stage::Sft,
            p(),
            2,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("field `instruction`: expected a string, found a number"),
            "{e}"
        );
        assert!(e.is_bad_record());
    }

    #[test]
    fn sharegpt_roles_system_and_openai() {
        let mut attr = DatasetAttr {
            formatting: Formatting::Sharegpt,
            ..Default::default()
        };
        let v = json!({"conversations": [
            {"from": "system", "value": "S"}, {"from": "human", "value": "h"},
            {"from": "function_call", "value": "{}"}, {"from": "observation", "value": "o"},
            {"from": "gpt", "value": "g"}]});
        let ex = convert(&v, &attr, Stage::Sft, p(), 0).unwrap();
        assert_eq!(ex.system.as_deref(), Some("S"));
        assert_eq!(ex.messages.len(), 4);
        let bad = json!({"conversations": [{"from": "gpt", "value": "g"}, {"from": "human", "value": "h"}]});
        assert!(convert(&bad, &attr, Stage::Sft, p(), 3)
            .unwrap_err()
            .to_string()
            .contains("record 3"));
        attr.columns.messages = "messages".into();
        attr.tags = Tags::openai();
        let v = json!({"messages": [{"role": "user", "content": [{"type": "text", "value": "hi"}]},
                                    {"role": "assistant", "content": "yo"}]});
        let ex = convert(&v, &attr, Stage::Sft, p(), 0).unwrap();
        assert_eq!(ex.messages[0].content, "hi");
        assert_eq!(infer_attr(&v).tags, Tags::openai());
    }
}
