"""Load test of `ferrotune serve`: CONC streaming chat clients for DURATION seconds, while one more client
keeps sending malformed JSON, oversize prompts, oversize bodies, unknown models, bad max_tokens and streams
it abandons mid-way. Checks every status code, that the server survives, and that /health's in_flight
count returns to 0. Prints one JSON summary (throughput, time-to-first-token percentiles, status counts).

usage: infer_load.py BASE_URL DURATION_S CONC
"""

import http.client
import json
import socket
import sys
import threading
import time
import urllib.parse

base, duration, conc = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
u = urllib.parse.urlparse(base)
HOST, PORT = u.hostname, u.port
lock = threading.Lock()
ttft, tokens, done, problems = [], [0], [0], []
statuses = {}


def note(kind, status):
    with lock:
        statuses[f"{kind}:{status}"] = statuses.get(f"{kind}:{status}", 0) + 1


def post(path, body, timeout=120):
    c = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    c.request("POST", path, body, {"Content-Type": "application/json"})
    return c, c.getresponse()


def streamer(stop_at, i):
    n = 0
    while time.time() < stop_at:
        n += 1
        body = json.dumps({"messages": [{"role": "user", "content": f"Tell story {i}-{n}"}],
                           "max_tokens": 64, "temperature": 0.8, "seed": n, "stream": True})
        t0 = time.perf_counter()
        try:
            c, r = post("/v1/chat/completions", body)
        except OSError as e:
            problems.append(f"connect: {e}")
            continue
        note("stream", r.status)
        if r.status != 200:
            problems.append(f"stream status {r.status}")
            r.read()
            continue
        first, count, saw_done = None, 0, False
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                saw_done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                problems.append(f"stream error {chunk}")
                break
            if chunk["choices"][0]["delta"].get("content"):
                count += 1
                if first is None:
                    first = time.perf_counter() - t0
        c.close()
        if not saw_done:
            problems.append("stream without [DONE]")
        with lock:
            if first is not None:
                ttft.append(first)
            tokens[0] += count
            done[0] += 1


def chaos(stop_at):
    cases = [
        ("bad_json", "/v1/chat/completions", "{not json", 400),
        ("missing_field", "/v1/chat/completions", json.dumps({"model": "x"}), 400),
        ("unknown_model", "/v1/chat/completions",
         json.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}), 404),
        ("max_tokens_0", "/v1/chat/completions",
         json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}), 400),
        ("prompt_too_long", "/v1/chat/completions",
         json.dumps({"messages": [{"role": "user", "content": "story " * 3000}]}), 400),
        ("body_too_large", "/v1/chat/completions",
         json.dumps({"messages": [{"role": "user", "content": "x" * (2 << 20)}]}), 413),
        ("stream_bad_json", "/stream", "[1,2", 400),
    ]
    while time.time() < stop_at:
        for kind, path, body, want in cases:
            try:
                c, r = post(path, body)
                r.read()
                c.close()
                note(kind, r.status)
                if r.status != want:
                    problems.append(f"{kind}: got {r.status}, want {want}")
            except (OSError, http.client.HTTPException) as e:
                # The server may close the connection on an oversize body before reading it all.
                if kind != "body_too_large":
                    problems.append(f"{kind}: {e}")
                else:
                    note(kind, "closed")
        # A client that disconnects mid-stream.
        s = socket.create_connection((HOST, PORT))
        body = json.dumps({"messages": [{"role": "user", "content": "bye"}], "max_tokens": 200, "stream": True})
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        s.recv(256)
        s.close()
        note("disconnect", "sent")
        time.sleep(0.2)


def health():
    c = http.client.HTTPConnection(HOST, PORT, timeout=10)
    c.request("GET", "/health")
    return json.loads(c.getresponse().read())


stop_at = time.time() + duration
t0 = time.time()
threads = [threading.Thread(target=streamer, args=(stop_at, i)) for i in range(conc)]
threads.append(threading.Thread(target=chaos, args=(stop_at,)))
peak = [0]


def watch():
    while time.time() < stop_at:
        peak[0] = max(peak[0], health()["in_flight"])
        time.sleep(0.5)


threads.append(threading.Thread(target=watch))
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.time() - t0
final = None
for _ in range(100):
    final = health()["in_flight"]
    if final == 0:
        break
    time.sleep(0.1)
ttft.sort()
pct = lambda p: ttft[min(len(ttft) - 1, int(p * len(ttft)))] if ttft else None
print(json.dumps({
    "seconds": round(elapsed, 1), "concurrency": conc, "completed_streams": done[0],
    "streamed_tokens": tokens[0], "tokens_per_s": round(tokens[0] / elapsed, 1),
    "ttft_p50_ms": round(pct(0.5) * 1000, 1) if ttft else None,
    "ttft_p99_ms": round(pct(0.99) * 1000, 1) if ttft else None,
    "peak_in_flight": peak[0], "final_in_flight": final, "statuses": statuses,
    "problems": problems[:20], "problem_count": len(problems),
}))
