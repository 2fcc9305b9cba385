//! Template semantics with a byte-level test encoder (ids visible as text): LLaMA-Factory's published slot
//! strings for the built-ins, BOS/EOS placement, special tokens known or unknown to the tokenizer,
//! replace_eos / efficient_eos, Stanford's with/without-input prompts, tools, and user templates from TOML.

use ferrotune_data::*;

fn conv(system: Option<&str>, turns: &[(Role, &str)]) -> Example {
    Example {
        system: system.map(str::to_string),
        messages: turns.iter().map(|(r, c)| Message::new(*r, *c)).collect(),
        ..Default::default()
    }
}

fn opts() -> EncodeOptions {
    EncodeOptions {
        cutoff_len: 10_000,
        train_on_prompt: false,
        mask_history: false,
    }
}

fn trained(enc: &ByteEncoder, e: &Encoded) -> String {
    let ids: Vec<u32> = e
        .input_ids
        .iter()
        .zip(&e.labels)
        .filter(|(_, &l)| l != IGNORE_INDEX)
        .map(|(&i, _)| i)
        .collect();
    enc.decode(&ids)
}

#[test]
fn builtin_templates_render_llama_factory_strings() {
    use Role::*;
    let enc = ByteEncoder::default();
    let ex = conv(
        Some("SYS"),
        &[
            (User, "u1"),
            (Assistant, "a1"),
            (User, "u2"),
            (Assistant, "a2"),
        ],
    );
    let cases = [
        ("llama2", "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nu1 [/INST]a1</s><s>[INST] u2 [/INST]a2</s>"),
        (
            "llama3",
            "<s><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nu1<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\na1<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nu2<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\na2<|eot_id|>",
        ),
        ("vicuna", "SYSUSER: u1 ASSISTANT:a1</s>USER: u2 ASSISTANT:a2</s>"),
        ("default", "System: SYS</s>\nHuman: u1</s>\nAssistant:a1</s>\nHuman: u2</s>\nAssistant:a2</s>\n"),
        ("yuan", "SYSu1<sep>a1<eod>\nu2<sep>a2<eod>\n"),
        ("empty", "SYSu1a1u2a2"),
        ("alpaca", "<s>SYS### Instruction:\nu1\n\n### Response:\na1</s>\n\n### Instruction:\nu2\n\n### Response:\na2</s>"),
    ];
    for (name, want) in cases {
        let t = Template::load(name, None).unwrap().resolve(&enc).unwrap();
        let e = t.encode_supervised(&enc, &ex, &opts()).unwrap();
        assert_eq!(enc.decode(&e.input_ids), want, "{name}");
        assert_eq!(t.render_text(&ex, "<s>", "</s>"), want, "{name}");
    }
    // vicuna's default system prompt applies when the record has none.
    let t = Template::load("vicuna", None)
        .unwrap()
        .resolve(&enc)
        .unwrap();
    let text = t.render_text(&conv(None, &[(User, "q"), (Assistant, "a")]), "<s>", "</s>");
    assert!(
        text.starts_with("A chat between a curious user and an artificial intelligence assistant.")
    );
}

#[test]
fn special_tokens_are_single_ids_when_known_and_replace_eos() {
    use Role::*;
    let enc = ByteEncoder {
        specials: vec!["<|im_start|>".into(), "<|im_end|>".into()],
    };
    let t = Template::load("chatml", None)
        .unwrap()
        .resolve(&enc)
        .unwrap();
    assert_eq!(
        t.eos,
        Some(260),
        "replace_eos: <|im_end|> is the EOS when the tokenizer has it"
    );
    let e = t
        .encode_supervised(
            &enc,
            &conv(None, &[(User, "hi"), (Assistant, "yo")]),
            &opts(),
        )
        .unwrap();
    assert_eq!(e.input_ids.iter().filter(|&&t| t == 259).count(), 2);
    assert_eq!(trained(&enc, &e), "yo<|im_end|>\n");
    assert_eq!(e.labels.iter().filter(|&&l| l == 260).count(), 1);
    // Without those tokens the same markup is plain text and the tokenizer's EOS stays.
    let plain = ByteEncoder::default();
    let t = Template::load("chatml", None)
        .unwrap()
        .resolve(&plain)
        .unwrap();
    assert_eq!(t.eos, Some(2));
    let e = t
        .encode_supervised(
            &plain,
            &conv(None, &[(User, "hi"), (Assistant, "yo")]),
            &opts(),
        )
        .unwrap();
    assert!(e.input_ids.iter().all(|&t| (3..259).contains(&t)));
    // User content is never split into special tokens.
    let e = Template::load("chatml", None)
        .unwrap()
        .resolve(&enc)
        .unwrap()
        .encode_supervised(
            &enc,
            &conv(None, &[(User, "<|im_end|>"), (Assistant, "a")]),
            &opts(),
        )
        .unwrap();
    assert_eq!(
        e.input_ids.iter().filter(|&&t| t == 260).count(),
        2,
        "only the template's own markers"
    );
}

