//! `hub::download_repo` against a hub imitation on 127.0.0.1 (ephemeral port, started by each test): the
//! listing endpoint, `resolve` file endpoint with Range support, a token check, and a connection dropped
//! mid-file on the first request. The expected sha256 comes from the `sha2` crate over the served bytes.

use ferrotune_model::hub::{download_repo, HubError, HubOptions};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Hub {
    weights: Vec<u8>,
    config: Vec<u8>,
    listed_sha: String,
    token: Option<&'static str>,
    drop_first: bool,
    /// (path, Range header) of every file request.
    log: Mutex<Vec<(String, Option<String>)>>,
}

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn respond(s: &mut TcpStream, status: &str, headers: &[String], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(b"\r\n");
    let _ = s.write_all(body);
}

fn handle(hub: &Hub, mut s: TcpStream) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut auth) = (None, None);
    for _ in 0..100 {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or(("", ""));
        match k.to_ascii_lowercase().as_str() {
            "range" => range = Some(v.trim().to_string()),
            "authorization" => auth = Some(v.trim().to_string()),
            _ => {}
        }
    }
    if let Some(t) = hub.token {
        if auth.as_deref() != Some(&format!("Bearer {t}")) {
            return respond(
                &mut s,
                "401 Unauthorized",
                &[],
                b"{\"error\":\"Invalid credentials\"}",
            );
        }
    }
    if path == "/api/models/org/tiny/revision/main?blobs=true" {
        let body = serde_json::json!({"siblings": [
            {"rfilename": "config.json", "size": hub.config.len()},
            {"rfilename": "sub/model.safetensors", "size": hub.weights.len(),
             "lfs": {"sha256": hub.listed_sha, "size": hub.weights.len()}},
        ]})
        .to_string();
        return respond(
            &mut s,
            "200 OK",
            &[format!("Content-Length: {}", body.len())],
            body.as_bytes(),
        );
    }
    let file = match path.as_str() {
        "/org/tiny/resolve/main/config.json" => &hub.config,
        "/org/tiny/resolve/main/sub/model.safetensors" => &hub.weights,
        _ => return respond(&mut s, "404 Not Found", &["Content-Length: 0".into()], b""),
    };
    let first = {
        let mut log = hub.log.lock().unwrap();
        log.push((path.clone(), range.clone()));
        log.iter().filter(|(p, _)| *p == path).count() == 1
    };
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    let len = file.len();
    if start > 0 {
        let headers = [
            format!("Content-Length: {}", len - start),
            format!("Content-Range: bytes {start}-{}/{len}", len - 1),
        ];
        return respond(&mut s, "206 Partial Content", &headers, &file[start..]);
    }
    if hub.drop_first && first && file.len() > 1000 {
        // Promise the whole file, send 40% of it, then drop the connection.
        respond(
            &mut s,
            "200 OK",
            &[format!("Content-Length: {len}")],
            &file[..len * 2 / 5],
        );
        let _ = s.flush();
        let _ = s.shutdown(std::net::Shutdown::Both);
        return;
    }
    respond(&mut s, "200 OK", &[format!("Content-Length: {len}")], file);
}

/// Starts the imitation; it serves at most 40 connections (every test needs far fewer).
fn serve(hub: Hub) -> (String, Arc<Hub>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hub = Arc::new(hub);
    let h = hub.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().take(40).flatten() {
            handle(&h, s);
        }
    });
    (url, hub)
}

fn hub(token: Option<&'static str>, drop_first: bool, corrupt_listing: bool) -> Hub {
    let weights: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let listed_sha = if corrupt_listing {
        hex(b"something else")
    } else {
        hex(&weights)
    };
    Hub {
        weights,
        config: br#"{"model_type": "llama"}"#.to_vec(),
        listed_sha,
        token,
        drop_first,
        log: Mutex::new(Vec::new()),
    }
}

