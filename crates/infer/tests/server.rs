//! HTTP server tests on the toy model: every endpoint, the error shapes and status codes, SSE framing,
//! the `/stream` contract, and cancellation of a request whose client disconnects.

use ferrotune_infer::chat::{ChatFormatter, ChatMessage, PlainChat};
use ferrotune_infer::server::{serve, AppState, ServerConfig};
use ferrotune_infer::testing::{ByteCodec, ToyModel};
use ferrotune_infer::{generate_batch, EngineConfig, EngineHandle, GenerationParams, TextCodec};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start(api_key: Option<&str>, delay_ms: u64) -> SocketAddr {
    let mut model = ToyModel::new(ByteCodec::VOCAB, 200, 5).with_adapters(&["tuned"]);
    model.delay = Duration::from_millis(delay_ms);
    let engine = EngineHandle::spawn(
        Box::new(model),
        Arc::new(ByteCodec),
        EngineConfig::default(),
    );
    let cfg = ServerConfig {
        model_name: "toy".into(),
        api_key: api_key.map(str::to_string),
        max_body_bytes: 4096,
        ..Default::default()
    };
    let state = AppState::new(engine, Arc::new(ByteCodec), Arc::new(PlainChat), cfg);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
            serve(state, addr, |a| tx.send(a).unwrap(), std::future::pending())
                .await
                .unwrap();
        });
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

struct Resp {
    status: u16,
    headers: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&raw[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&raw[nl + 2..nl + 2 + n]);
        raw = &raw[nl + 2 + n + 2..];
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, body: &str, key: Option<&str>) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let headers = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = headers[9..12].parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

fn post(addr: SocketAddr, path: &str, body: Value) -> Resp {
    request(addr, "POST", path, &body.to_string(), None)
}

fn expected(messages: &[ChatMessage], max: usize) -> String {
    let prompt = PlainChat.render(messages).unwrap();
    let ids = ByteCodec.encode(&prompt, true).unwrap();
    let params = GenerationParams {
        max_new_tokens: max,
        stop: PlainChat.stop_strings(),
        ..Default::default()
    };
    let model = ToyModel::new(ByteCodec::VOCAB, 200, 5);
    generate_batch(&model, &ByteCodec, &[ids], &params).unwrap()[0]
        .text
        .clone()
}

#[test]
fn openai_endpoints_answer_like_local_generation() {
    let addr = start(None, 0);
    let h = request(addr, "GET", "/health", "", None).json();
    assert_eq!(
        (h["status"].as_str(), h["in_flight"].as_u64()),
        (Some("ok"), Some(0))
    );
    let m = request(addr, "GET", "/v1/models", "", None).json();
    let ids: Vec<&str> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["toy", "tuned"]);

    let msgs = vec![
        ChatMessage::new("system", "Be nice."),
        ChatMessage::new("user", "Hi there"),
    ];
    let want = expected(&msgs, 24);
    let req = json!({"model": "toy", "messages": msgs, "max_tokens": 24, "temperature": 0});
    let r = post(addr, "/v1/chat/completions", req.clone());
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["object"], "chat.completion");
    assert_eq!(
        j["choices"][0]["message"]["content"].as_str().unwrap(),
        want
    );
    assert_eq!(j["usage"]["completion_tokens"], 24);

    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let r = post(addr, "/v1/chat/completions", sreq);
    assert!(r.headers.contains("text/event-stream"));
    let datas: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*datas.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, want);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    let r = post(
        addr,
        "/v1/completions",
        json!({"prompt": "Once", "max_tokens": 10, "temperature": 0.0}),
    );
    let model = ToyModel::new(ByteCodec::VOCAB, 200, 5);
    let ids = ByteCodec.encode("Once", true).unwrap();
    let params = GenerationParams {
        max_new_tokens: 10,
        ..Default::default()
    };
    let local = generate_batch(&model, &ByteCodec, &[ids], &params).unwrap();
    assert_eq!(
        r.json()["choices"][0]["text"].as_str().unwrap(),
        local[0].text
    );

    // The seed's /stream: raw text, then the [stop] marker.
    let want = expected(&[ChatMessage::new("user", "Hello")], 16);
    let r = post(
        addr,
        "/stream",
        json!({"prompt": "Hello", "history": [], "max_new_tokens": 16, "temperature": 0}),
    );
    assert!(r.headers.contains("text/plain"));
    assert_eq!(r.body, format!("{want}[stop]"));
    let hist = vec![
        ChatMessage::new("user", "a"),
        ChatMessage::new("assistant", "b"),
        ChatMessage::new("user", "c"),
    ];
    let r = post(
        addr,
        "/stream",
        json!({"prompt": "c", "history": [["a", "b"]], "max_new_tokens": 8, "temperature": 0}),
    );
    assert_eq!(r.body, format!("{}[stop]", expected(&hist, 8)));
}

#[test]
fn errors_have_openai_shape_and_status() {
    let addr = start(Some("sekret"), 0);
    let chat = |body: &str, key| request(addr, "POST", "/v1/chat/completions", body, key);
    let ok = json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}).to_string();
    assert_eq!(chat(&ok, None).status, 401);
    let r = chat(&ok, Some("wrong"));
    assert_eq!(
        (r.status, r.json()["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    assert_eq!(chat(&ok, Some("sekret")).status, 200);
    assert_eq!(request(addr, "GET", "/health", "", None).status, 200);
    let k = Some("sekret");
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{not json".into(), 400, None),
        (json!({"messages": "nope"}).to_string(), 400, None),
        (
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}).to_string(),
            404,
            Some("model"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000})
                .to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "y".repeat(300)}]}).to_string(),
            400,
            Some("messages"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "y".repeat(5000)}]}).to_string(),
            413,
            None,
        ),
        (
            json!({"messages": [{"role": "assistant", "content": "x"}]}).to_string(),
            400,
            Some("messages"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}).to_string(),
            400,
            Some("temperature"),
        ),
    ];
    for (body, status, param) in cases {
        let r = chat(&body, k);
        assert_eq!(r.status, status, "{body:.80}: {}", r.body);
        let e = &r.json()["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            r.body
        );
        assert_eq!(e["param"].as_str(), param, "{}", r.body);
    }
    let r = request(
        addr,
        "POST",
        "/stream",
        &json!({"prompt": "z".repeat(300)}).to_string(),
        k,
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("context_length_exceeded"))
    );
    let r = request(addr, "POST", "/v1/chat/completions", &json!({"model": "tuned", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "temperature": 0}).to_string(), k);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "\u{0}\u{0}\u{0}"
    );
}

#[test]
fn client_disconnect_cancels_the_request() {
    let addr = start(None, 5);
    let mut s = TcpStream::connect(addr).unwrap();
    let body = json!({"messages": [{"role": "user", "content": "go"}], "max_tokens": 150, "temperature": 0, "stream": true}).to_string();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(n > 0);
    let health = || {
        request(addr, "GET", "/health", "", None).json()["in_flight"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(health(), 1);
    drop(s);
    let t = Instant::now();
    while health() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "request not cancelled after disconnect"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // 150 tokens at >= 5 ms each would take >= 0.75 s: it was cancelled, not finished.
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "took {:?}",
        t.elapsed()
    );
}
