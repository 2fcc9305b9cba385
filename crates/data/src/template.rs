//! Chat templates as data. A [`Template`] is a set of slot strings (prefix, system, user, assistant, ...)
//! with `{{content}}`-style placeholders, loaded from TOML: the built-ins live in `templates.toml` (compiled
//! in) and users add their own in a file of the same shape. Rendering follows LLaMA-Factory's `_encode`:
//! message 0 gets the prefix and the system prompt (own segment, or fused into the first user turn through
//! `{{system}}` as `Llama2Template` does), each turn is formatted by its role's slot, and every slot is
//! tokenized separately. [`ResolvedTemplate`] binds a template to a tokenizer's special ids.

use crate::encoder::TextEncoder;
use crate::error::{DataError, Result};
use crate::format::{Example, Message, Role};
use crate::tools::{function_text, tools_text};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const BUILTIN: &str = include_str!("templates.toml");

/// A chat template (see `templates.toml` for the placeholder language).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Template {
    #[serde(skip_deserializing)]
    pub name: String,
    pub prefix: String,
    pub system: Option<String>,
    pub user: Option<String>,
    pub user_with_input: Option<String>,
    pub assistant: Option<String>,
    pub function: Option<String>,
    pub observation: Option<String>,
    /// Put before every user-like turn after the first (not trained).
    pub separator: String,
    pub default_system: String,
    pub default_system_with_input: Option<String>,
    pub stop_words: Vec<String>,
    pub special_tokens: Vec<String>,
    /// The EOS is not written after each response; the next turn's first label becomes EOS instead and
    /// one EOS ends the sequence (LLaMA-Factory's `efficient_eos`).
    pub efficient_eos: bool,
    /// `{{eos}}` means `stop_words[0]` when the tokenizer has that token.
    pub replace_eos: bool,
}

impl Template {
    /// Parses a TOML file of `[name]` tables into templates.
    pub fn parse_toml(text: &str, source: &str) -> Result<BTreeMap<String, Template>> {
        let mut map: BTreeMap<String, Template> =
            toml::from_str(text).map_err(|e| DataError::Template {
                name: source.to_string(),
                msg: with_suggestion(e.to_string()),
            })?;
        for (k, t) in map.iter_mut() {
            t.name = k.clone();
        }
        Ok(map)
    }

    /// All built-in templates by name.
    pub fn builtins() -> BTreeMap<String, Template> {
        Template::parse_toml(BUILTIN, "templates.toml").expect("built-in templates parse")
    }

    /// A template by name: from `extra` (a user TOML file) if it defines it, else a built-in.
    pub fn load(name: &str, extra: Option<&Path>) -> Result<Template> {
        let mut all = Template::builtins();
        if let Some(p) = extra {
            let text = std::fs::read_to_string(p).map_err(|e| DataError::io(p, e))?;
            all.extend(Template::parse_toml(&text, &p.display().to_string())?);
        }
        if let Some(t) = all.remove(name) {
            return Ok(t);
        }
        let names: Vec<&str> = all.keys().map(String::as_str).collect();
        Err(DataError::Template {
            name: name.into(),
            msg: format!(
                "unknown template{}; known: {}",
                ferrotune_core::config::closest(name, &names)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default(),
                names.join(", ")
            ),
        })
    }

