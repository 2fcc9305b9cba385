"""Loads a trained .model with Google's sentencepiece and encodes texts.

usage: tokenizer_train_check.py MODEL TEXTS_JSON
Prints JSON: {"vocab_size": n, "ids": [[...]...], "decoded": [...], "unk": count of unk ids}
"""
import json
import sys

import sentencepiece as spm

sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
texts = json.load(open(sys.argv[2], encoding="utf-8"))
ids = sp.encode(texts, out_type=int)
json.dump(
    {
        "vocab_size": sp.get_piece_size(),
        "ids": ids,
        "decoded": [sp.decode(x) for x in ids],
        "unk": sum(x.count(sp.unk_id()) for x in ids),
    },
    sys.stdout,
    ensure_ascii=False,
)
