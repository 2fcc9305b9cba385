#!/usr/bin/env python3
"""Generates ferrotune's own demo data (`just finetune`, and the data crate's end-to-end tests).

  datasets/demo_corpus.txt  the `pt` corpus the demo's base model is pre-trained on from scratch: English and
                            Chinese facts (capitals, sums of two digits, which digit is larger, EN<->ZH words)
                            and random three-word lists said again / backwards / translated
  datasets/demo_en.json     alpaca-format English instructions  } the SFT set: task families whose answers
  datasets/demo_zh.json     alpaca-format Chinese instructions  } follow from the prompt by a pattern
  datasets/demo_eval.json   held-out prompts (new combinations) with the exact expected answer, `task`, `lang`

Task families (each in English and Chinese): `repeat` two words, `swap` two words, `translate` two words
(EN->ZH / ZH->EN; every single-word translation is trained, the held-out pairs are new combinations),
`larger` of two digits, `add` two digits (the sum is also a fact of the pt corpus), `capital` of a country
(held-out countries are known only from the pt corpus), `identity` (held-out paraphrases of "who are you"),
and a few two-turn dialogues (alpaca `history`). Operands stand between spaces, so the demo tokenizer keeps
each word one piece in Chinese too. Only the standard library; deterministic (fixed seed): rerun it to
regenerate the committed files: python3 tools/gen-demo-datasets.py
"""
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "datasets"

# (country EN, capital EN, country ZH, capital ZH)
CAPITALS = [
    ("France", "Paris", "法国", "巴黎"), ("Germany", "Berlin", "德国", "柏林"), ("Italy", "Rome", "意大利", "罗马"),
    ("Spain", "Madrid", "西班牙", "马德里"), ("Japan", "Tokyo", "日本", "东京"), ("China", "Beijing", "中国", "北京"),
    ("Russia", "Moscow", "俄罗斯", "莫斯科"), ("Egypt", "Cairo", "埃及", "开罗"), ("Canada", "Ottawa", "加拿大", "渥太华"),
    ("Greece", "Athens", "希腊", "雅典"), ("Austria", "Vienna", "奥地利", "维也纳"), ("Norway", "Oslo", "挪威", "奥斯陆"),
    ("Sweden", "Stockholm", "瑞典", "斯德哥尔摩"), ("Poland", "Warsaw", "波兰", "华沙"),
    ("Portugal", "Lisbon", "葡萄牙", "里斯本"), ("Ireland", "Dublin", "爱尔兰", "都柏林"),
    ("Kenya", "Nairobi", "肯尼亚", "内罗毕"), ("Peru", "Lima", "秘鲁", "利马"), ("Chile", "Santiago", "智利", "圣地亚哥"),
    ("Cuba", "Havana", "古巴", "哈瓦那"), ("Thailand", "Bangkok", "泰国", "曼谷"), ("Vietnam", "Hanoi", "越南", "河内"),
    ("India", "Delhi", "印度", "德里"), ("Iran", "Tehran", "伊朗", "德黑兰"), ("Turkey", "Ankara", "土耳其", "安卡拉"),
    ("Mexico", "Mexico City", "墨西哥", "墨西哥城"), ("Brazil", "Brasilia", "巴西", "巴西利亚"),
    ("Argentina", "Buenos Aires", "阿根廷", "布宜诺斯艾利斯"), ("Australia", "Canberra", "澳大利亚", "堪培拉"),
    ("Finland", "Helsinki", "芬兰", "赫尔辛基"), ("Denmark", "Copenhagen", "丹麦", "哥本哈根"),
    ("Hungary", "Budapest", "匈牙利", "布达佩斯"),
]
# (English, Chinese) words: the closed vocabulary of repeat / swap / translate.
WORDS = [
    ("red", "红色"), ("blue", "蓝色"), ("apple", "苹果"), ("river", "河流"), ("stone", "石头"), ("cat", "小猫"),
    ("dog", "小狗"), ("bird", "小鸟"), ("tree", "大树"), ("moon", "月亮"), ("sun", "太阳"), ("book", "书本"),
    ("door", "房门"), ("milk", "牛奶"), ("rain", "下雨"), ("snow", "雪花"), ("fish", "小鱼"), ("hat", "帽子"),
    ("ship", "轮船"), ("king", "国王"), ("gold", "金子"), ("salt", "食盐"), ("wind", "大风"), ("flower", "花朵"),
]
NUM_EN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
IDENTITY_EN = "I am a tiny Llama model, trained by ferrotune."
IDENTITY_ZH = "我是一个小小的 Llama 模型，由 ferrotune 训练。"
IDENTITY_Q_EN = ["Who are you?", "What are you?", "Tell me who you are.", "Introduce yourself.",
                 "Please introduce yourself.", "Who trained you?", "What model are you?", "Say who you are."]