    /// Binds the template to a tokenizer: parses the slots and looks up BOS/EOS and the special tokens.
    pub fn resolve(&self, enc: &dyn TextEncoder) -> Result<ResolvedTemplate> {
        let default_asst = if self.efficient_eos {
            "{{content}}"
        } else {
            "{{content}}{{eos}}"
        };
        let p = |s: Option<&str>, d: &str| parse_slot(s.unwrap_or(d), &self.name);
        let user = p(self.user.as_deref(), "{{content}}")?;
        let assistant = p(self.assistant.as_deref(), default_asst)?;
        let slots = Slots {
            prefix: parse_slot(&self.prefix, &self.name)?,
            system: p(self.system.as_deref(), "{{content}}")?,
            user_with_input: self
                .user_with_input
                .as_deref()
                .map(|s| parse_slot(s, &self.name))
                .transpose()?,
            function: match &self.function {
                Some(s) => parse_slot(s, &self.name)?,
                None => assistant.clone(),
            },
            observation: match &self.observation {
                Some(s) => parse_slot(s, &self.name)?,
                None => user.clone(),
            },
            user,
            assistant,
        };
        let mut known = Vec::new();
        for s in &self.special_tokens {
            if let Some(id) = enc.token_to_id(s) {
                known.push((s.clone(), id));
            }
        }
        for part in slots.all().flatten() {
            if let Part::Token(n) = part {
                let id = enc.token_to_id(n).ok_or_else(|| DataError::Template {
                    name: self.name.clone(),
                    msg: format!("the tokenizer has no token `{n}`"),
                })?;
                known.push((n.clone(), id));
            }
        }
        let mut eos = enc.eos_id();
        if self.replace_eos {
            if let Some(id) = self.stop_words.first().and_then(|w| enc.token_to_id(w)) {
                eos = Some(id);
            }
        }
        Ok(ResolvedTemplate {
            template: self.clone(),
            slots,
            bos: enc.bos_id(),
            eos,
            known,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Content,
    Input,
    System,
    Idx,
    Bos,
    Eos,
    Token(String),
}

fn parse_slot(s: &str, name: &str) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Lit(rest[..start].to_string()));
        }
        let end = rest[start..]
            .find("}}")
            .ok_or_else(|| DataError::Template {
                name: name.into(),
                msg: format!("unclosed `{{{{` in slot {s:?}"),
            })?
            + start;
        let var = &rest[start + 2..end];
        parts.push(match var {
            "content" => Part::Content,
            "input" => Part::Input,
            "system" => Part::System,
            "idx" => Part::Idx,
            "bos" => Part::Bos,
            "eos" => Part::Eos,
            v if v.starts_with("token:") => Part::Token(v[6..].to_string()),
            v => {
                return Err(DataError::Template {
                    name: name.into(),
                    msg: format!("unknown placeholder `{{{{{v}}}}}` in slot {s:?}"),
                })
            }
        });
        rest = &rest[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    Ok(parts)
}

#[derive(Debug, Clone)]
struct Slots {
    prefix: Vec<Part>,
    system: Vec<Part>,
    user: Vec<Part>,
    user_with_input: Option<Vec<Part>>,
    assistant: Vec<Part>,
    function: Vec<Part>,
    observation: Vec<Part>,
}

impl Slots {
    fn all(&self) -> impl Iterator<Item = &Vec<Part>> {
        [
            &self.prefix,
            &self.system,
            &self.user,
            &self.assistant,
            &self.function,
            &self.observation,
        ]
        .into_iter()
        .chain(self.user_with_input.as_ref())
    }
}

/// A rendered piece of a turn: text to tokenize, or one special token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Text(String),
    Bos,
    Eos,
    /// A named special token the tokenizer has.
    Token(String, u32),
}

/// A template bound to a tokenizer's special ids.
#[derive(Debug, Clone)]
pub struct ResolvedTemplate {
    pub template: Template,
    slots: Slots,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    known: Vec<(String, u32)>,
}

struct Vars<'a> {
    content: &'a str,
    input: &'a str,
    system: Vec<Chunk>,
    idx: usize,
}

impl ResolvedTemplate {
    /// Splits template literal text at the special tokens the tokenizer has.
    fn push_lit(&self, out: &mut Vec<Chunk>, mut s: &str) {
        while !s.is_empty() {
            let hit = self
                .known
                .iter()
                .filter_map(|(t, id)| s.find(t.as_str()).map(|p| (p, t, *id)))
                .min_by_key(|(p, t, _)| (*p, usize::MAX - t.len()));
            match hit {
                Some((p, t, id)) => {
                    push_text(out, &s[..p]);
                    out.push(Chunk::Token(t.clone(), id));
                    s = &s[p + t.len()..];
                }
                None => {
                    push_text(out, s);
                    s = "";
                }
            }
        }
    }

    fn render_slot(&self, parts: &[Part], v: &Vars, out: &mut Vec<Chunk>) {
        for part in parts {
            match part {
                Part::Lit(s) => self.push_lit(out, s),
                Part::Content => push_text(out, v.content),
                Part::Input => push_text(out, v.input),
                Part::Idx => push_text(out, &v.idx.to_string()),
                Part::System => {
                    for c in &v.system {
                        match c {
                            Chunk::Text(t) => push_text(out, t),
                            c => out.push(c.clone()),
                        }
                    }
                }
                Part::Bos => out.push(Chunk::Bos),
                Part::Eos => out.push(Chunk::Eos),
                Part::Token(n) => {
                    let id = self.known.iter().find(|(t, _)| t == n).map(|(_, id)| *id);
                    out.push(Chunk::Token(n.clone(), id.unwrap_or(0)));
                }
            }
        }
    }

