"""Oracle for converted checkpoints: transformers loads the HF directory, greedily continues from BOS, and
the ids are decoded with Google's sentencepiece on the directory's tokenizer.model (and with transformers'
AutoTokenizer as a second reader of the same file).

  acquire_generate.py N HF_DIR...   prints per directory one JSON line
                                    {"ids": [...], "ids_forward": [...], "text_spm": "...", "text_hf": "...",
                                     "vocab": n}  (ids: `generate`; ids_forward: uncached full forwards)
"""

import json
import sys

import sentencepiece as spm
import torch
from transformers import AutoTokenizer, LlamaForCausalLM


def main(hf, n):
    model = LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    bos = model.config.bos_token_id
    with torch.no_grad():
        out = model.generate(torch.tensor([[bos]]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=bos)
    ids = out[0, 1:].tolist()
    # The same greedy decoding by full forwards without a KV cache (transformers 5.24's cached `generate`
    # departs from its own uncached forward on stories260K at token 21, by a logit margin of 0.13, not a tie).
    seq = torch.tensor([[bos]])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    sp = spm.SentencePieceProcessor(model_file=f"{hf}/tokenizer.model")
    tok = AutoTokenizer.from_pretrained(hf)
    print(json.dumps({
        "ids": ids,
        "ids_forward": seq[0, 1:].tolist(),
        "text_spm": sp.decode(ids),
        "text_hf": tok.decode(ids, skip_special_tokens=True),
        "vocab": sp.get_piece_size(),
    }))


if __name__ == "__main__":
    torch.set_num_threads(1)
    for d in sys.argv[2:]:
        main(d, int(sys.argv[1]))