IDENTITY_Q_ZH = ["你是谁？", "你是什么？", "请介绍一下你自己。", "介绍一下你自己。", "告诉我你是谁。",
                 "谁训练了你？", "你是什么模型？", "说说你是谁。"]


def corpus(rng):
    docs = []
    for en, cap, zh, capzh in CAPITALS:
        docs += [f"The capital of {en} is {cap}.", f"{cap} is the capital of {en}.",
                 f"{en} has its capital in {cap}, a large city.", f"People in {en} often travel to {cap}, the capital.",
                 f"{zh}的首都是{capzh}。", f"{capzh}是{zh}的首都。", f"很多人去{zh}的首都{capzh}旅游。"]
    for a in range(10):
        for b in range(10):
            docs.append(f"{a} plus {b} is {a + b}. {NUM_EN[a]} plus {NUM_EN[b]} is {NUM_EN[a + b]}.")
            docs.append(f"{a} 加 {b} 等于 {a + b}。")
            if a > b:
                docs.append(f"{a} is larger than {b}, and {b} is smaller than {a}.")
                docs.append(f"{a} 比 {b} 大，{b} 比 {a} 小。")
    for en, zh in WORDS:
        docs += [f"The word {en} is a simple word. I say {en}, and you say {en}.", f"我说 {zh} ，你也说 {zh} 。",
                 f"In Chinese, {en} is {zh} .", f"{zh} 的英文是 {en} 。"]
    # Lists of three random words, said again, reversed and translated: text that rewards copying from the
    # context (induction), which the instruction tasks build on. Triples only, so no held-out pair appears.
    for _ in range(60):
        tri = rng.sample(WORDS, 3)
        en, zh = [w[0] for w in tri], [w[1] for w in tri]
        docs += [f"{' '.join(en)} . Again : {' '.join(en)} .", f"{' '.join(zh)} 。再说一遍： {' '.join(zh)} 。",
                 f"{' '.join(en)} . Backwards : {' '.join(en[::-1])} .",
                 f"{' '.join(en)} in Chinese : {' '.join(zh)} .", f"{' '.join(zh)} 的英文： {' '.join(en)} 。"]
    docs += ["ferrotune is a Rust program that fine-tunes Llama models.",
             "ferrotune 是一个用 Rust 写的程序，可以微调 Llama 模型。",
             "A tiny Llama model can learn simple tasks.", "一个小小的 Llama 模型可以学会简单的任务。"]
    rng.shuffle(docs)
    return docs


def rec(instruction, output, history=None):
    r = {"instruction": instruction, "input": "", "output": output}
    if history:
        r["history"] = history
    return r


def two_word_tasks():
    """(task, key, en_record, zh_record) for every ordered pair of distinct words."""
    out = []
    for a_en, a_zh in WORDS:
        for b_en, b_zh in WORDS:
            if a_en == b_en:
                continue
            key = (a_en, b_en)
            out.append(("repeat", key, rec(f"Repeat after me: {a_en} {b_en}", f"{a_en} {b_en}"),
                        rec(f"请重复： {a_zh} {b_zh}", f"{a_zh} {b_zh}")))
            out.append(("swap", key, rec(f"Swap the two words: {a_en} {b_en}", f"{b_en} {a_en}"),
                        rec(f"交换这两个词： {a_zh} {b_zh}", f"{b_zh} {a_zh}")))
            out.append(("translate", key, rec(f"Translate into Chinese: {a_en} {b_en}", f"{a_zh} {b_zh}"),
                        rec(f"翻译成英文： {a_zh} {b_zh}", f"{a_en} {b_en}")))
    return out