    /// Renders each turn of `messages` into chunks (turn 0 carries the prefix and the system prompt).
    /// Chunks of different slots are never merged, so each slot is tokenized on its own.
    pub fn render(&self, ex: &Example, messages: &[Message]) -> Vec<Vec<Chunk>> {
        let t = &self.template;
        let with_input =
            self.slots.user_with_input.is_some() && messages.iter().any(|m| m.input.is_some());
        let mut system = match &ex.system {
            Some(s) => s.clone(),
            None if with_input => t
                .default_system_with_input
                .clone()
                .unwrap_or_else(|| t.default_system.clone()),
            None => t.default_system.clone(),
        };
        if let Some(tools) = &ex.tools {
            system.push_str(&tools_text(tools));
        }
        let fuses = self.slots.user.contains(&Part::System);
        let mut turns = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let mut out = Vec::new();
            let mut sys_chunks = Vec::new();
            if i == 0 {
                self.render_slot(
                    &self.slots.prefix,
                    &Vars {
                        content: "",
                        input: "",
                        system: vec![],
                        idx: 0,
                    },
                    &mut out,
                );
                if !system.is_empty() {
                    let v = Vars {
                        content: &system,
                        input: "",
                        system: vec![],
                        idx: 0,
                    };
                    self.render_slot(&self.slots.system, &v, &mut sys_chunks);
                    if !fuses {
                        out.append(&mut sys_chunks);
                    }
                }
            }
            let joined;
            let (slot, content): (&[Part], &str) = match m.role {
                Role::User | Role::System => match (&m.input, &self.slots.user_with_input) {
                    (Some(_), Some(s)) => (s, &m.content),
                    (Some(inp), None) => {
                        joined = format!("{}\n{}", m.content, inp);
                        (&self.slots.user, &joined)
                    }
                    (None, _) => (&self.slots.user, &m.content),
                },
                Role::Observation => (&self.slots.observation, &m.content),
                Role::Assistant => (&self.slots.assistant, &m.content),
                Role::Function => {
                    joined = function_text(&m.content);
                    (&self.slots.function, &joined)
                }
            };
            let mut turn = Vec::new();
            if i > 0 && !m.role.is_assistant_like() {
                push_text(&mut turn, &t.separator);
            }
            let v = Vars {
                content,
                input: m.input.as_deref().unwrap_or(""),
                system: sys_chunks,
                idx: i / 2,
            };
            self.render_slot(slot, &v, &mut turn);
            // The turn's own slot is one segment: appended, never merged with the prefix/system segments.
            out.extend(turn);
            turns.push(out);
        }
        turns
    }

    /// The token ids of each turn.
    pub fn encode_turns(
        &self,
        enc: &dyn TextEncoder,
        ex: &Example,
        messages: &[Message],
    ) -> Result<Vec<Vec<u32>>> {
        self.render(ex, messages)
            .iter()
            .map(|chunks| self.chunks_to_ids(enc, chunks))
            .collect()
    }

    pub fn chunks_to_ids(&self, enc: &dyn TextEncoder, chunks: &[Chunk]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for c in chunks {
            match c {
                Chunk::Text(s) => ids.extend(enc.encode(s).map_err(DataError::Tokenizer)?),
                Chunk::Bos => ids.extend(self.bos),
                Chunk::Eos => ids.extend(self.eos),
                Chunk::Token(_, id) => ids.push(*id),
            }
        }
        Ok(ids)
    }

    /// The conversation as one string, BOS/EOS shown as `bos` / `eos` (for inspection and oracle checks).
    pub fn render_text(&self, ex: &Example, bos: &str, eos: &str) -> String {
        let mut s = String::new();
        for c in self.render(ex, &ex.messages).into_iter().flatten() {
            match c {
                Chunk::Text(t) => s.push_str(&t),
                Chunk::Bos => s.push_str(bos),
                Chunk::Eos => s.push_str(eos),
                Chunk::Token(t, _) => s.push_str(&t),
            }
        }
        s
    }
}

/// Adds "did you mean `x`?" to an unknown-key error.
fn with_suggestion(msg: String) -> String {
    const KEYS: &[&str] = &[
        "prefix",
        "system",
        "user",
        "user_with_input",
        "assistant",
        "function",
        "observation",
        "separator",
        "default_system",
        "default_system_with_input",
        "stop_words",
        "special_tokens",
        "efficient_eos",
        "replace_eos",
    ];
    let unknown = msg
        .split("unknown field `")
        .nth(1)
        .and_then(|r| r.split('`').next());
    match unknown.and_then(|u| ferrotune_core::config::closest(u, KEYS)) {
        Some(k) => format!("{}\n  did you mean `{k}`?", msg.trim_end()),
        None => msg,
    }
}

fn push_text(out: &mut Vec<Chunk>, s: &str) {
    if s.is_empty() {
        return;
    }
    if let Some(Chunk::Text(last)) = out.last_mut() {
        last.push_str(s);
    } else {
        out.push(Chunk::Text(s.to_string()));
    }
}
