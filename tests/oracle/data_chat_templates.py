#!/usr/bin/env python3
"""Oracle for ferrotune-data's chatml and llama2 templates: transformers' apply_chat_template with the
ChatML template from the transformers chat-templating docs and Meta's Llama-2-chat template (from
meta-llama/Llama-2-7b-chat-hf tokenizer_config.json); the Llama-2 text is then tokenized with Google's
sentencepiece, splitting at the <s> / </s> markers as the HF Llama tokenizer does.

usage: data_chat_templates.py TOKENIZER.model CONVERSATIONS.json
  CONVERSATIONS.json: [[{"role": ..., "content": ...}, ...], ...]
prints JSON: [{"chatml": str, "llama2": str, "llama2_ids": [...]}, ...]
"""
import json
import re
import sys

import sentencepiece as spm
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def main():
    sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
    convs = json.load(open(sys.argv[2], encoding="utf-8"))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        bos_token="<s>", eos_token="</s>",
    )
    out = []
    for msgs in convs:
        chatml = tok.apply_chat_template(msgs, chat_template=CHATML, tokenize=False)
        llama2 = tok.apply_chat_template(msgs, chat_template=LLAMA2, tokenize=False)
        ids = []
        for part in re.split(r"(<s>|</s>)", llama2):
            if part == "<s>":
                ids.append(sp.bos_id())
            elif part == "</s>":
                ids.append(sp.eos_id())
            elif part:
                ids.extend(sp.encode(part))
        out.append({"chatml": chatml, "llama2": llama2, "llama2_ids": ids})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
