//! Tool descriptions and function calls as text, in LLaMA-Factory's `default` tool format: the tools JSON
//! becomes a "You have access to the following tools" block appended to the system prompt, and a function
//! call `{"name": ..., "arguments": ...}` becomes `Action: name\nAction Input: arguments`.

use serde_json::value::RawValue;
use serde_json::Value;

/// The system-prompt block describing `tools` (a JSON list of function schemas). Text that is not a JSON
/// list is used as it is.
pub fn tools_text(tools: &str) -> String {
    let Ok(Value::Array(list)) = serde_json::from_str::<Value>(tools) else {
        return tools.to_string();
    };
    let mut text = String::new();
    let mut names = Vec::new();
    for tool in &list {
        let tool = match tool.get("type").and_then(Value::as_str) {
            Some("function") => tool.get("function").unwrap_or(tool),
            _ => tool,
        };
        let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
        let desc = tool
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut params = String::new();
        let required: Vec<&str> = tool
            .pointer("/parameters/required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = tool
            .pointer("/parameters/properties")
            .and_then(Value::as_object)
        {
            for (pname, p) in props {
                let req = if required.contains(&pname.as_str()) {
                    ", required"
                } else {
                    ""
                };
                let enm = p
                    .get("enum")
                    .and_then(Value::as_array)
                    .map(|e| {
                        let items: Vec<String> = e
                            .iter()
                            .map(|v| {
                                v.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string())
                            })
                            .collect();
                        format!(", should be one of [{}]", items.join(", "))
                    })
                    .unwrap_or_default();
                let items = p
                    .get("items")
                    .map(|i| {
                        format!(
                            ", where each item should be {}",
                            i.get("type").and_then(Value::as_str).unwrap_or("")
                        )
                    })
                    .unwrap_or_default();
                params.push_str(&format!(
                    "  - {pname} ({}{req}): {}{enm}{items}\n",
                    p.get("type").and_then(Value::as_str).unwrap_or(""),
                    p.get("description").and_then(Value::as_str).unwrap_or("")
                ));
            }
        }
        text.push_str(&format!(
            "> Tool Name: {name}\nTool Description: {desc}\nTool Args:\n{params}\n"
        ));
        names.push(name.to_string());
    }
    format!(
        "You have access to the following tools:\n{text}Use the following format if using a tool:\n```\n\
         Action: tool name (one of [{}])\nAction Input: the input to the tool, in a JSON format representing the kwargs \
         (e.g. ```{{\"input\": \"hello world\", \"num_beams\": 5}}```)\n```\n",
        names.join(", ")
    )
}

#[derive(serde::Deserialize)]
struct Call<'a> {
    name: String,
    #[serde(borrow)]
    arguments: &'a RawValue,
}

/// `Action: name\nAction Input: args` for one call or a list of calls; the arguments keep their original
/// JSON text. Content that is not a call is returned as it is.
pub fn function_text(content: &str) -> String {
    let one = |c: &Call| {
        let args = c.arguments.get();
        // Arguments given as a JSON string holding JSON are shown as that inner text.
        let args = serde_json::from_str::<String>(args).unwrap_or_else(|_| args.to_string());
        format!("Action: {}\nAction Input: {}", c.name, args)
    };
    if let Ok(c) = serde_json::from_str::<Call>(content) {
        return one(&c);
    }
    if let Ok(cs) = serde_json::from_str::<Vec<Call>>(content) {
        return cs.iter().map(one).collect::<Vec<_>>().join("\n");
    }
    content.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_call_and_tools_render() {
        let c = r#"{"name": "search", "arguments": {"q": ["a", "b"]}}"#;
        assert_eq!(
            function_text(c),
            "Action: search\nAction Input: {\"q\": [\"a\", \"b\"]}"
        );
        assert_eq!(function_text("plain"), "plain");
        let t = tools_text(
            r#"[{"name": "search", "description": "Find", "parameters": {"type": "object",
               "properties": {"q": {"type": "string", "description": "query"}}, "required": ["q"]}}]"#,
        );
        assert!(t.contains("> Tool Name: search\nTool Description: Find\nTool Args:\n  - q (string, required): query\n"));
        assert!(t.contains("(one of [search])"));
    }
}
