-- wrk script for bench-infer.sh: streaming chat completions (wrk reads each SSE body to its end).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":32,"temperature":0.8,"stream":true}'
