"""Oracle client for `ferrotune serve`: talks to it with the official `openai` Python package (streamed and
non-streamed chat completions, a text completion, the model list, a wrong key) and with plain HTTP for the
seed's /stream contract; computes transformers' greedy completion of the same prompt as the reference.

usage: infer_openai_client.py BASE_URL API_KEY HF_MODEL_DIR
Prints one JSON object with everything the Rust test asserts on.
"""

import http.client
import json
import sys
import urllib.parse

import openai
import torch
from sentencepiece import SentencePieceProcessor
from transformers import LlamaForCausalLM


def main():
    base, key, model_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
    out = {"models": [m.id for m in client.models.list().data]}
    name = out["models"][0]
    msgs = [{"role": "user", "content": "Tell me a story about a cat."}]

    r = client.chat.completions.create(model=name, messages=msgs, max_tokens=40, temperature=0)
    out["chat"] = r.choices[0].message.content
    out["chat_finish"] = r.choices[0].finish_reason
    out["chat_usage"] = [r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens]
    out["chat_object"] = r.object

    parts, finish, roles = [], None, []
    for chunk in client.chat.completions.create(model=name, messages=msgs, max_tokens=40, temperature=0,
                                                stream=True):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        if d.role:
            roles.append(d.role)
        if d.content:
            parts.append(d.content)
        finish = chunk.choices[0].finish_reason or finish
    out["chat_stream"] = "".join(parts)
    out["chat_stream_finish"] = finish
    out["chat_stream_roles"] = roles
    out["chat_stream_chunks"] = len(parts)

    prompt = "Once upon a time"
    r = client.completions.create(model=name, prompt=prompt, max_tokens=30, temperature=0)
    out["completion"] = r.choices[0].text

    try:
        openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
        out["bad_key_status"] = 200
    except openai.AuthenticationError as e:
        out["bad_key_status"] = e.status_code
    try:
        client.chat.completions.create(model="no-such-model", messages=msgs, max_tokens=4)
        out["unknown_model_status"] = 200
    except openai.NotFoundError as e:
        out["unknown_model_status"] = e.status_code

    # The seed's /stream: chunked text/plain body ending in [stop].
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    body = json.dumps({"prompt": msgs[0]["content"], "history": [], "max_new_tokens": 40, "temperature": 0})
    conn.request("POST", "/stream", body, {"Content-Type": "application/json", "Authorization": "Bearer " + key})
    resp = conn.getresponse()
    out["stream_status"] = resp.status
    out["stream_content_type"] = resp.getheader("Content-Type")
    raw = b""
    reads = 0
    while True:
        piece = resp.read1(65536)
        if not piece:
            break
        raw += piece
        reads += 1
    out["stream_body"] = raw.decode("utf-8")
    out["stream_reads"] = reads

    # Reference: transformers greedy on the same HF directory, sentencepiece ids with BOS.
    sp = SentencePieceProcessor(model_file=model_dir + "/tokenizer.model")
    ids = [sp.bos_id()] + sp.encode(prompt)
    model = LlamaForCausalLM.from_pretrained(model_dir)
    gen = model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False, eos_token_id=sp.eos_id())
    out["reference_completion"] = sp.decode(gen[0, len(ids):].tolist())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
