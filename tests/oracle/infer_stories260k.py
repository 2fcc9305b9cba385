"""Oracle for ferrotune-infer's stories260K acceptance test.

usage: infer_stories260k.py MODEL_DIR OUT_DIR N_TOKENS

1. Converts llama2.c's stories260K.bin (+ tok512.bin) into a Hugging Face model directory in OUT_DIR:
   config.json, model.safetensors (q/k rows permuted from llama2.c's interleaved RoPE pairs to HF's
   half-split layout) and tokenizer.model (a SentencePiece ModelProto rebuilt from tok512.bin).
   (Stand-in until the project's own llama2.c converter lands; the test only uses it as input.)
2. Runs llama2.c's reference forward (run.c semantics: interleaved RoPE, RMSNorm, SwiGLU, GQA, tied
   classifier) in numpy straight from the .bin, greedy from BOS for N_TOKENS steps, stopping like run.c
   when BOS is produced.
3. Prints JSON: {"ids": [...generated ids...], "text": sentencepiece decode of them}.
"""

import json
import os
import struct
import sys

import numpy as np
from safetensors.numpy import save_file
from sentencepiece import SentencePieceProcessor
from sentencepiece import sentencepiece_model_pb2 as spm


def read_checkpoint(path):
    with open(path, "rb") as f:
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", f.read(28))
        data = np.frombuffer(f.read(), dtype=np.float32)
    shared = vocab > 0
    vocab = abs(vocab)
    hs = dim // n_heads
    kv_dim = n_kv * hs
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        t = data[off:off + n].reshape(shape)
        off += n
        return t

    w = {}
    w["emb"] = take(vocab, dim)
    w["rms_att"] = take(n_layers, dim)
    w["wq"] = take(n_layers, dim, dim)
    w["wk"] = take(n_layers, kv_dim, dim)
    w["wv"] = take(n_layers, kv_dim, dim)
    w["wo"] = take(n_layers, dim, dim)
    w["rms_ffn"] = take(n_layers, dim)
    w["w1"] = take(n_layers, hidden, dim)
    w["w2"] = take(n_layers, dim, hidden)
    w["w3"] = take(n_layers, hidden, dim)
    w["rms_final"] = take(dim)
    take(seq_len, hs // 2)  # freq_cis_real (unused)
    take(seq_len, hs // 2)  # freq_cis_imag
    w["cls"] = w["emb"] if shared else take(vocab, dim)
    cfg = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv, vocab=vocab,
               seq_len=seq_len, shared=shared)
    return cfg, w


def rmsnorm(x, g):
    return x / np.sqrt(np.mean(x * x) + 1e-5) * g


def rope_interleaved(v, pos, hs):
    out = v.copy()
    for i in range(0, v.shape[0], 2):
        freq = 1.0 / (10000.0 ** ((i % hs) / hs))
        c, s = np.cos(pos * freq), np.sin(pos * freq)
        out[i] = v[i] * c - v[i + 1] * s
        out[i + 1] = v[i] * s + v[i + 1] * c
    return out


def reference_greedy(cfg, w, n_tokens, bos=1):
    dim, nh, nkv = cfg["dim"], cfg["n_heads"], cfg["n_kv"]
    hs = dim // nh
    kv_mul = nh // nkv
    kcache = [[] for _ in range(cfg["n_layers"])]
    vcache = [[] for _ in range(cfg["n_layers"])]
    token, out = bos, []
    for pos in range(n_tokens):
        x = w["emb"][token].astype(np.float64)
        for l in range(cfg["n_layers"]):
            xb = rmsnorm(x, w["rms_att"][l])
            q = rope_interleaved(w["wq"][l] @ xb, pos, hs)
            k = rope_interleaved(w["wk"][l] @ xb, pos, hs)
            v = w["wv"][l] @ xb
            kcache[l].append(k)
            vcache[l].append(v)
            K, V = np.stack(kcache[l]), np.stack(vcache[l])
            att_out = np.zeros(dim)
            for h in range(nh):
                kh = h // kv_mul
                qh = q[h * hs:(h + 1) * hs]
                sc = K[:, kh * hs:(kh + 1) * hs] @ qh / np.sqrt(hs)
                p = np.exp(sc - sc.max())
                p /= p.sum()
                att_out[h * hs:(h + 1) * hs] = p @ V[:, kh * hs:(kh + 1) * hs]
            x = x + w["wo"][l] @ att_out
            xb = rmsnorm(x, w["rms_ffn"][l])
            h1, h3 = w["w1"][l] @ xb, w["w3"][l] @ xb
            x = x + w["w2"][l] @ (h1 / (1.0 + np.exp(-h1)) * h3)
        logits = w["cls"] @ rmsnorm(x, w["rms_final"])
        token = int(np.argmax(logits))
        if token == bos:  # run.c: BOS delimits sequences and ends generation
            break
        out.append(token)
    return out


def permute_rows(wt, n_heads):
    """llama2.c interleaved rotary pairs -> HF half-split (transformers' convert_llama_weights permute)."""
    d1, d2 = wt.shape
    return wt.reshape(n_heads, d1 // n_heads // 2, 2, d2).transpose(0, 2, 1, 3).reshape(d1, d2)


def write_hf(cfg, w, out):
    t = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    sd = {"model.embed_tokens.weight": t(w["emb"]), "model.norm.weight": t(w["rms_final"])}
    for l in range(cfg["n_layers"]):
        p = f"model.layers.{l}."
        sd[p + "input_layernorm.weight"] = t(w["rms_att"][l])
        sd[p + "post_attention_layernorm.weight"] = t(w["rms_ffn"][l])
        sd[p + "self_attn.q_proj.weight"] = t(permute_rows(w["wq"][l], cfg["n_heads"]))
        sd[p + "self_attn.k_proj.weight"] = t(permute_rows(w["wk"][l], cfg["n_kv"]))
        sd[p + "self_attn.v_proj.weight"] = t(w["wv"][l])
        sd[p + "self_attn.o_proj.weight"] = t(w["wo"][l])
        sd[p + "mlp.gate_proj.weight"] = t(w["w1"][l])
        sd[p + "mlp.down_proj.weight"] = t(w["w2"][l])
        sd[p + "mlp.up_proj.weight"] = t(w["w3"][l])
    if not cfg["shared"]:
        sd["lm_head.weight"] = t(w["cls"])
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg["dim"], "intermediate_size": cfg["hidden"],
        "num_hidden_layers": cfg["n_layers"], "num_attention_heads": cfg["n_heads"],
        "num_key_value_heads": cfg["n_kv"], "vocab_size": cfg["vocab"],
        "max_position_embeddings": cfg["seq_len"], "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": cfg["shared"], "torch_dtype": "float32",
        "bos_token_id": 1, "eos_token_id": 2, "attention_bias": False, "mlp_bias": False,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def write_tokenizer(tok_bin, vocab, out):
    """tok512.bin (llama2.c layout: spaces as ' ', BOS/EOS as '\\n<s>\\n') -> SentencePiece ModelProto."""
    m = spm.ModelProto()
    with open(tok_bin, "rb") as f:
        struct.unpack("i", f.read(4))
        for i in range(vocab):
            score, n = struct.unpack("fi", f.read(8))
            piece = f.read(n).decode("utf-8")
            p = m.pieces.add()
            p.score = score
            if i == 0:
                p.piece, p.type = "<unk>", spm.ModelProto.SentencePiece.UNKNOWN
            elif i == 1:
                p.piece, p.type = "<s>", spm.ModelProto.SentencePiece.CONTROL
            elif i == 2:
                p.piece, p.type = "</s>", spm.ModelProto.SentencePiece.CONTROL
            elif piece.startswith("<0x") and len(piece) == 6:
                p.piece, p.type = piece, spm.ModelProto.SentencePiece.BYTE
            else:
                p.piece, p.type = piece.replace(" ", "\u2581"), spm.ModelProto.SentencePiece.NORMAL
    ts = m.trainer_spec
    ts.model_type = spm.TrainerSpec.BPE
    ts.vocab_size = vocab
    ts.byte_fallback = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    path = os.path.join(out, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return path


def main():
    model_dir, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.makedirs(out, exist_ok=True)
    cfg, w = read_checkpoint(os.path.join(model_dir, "stories260K.bin"))
    write_hf(cfg, w, out)
    tok = write_tokenizer(os.path.join(model_dir, "tok512.bin"), cfg["vocab"], out)
    ids = reference_greedy(cfg, w, n)
    sp = SentencePieceProcessor(model_file=tok)
    print(json.dumps({"ids": ids, "text": sp.decode(ids)}))


if __name__ == "__main__":
    main()
