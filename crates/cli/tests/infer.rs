//! End-to-end tests of `ferrotune generate` and `ferrotune serve` on the real stories260K model (converted
//! from llama2.c's checkpoint by the oracle script): greedy output against llama2.c's reference forward, and
//! the server against the official `openai` Python client and transformers' greedy completion.

use ferrotune_core::testkit::{fixture_or_skip, run_oracle};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferrotune")
}

/// Converts stories260K into `dir/hf` and returns (hf dir, oracle JSON with the reference ids and text).
fn stories(test: &str, dir: &Path, n: usize) -> Option<(PathBuf, Value)> {
    let bin = fixture_or_skip(test, "models/stories260K/stories260K.bin")?;
    let hf = dir.join("hf");
    let out = run_oracle(
        "infer_stories260k.py",
        &[
            bin.parent().unwrap().to_str().unwrap(),
            hf.to_str().unwrap(),
            &n.to_string(),
        ],
    );
    Some((hf, serde_json::from_str(&out).unwrap()))
}

#[test]
fn stories260k_greedy_200_matches_llama2c_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((hf, reference)) = stories(
        "stories260k_greedy_200_matches_llama2c_reference",
        tmp.path(),
        200,
    ) else {
        return;
    };
    let out = Command::new(bin())
        .args([
            "generate",
            "--model",
            hf.to_str().unwrap(),
            "--prompt",
            "",
            "--json",
            "--device",
            "cpu",
        ])
        .args(["--max-new-tokens", "200", "--temperature", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want_ids: Vec<u64> = reference["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let got_ids: Vec<u64> = got["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // llama2.c stops when it samples BOS; ferrotune stops at EOS: compare what the reference produced.
    assert!(
        want_ids.len() >= 100,
        "reference stopped early: {}",
        want_ids.len()
    );
    assert_eq!(&got_ids[..want_ids.len()], &want_ids[..]);
    if want_ids.len() == 200 {
        assert_eq!(got["text"], reference["text"]);
        assert_eq!(got["finish_reason"], "length");
    }
    assert!(got["text"]
        .as_str()
        .unwrap()
        .starts_with("Once upon a time"));
    assert_eq!(got["prompt_tokens"], 1);
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn openai_client_gets_streamed_and_plain_chat_from_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((hf, _)) = stories(
        "openai_client_gets_streamed_and_plain_chat_from_serve",
        tmp.path(),
        1,
    ) else {
        return;
    };
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--model",
            hf.to_str().unwrap(),
            "--port",
            "0",
            "--device",
            "cpu",
        ])
        .args(["--api-key", "test-key", "--model-name", "stories"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let out = run_oracle(
        "infer_openai_client.py",
        &[&url, "test-key", hf.to_str().unwrap()],
    );
    drop(server);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["models"], serde_json::json!(["stories"]));
    assert_eq!(r["chat_object"], "chat.completion");
    let chat = r["chat"].as_str().unwrap();
    assert!(!chat.is_empty());
    assert_eq!(r["chat_stream"], r["chat"]);
    assert!(
        r["chat_stream_chunks"].as_u64().unwrap() > 5,
        "not streamed in pieces: {r}"
    );
    assert_eq!(r["chat_stream_roles"], serde_json::json!(["assistant"]));
    assert_eq!(r["chat_finish"], r["chat_stream_finish"]);
    let u = &r["chat_usage"];
    assert_eq!(
        u[0].as_u64().unwrap() + u[1].as_u64().unwrap(),
        u[2].as_u64().unwrap()
    );
    assert_eq!(r["completion"], r["reference_completion"]);
    assert_eq!(
        (
            r["bad_key_status"].as_u64(),
            r["unknown_model_status"].as_u64()
        ),
        (Some(401), Some(404))
    );
    assert_eq!(r["stream_status"], 200);
    assert!(r["stream_content_type"]
        .as_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(r["stream_body"].as_str().unwrap(), format!("{chat}[stop]"));
}

/// `ferrotune chat`: Ctrl-C (SIGINT) while an answer streams stops that answer — "[stopped]" — and the
/// REPL goes on: the next command (`/exit`) is read and the program exits 0.
#[test]
fn chat_ctrl_c_stops_the_answer_not_the_program() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let test = "chat_ctrl_c_stops_the_answer_not_the_program";
    let Some(tok) = fixture_or_skip(test, "tokenizers/llama2-tokenizer.model") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    // A random 4-layer Llama with a 32000 vocabulary: an answer of 2000 tokens takes seconds.
    let py = ferrotune_core::testkit::oracle_python();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let st = std::process::Command::new(py)
        .arg(root.join("tools/bench/infer_make_model.py"))
        .arg(&model)
        .arg(&tok)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mut child = std::process::Command::new(bin())
        .args(["chat", "--device", "cpu", "--threads", "1", "--ignore-eos"])
        .args(["--max-new-tokens", "1900", "--model"])
        .arg(&model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Tell me a long story\n").unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap(); // the answer is streaming
    let t0 = std::time::Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    stdin.write_all(b"/exit\n").unwrap();
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chat exited with {:?}: {err}",
        out.status
    );
    assert!(err.contains("[stopped]"), "{err}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "the answer was not stopped at once"
    );
}
