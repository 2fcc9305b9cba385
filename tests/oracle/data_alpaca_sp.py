#!/usr/bin/env python3
"""Oracle for ferrotune-data's alpaca template: Stanford Alpaca's prompt texts (PROMPT_DICT of
tatsu-lab/stanford_alpaca train.py, with the newline after "### Response:" that the released dataset's
`text` column has) tokenized by Google's sentencepiece.

usage: data_alpaca_sp.py TOKENIZER.model DATA.json
prints JSON: [{"prompt": str, "prompt_ids": [BOS, ...], "output_ids": [..., EOS]}, ...]
"""
import json
import sys

import sentencepiece as spm

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def main():
    sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
    records = json.load(open(sys.argv[2], encoding="utf-8"))
    out = []
    for r in records:
        tpl = PROMPT_INPUT if r.get("input") else PROMPT_NO_INPUT
        prompt = tpl.format_map(r)
        out.append({
            "prompt": prompt,
            "prompt_ids": [sp.bos_id()] + sp.encode(prompt),
            "output_ids": sp.encode(r["output"]) + [sp.eos_id()],
        })
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