fn opts(endpoint: &str, token: Option<&str>) -> HubOptions {
    HubOptions {
        endpoint: endpoint.to_string(),
        token: token.map(str::to_string),
        revision: "main".into(),
        include: Vec::new(),
        retries: 3,
        backoff: Duration::from_millis(10),
        progress: false,
    }
}

#[test]
fn dropped_connection_resumes_with_range_and_ends_with_the_right_sha256() {
    let (url, hub) = serve(hub(Some("secret"), true, false));
    let out = tempfile::tempdir().unwrap();
    let files = download_repo("org/tiny", out.path(), &opts(&url, Some("secret"))).unwrap();
    assert_eq!(files.len(), 2);
    let got = std::fs::read(out.path().join("sub/model.safetensors")).unwrap();
    assert_eq!(hex(&got), hex(&hub.weights));
    assert_eq!(
        std::fs::read(out.path().join("config.json")).unwrap(),
        hub.config
    );
    let log = hub.log.lock().unwrap().clone();
    let weight_reqs: Vec<_> = log
        .iter()
        .filter(|(p, _)| p.ends_with("model.safetensors"))
        .collect();
    assert_eq!(
        weight_reqs.len(),
        2,
        "one dropped request, one resumed: {log:?}"
    );
    assert_eq!(weight_reqs[0].1, None);
    assert_eq!(
        weight_reqs[1].1.as_deref(),
        Some(format!("bytes={}-", hub.weights.len() * 2 / 5).as_str())
    );
    assert!(!out.path().join("sub/model.safetensors.incomplete").exists());

    // A second run finds the files complete and downloads nothing.
    download_repo("org/tiny", out.path(), &opts(&url, Some("secret"))).unwrap();
    assert_eq!(hub.log.lock().unwrap().len(), log.len());
}

#[test]
fn include_glob_selects_files() {
    let (url, _hub) = serve(hub(None, false, false));
    let out = tempfile::tempdir().unwrap();
    let mut o = opts(&url, None);
    o.include = vec!["*.json".into()];
    let files = download_repo("org/tiny", out.path(), &o).unwrap();
    assert_eq!(files, vec![out.path().join("config.json")]);
    assert!(!out.path().join("sub").exists());
}

#[test]
fn hash_mismatch_is_an_error_and_leaves_no_final_file() {
    let (url, _hub) = serve(hub(None, false, true));
    let out = tempfile::tempdir().unwrap();
    let err = download_repo("org/tiny", out.path(), &opts(&url, None)).unwrap_err();
    assert!(matches!(err, HubError::Integrity { .. }), "{err}");
    assert!(err.to_string().contains("sub/model.safetensors"), "{err}");
    assert!(!out.path().join("sub/model.safetensors").exists());
}

#[test]
fn missing_repository_gives_a_clear_404() {
    let (url, _hub) = serve(hub(None, false, false));
    let out = tempfile::tempdir().unwrap();
    let err = download_repo("org/absent", out.path(), &opts(&url, None)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::NotFound { .. }), "{msg}");
    assert!(msg.contains("org/absent") && msg.contains("404"), "{msg}");
}

#[test]
fn bad_token_gives_a_clear_401_suggesting_hf_token() {
    let (url, _hub) = serve(hub(Some("secret"), false, false));
    let out = tempfile::tempdir().unwrap();
    let err = download_repo("org/tiny", out.path(), &opts(&url, Some("wrong"))).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, HubError::Unauthorized { status: 401, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("org/tiny") && msg.contains("HF_TOKEN"),
        "{msg}"
    );
}

#[test]
fn unreachable_endpoint_gives_up_after_bounded_retries() {
    // Bind and drop a listener to get a loopback port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = tempfile::tempdir().unwrap();
    let o = opts(&format!("http://127.0.0.1:{port}"), None);
    let err = download_repo("org/tiny", out.path(), &o).unwrap_err();
    assert!(
        matches!(err, HubError::Transport { attempts: 4, .. }),
        "{err}"
    );
}
