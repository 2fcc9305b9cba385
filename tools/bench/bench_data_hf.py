#!/usr/bin/env python3
"""The Python peer of `ferrotune prepare-data` for tools/bench/bench-data.sh: HF `datasets` load_dataset +
`map` with the Llama-2 *fast* tokenizer and the same Stanford Alpaca template and masking (BOS + prompt
masked, output + EOS trained, cut to cutoff_len), num_proc workers. Prints one JSON line with the wall
time, the sample count and the token count.

usage: bench_data_hf.py TOKENIZER.model DATA.json CUTOFF NUM_PROC CACHE_DIR
"""
import json
import os
import sys
import time


def main():
    tok_model, data, cutoff, num_proc, cache_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    os.environ["HF_DATASETS_CACHE"] = cache_dir
    import tempfile

    import datasets
    from transformers import AutoTokenizer

    # Conversion of the SentencePiece model to a fast tokenizer is setup, not timed. (Building
    # LlamaTokenizerFast(vocab_file=...) directly encodes to nothing in transformers 5; a directory holding
    # tokenizer.model loads as the fast tokenizer, whose ids equal sentencepiece's.)
    tok_dir = tempfile.mkdtemp()
    os.symlink(os.path.abspath(tok_model), os.path.join(tok_dir, "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert tok.is_fast
    bos, eos = 1, 2
    prompt_input = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    )
    prompt_no_input = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    )

    def preprocess(batch):
        prompts = [
            (prompt_input if inp else prompt_no_input).format(instruction=ins, input=inp)
            for ins, inp in zip(batch["instruction"], batch["input"])
        ]
        p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
        o_ids = tok(batch["output"], add_special_tokens=False)["input_ids"]
        input_ids, labels = [], []
        for p, o in zip(p_ids, o_ids):
            src, tgt = [bos] + p, o + [eos]
            ids = (src + tgt)[:cutoff]
            lab = ([-100] * len(src) + tgt)[:cutoff]
            input_ids.append(ids)
            labels.append(lab)
        return {"input_ids": input_ids, "labels": labels, "attention_mask": [[1] * len(x) for x in input_ids]}

    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=data, split="train")
    ds = ds.map(preprocess, batched=True, num_proc=num_proc, remove_columns=ds.column_names)
    n_tokens = sum(len(x) for x in ds["input_ids"])
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "samples": len(ds), "tokens": n_tokens}))


if __name__ == "__main__":
    main()
