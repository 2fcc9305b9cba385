"""Oracle ids for ferrotune's tokenizer tests.

usage: tokenizer_encode.py MODE PATH DATA_JSON [MODE PATH DATA_JSON ...]
  sp MODEL TEXTS_JSON        Google sentencepiece ids, explicit BOS (id 1) prepended
  sp-decode MODEL IDS_JSON   sentencepiece decode of each id list
  hf DIR TEXTS_JSON          transformers.AutoTokenizer.from_pretrained(DIR) ids, default special tokens
Prints one JSON value per job (a list of id lists, or of strings); several jobs print a JSON list of them.
Jobs share one interpreter so transformers is imported once.
"""
import json
import sys

args = sys.argv[1:]
if not args or len(args) % 3:
    sys.exit("usage: tokenizer_encode.py MODE PATH DATA_JSON [...]")

results = []
for mode, path, data in zip(args[0::3], args[1::3], args[2::3]):
    with open(data, encoding="utf-8") as f:
        items = json.load(f)
    if mode in ("sp", "sp-decode"):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=path)
        if mode == "sp":
            results.append([[sp.bos_id()] + ids for ids in sp.encode(items, out_type=int)])
        else:
            results.append([sp.decode(ids) for ids in items])
    elif mode == "hf":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        results.append(tok(items)["input_ids"])
    else:
        sys.exit(f"unknown mode {mode}")
json.dump(results[0] if len(results) == 1 else results, sys.stdout, ensure_ascii=False)