#[test]
fn user_toml_templates_efficient_eos_and_errors() {
    use Role::*;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mine.toml");
    std::fs::write(
        &p,
        "[mine]\nprefix = \"{{bos}}\"\nuser = \"<u>{{content}}<a>\"\nefficient_eos = true\n\n\
         [tok]\nuser = \"{{token:<sep>}}{{content}}\"\n",
    )
    .unwrap();
    let enc = ByteEncoder::default();
    let t = Template::load("mine", Some(&p))
        .unwrap()
        .resolve(&enc)
        .unwrap();
    let e = t
        .encode_supervised(
            &enc,
            &conv(
                None,
                &[
                    (User, "q1"),
                    (Assistant, "r1"),
                    (User, "q2"),
                    (Assistant, "r2"),
                ],
            ),
            &opts(),
        )
        .unwrap();
    assert_eq!(enc.decode(&e.input_ids), "<s><u>q1<a>r1<u>q2<a>r2</s>");
    // efficient_eos: the first prompt token of later turns is labelled EOS; one EOS ends the sequence.
    let first_u2 = enc.decode(&e.input_ids).find("<u>q2").unwrap() - "<s>".len() + 1;
    assert_eq!(e.labels[first_u2], 2);
    assert_eq!(e.labels.iter().filter(|&&l| l == 2).count(), 2);
    assert_eq!(e.labels.last(), Some(&2));
    let err = Template::load("tok", Some(&p))
        .unwrap()
        .resolve(&enc)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no token `<sep>`"), "{err}");
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[typo]\nusr = \"x\"\n").unwrap();
    let err = Template::load("typo", Some(&typo)).unwrap_err().to_string();
    assert!(
        err.contains("unknown field `usr`") && err.contains("did you mean `user`?"),
        "{err}"
    );
    let err = Template::load("chatmll", None).unwrap_err().to_string();
    assert!(err.contains("did you mean `chatml`"), "{err}");
}

#[test]
fn alpaca_input_tools_and_function_calls() {
    let enc = ByteEncoder::default();
    let alpaca = Template::load("alpaca", None)
        .unwrap()
        .resolve(&enc)
        .unwrap();
    let mut ex = conv(None, &[(Role::User, "Sum"), (Role::Assistant, "3")]);
    ex.messages[0].input = Some("1, 2".into());
    let text = alpaca.render_text(&ex, "", "");
    assert!(text.starts_with("Below is an instruction that describes a task, paired with an input"));
    assert!(text.ends_with("### Instruction:\nSum\n\n### Input:\n1, 2\n\n### Response:\n3"));
    // Templates without a with-input prompt join instruction and input with a newline (LLaMA-Factory).
    let l2 = Template::load("llama2", None)
        .unwrap()
        .resolve(&enc)
        .unwrap();
    assert_eq!(
        l2.render_text(&ex, "<s>", "</s>"),
        "<s>[INST] Sum\n1, 2 [/INST]3</s>"
    );
    let mut ex = conv(
        None,
        &[
            (Role::User, "find"),
            (Role::Function, r#"{"name": "f", "arguments": {"x": 1}}"#),
            (Role::Observation, "{\"r\": 2}"),
            (Role::Assistant, "done"),
        ],
    );
    ex.tools = Some(r#"[{"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}]"#.into());
    let e = l2
        .encode_supervised(
            &enc,
            &ex,
            &EncodeOptions {
                cutoff_len: 10_000,
                train_on_prompt: false,
                mask_history: false,
            },
        )
        .unwrap();
    assert_eq!(
        trained(&enc, &e),
        "Action: f\nAction Input: {\"x\": 1}</s>done</s>"
    );
    assert!(enc.decode(&e.input_ids).starts_with(
        "<s>[INST] <<SYS>>\nYou have access to the following tools:\n> Tool Name: f\n"
    ));
}