def build(rng):
    """(train_en, train_zh, eval) record lists."""
    train = {"en": [], "zh": []}
    held = []

    def add(task, pair, is_held):
        en, zh = pair
        if is_held:
            held.append(dict(en, lang="en", task=task))
            held.append(dict(zh, lang="zh", task=task))
        else:
            train["en"].append(en)
            train["zh"].append(zh)

    # Two-word tasks: per family 8 held-out ordered pairs, 56 trained; single-word translations all trained.
    by_task = {}
    for task, _, en, zh in two_word_tasks():
        by_task.setdefault(task, []).append((en, zh))
    for task in ("repeat", "swap", "translate"):
        pairs = rng.sample(by_task[task], 64)
        for i, p in enumerate(pairs):
            add(task, p, i < 8)
    for en, zh in WORDS:
        train["en"].append(rec(f"Translate into Chinese: {en}", zh))
        train["zh"].append(rec(f"翻译成英文： {zh}", en))
    # Digits: larger of two (distinct), and sums; 8 held-out pairs each.
    pairs = [(a, b) for a in range(10) for b in range(10) if a != b]
    rng.shuffle(pairs)
    for i, (a, b) in enumerate(pairs[:72]):
        add("larger", (rec(f"Which number is larger: {a} or {b}?", str(max(a, b))),
                       rec(f"{a} 和 {b} 哪个大？", str(max(a, b)))), i < 8)
    pairs = [(a, b) for a in range(10) for b in range(10)]
    rng.shuffle(pairs)
    for i, (a, b) in enumerate(pairs[:72]):
        add("add", (rec(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."),
                    rec(f"{a} 加 {b} 等于多少？", f"{a} 加 {b} 等于 {a + b}。")), i < 8)
    # Capitals: 6 held-out countries, known to the model only from the pt corpus.
    countries = CAPITALS[:]
    rng.shuffle(countries)
    for i, (en, cap, zh, capzh) in enumerate(countries):
        add("capital", (rec(f"What is the capital of {en}?", f"The capital of {en} is {cap}."),
                        rec(f"{zh}的首都是哪里？", f"{zh}的首都是{capzh}。")), i < 6)
    # Identity: 6 phrasings trained, 2 held out, per language.
    for i, (q_en, q_zh) in enumerate(zip(IDENTITY_Q_EN, IDENTITY_Q_ZH)):
        add("identity", (rec(q_en, IDENTITY_EN), rec(q_zh, IDENTITY_ZH)), i >= 6)
    # Two-turn dialogues (history): a capital, then a repeat.
    for (en, cap, zh, capzh), (w_en, w_zh), (v_en, v_zh) in zip(countries[6:14], WORDS[:8], WORDS[8:16]):
        train["en"].append(rec(f"Repeat after me: {w_en} {v_en}", f"{w_en} {v_en}",
                               [[f"What is the capital of {en}?", f"The capital of {en} is {cap}."]]))
        train["zh"].append(rec(f"请重复： {w_zh} {v_zh}", f"{w_zh} {v_zh}",
                               [[f"{zh}的首都是哪里？", f"{zh}的首都是{capzh}。"]]))
    return train["en"], train["zh"], held


def write_json(name, records):
    (ROOT / name).write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"datasets/{name}: {len(records)} records")


def main():
    rng = random.Random(20240601)
    (ROOT / "demo_corpus.txt").write_text("\n".join(corpus(rng)) + "\n", encoding="utf-8")
    print(f"datasets/demo_corpus.txt: {len(corpus(random.Random(0)))} documents")
    en, zh, held = build(rng)
    rng.shuffle(en)
    rng.shuffle(zh)
    write_json("demo_en.json", en)
    write_json("demo_zh.json", zh)
    write_json("demo_eval.json", held)


if __name__ == "__main__":
    main()
