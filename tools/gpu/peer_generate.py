"""Step (f) of tools/gpu/check.sh: a small random Llama for the decode comparison, and transformers' greedy
`generate` on it (the peer of `ferrotune generate --device cuda --dtype bf16 --temperature 0`).

usage: peer_generate.py make OUT_DIR TOKENIZER_MODEL
         8 layers, hidden 1024, 16 heads, intermediate 2816, the tokenizer's vocabulary, seeded, fp32
       peer_generate.py run MODEL_DIR NEW_TOKENS DEVICE
         bf16 on DEVICE, prompt "The quick brown fox" (BOS + sentencepiece ids), exactly NEW_TOKENS new
         tokens, one warm-up run; prints {"tokens_per_s", "seconds", "new_ids"}
"""
import json
import shutil
import sys
import time

import torch

if sys.argv[1] == "make":
    from sentencepiece import SentencePieceProcessor
    from transformers import LlamaConfig, LlamaForCausalLM

    out, tok = sys.argv[2], sys.argv[3]
    torch.manual_seed(0)
    # The vocabulary is the tokenizer's, so every id a random model emits decodes.
    vocab = SentencePieceProcessor(model_file=tok).get_piece_size()
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=vocab, max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    shutil.copy(tok, out + "/tokenizer.model")
    print("saved", out)
else:
    from sentencepiece import SentencePieceProcessor
    from transformers import LlamaForCausalLM

    model_dir, n, device = sys.argv[2], int(sys.argv[3]), torch.device(sys.argv[4])
    sp = SentencePieceProcessor(model_file=model_dir + "/tokenizer.model")
    ids = torch.tensor([[1] + sp.encode("The quick brown fox")], device=device)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
        sync()
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        sync()
        dt = time.perf_counter() - t
    new = out[0, ids.shape[1]:].tolist()
    print(json.dumps({"tokens_per_s": len(new) / dt, "seconds": dt, "new_ids": new}))
