#!/usr/bin/env python3
"""Generates the demo assets of `just finetune` (committed under datasets/; rerun only to change them).

  datasets/demo_corpus.txt       English + Chinese sentences for the `pt` stage (one document per line):
                                 capital-city facts in several phrasings, plus number and colour sentences.
  datasets/demo_sft_en.json      alpaca-format English instructions: capital questions, "repeat", additions.
  datasets/demo_sft_zh.json      the same tasks in Chinese.
  datasets/demo_eval.json        held-out prompts (countries, words and sums the SFT sets never show), with
                                 the exact expected answer, for the before/after exact-match score.

Deterministic (fixed seed), standard library only.
"""

import json
import os
import random

random.seed(20240601)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "datasets")

# (country EN, capital EN, country ZH, capital ZH)
CAPITALS = [
    ("France", "Paris", "法国", "巴黎"),
    ("Germany", "Berlin", "德国", "柏林"),
    ("Italy", "Rome", "意大利", "罗马"),
    ("Spain", "Madrid", "西班牙", "马德里"),
    ("Japan", "Tokyo", "日本", "东京"),
    ("China", "Beijing", "中国", "北京"),
    ("Russia", "Moscow", "俄罗斯", "莫斯科"),
    ("Egypt", "Cairo", "埃及", "开罗"),
    ("Canada", "Ottawa", "加拿大", "渥太华"),
    ("Greece", "Athens", "希腊", "雅典"),
    ("Austria", "Vienna", "奥地利", "维也纳"),
    ("Norway", "Oslo", "挪威", "奥斯陆"),
    ("Sweden", "Stockholm", "瑞典", "斯德哥尔摩"),
    ("Poland", "Warsaw", "波兰", "华沙"),
    ("Portugal", "Lisbon", "葡萄牙", "里斯本"),
    ("Ireland", "Dublin", "爱尔兰", "都柏林"),
    ("Kenya", "Nairobi", "肯尼亚", "内罗毕"),
    ("Peru", "Lima", "秘鲁", "利马"),
    ("Chile", "Santiago", "智利", "圣地亚哥"),
    ("Cuba", "Havana", "古巴", "哈瓦那"),
    ("Thailand", "Bangkok", "泰国", "曼谷"),
    ("Vietnam", "Hanoi", "越南", "河内"),
    ("India", "Delhi", "印度", "德里"),
    ("Iran", "Tehran", "伊朗", "德黑兰"),
    ("Turkey", "Ankara", "土耳其", "安卡拉"),
    ("Mexico", "Mexico City", "墨西哥", "墨西哥城"),
    ("Brazil", "Brasilia", "巴西", "巴西利亚"),
    ("Argentina", "Buenos Aires", "阿根廷", "布宜诺斯艾利斯"),
    ("Australia", "Canberra", "澳大利亚", "堪培拉"),
    ("Finland", "Helsinki", "芬兰", "赫尔辛基"),
    ("Denmark", "Copenhagen", "丹麦", "哥本哈根"),
    ("Hungary", "Budapest", "匈牙利", "布达佩斯"),
]
WORDS = [
    "red", "blue", "green", "apple", "river", "stone", "cat", "dog", "bird", "tree", "moon", "sun",
    "book", "door", "milk", "rain", "snow", "fish", "hat", "ship", "king", "gold", "salt", "wind",
]
WORDS_ZH = ["红色", "蓝色", "苹果", "河流", "石头", "小猫", "小狗", "鸟", "树", "月亮", "太阳", "书",
            "门", "牛奶", "雨", "雪", "鱼", "帽子", "船", "国王", "金子", "盐", "风", "花"]
NUM_EN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]


def corpus():
    docs = []
    for en, cap, zh, capzh in CAPITALS:
        docs += [
            f"The capital of {en} is {cap}.",
            f"{cap} is the capital of {en}.",
            f"{en} has its capital in {cap}, a large city.",
            f"People in {en} often travel to {cap}, the capital.",
            f"{zh}的首都是{capzh}。",
            f"{capzh}是{zh}的首都。",
            f"很多人去{zh}的首都{capzh}旅游。",
        ]
    for a in range(10):
        for b in range(10):
            if a + b <= 18:
                docs.append(f"{a} plus {b} is {a + b}. {NUM_EN[a]} plus {NUM_EN[b]} is {NUM_EN[a + b]}.")
                docs.append(f"{a}加{b}等于{a + b}。")
    for w, z in zip(WORDS, WORDS_ZH):
        docs.append(f"The word {w} is a simple word. I say {w}, and you say {w}.")
        docs.append(f"“{z}”是一个简单的词。我说{z}，你也说{z}。")
    random.shuffle(docs)
    return docs


def tasks():
    """(lang, kind, key, instruction, output) for every task item."""
    items = []
    for en, cap, zh, capzh in CAPITALS:
        items.append(("en", "capital", en, f"What is the capital of {en}?", f"The capital of {en} is {cap}."))
        items.append(("zh", "capital", en, f"{zh}的首都是哪里？", f"{zh}的首都是{capzh}。"))
    for w in WORDS:
        for v in WORDS:
            if w != v:
                items.append(("en", "repeat", f"{w} {v}", f"Repeat after me: {w} {v}", f"{w} {v}"))
    for w in WORDS_ZH:
        for v in WORDS_ZH:
            if w != v:
                items.append(("zh", "repeat", f"{w}{v}", f"请重复：{w}{v}", f"{w}{v}"))
    for a in range(10):
        for b in range(10):
            items.append(("en", "add", f"{a}+{b}", f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
            items.append(("zh", "add", f"{a}+{b}", f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。"))
    return items


def main():
    os.makedirs(ROOT, exist_ok=True)
    with open(os.path.join(ROOT, "demo_corpus.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(corpus()) + "\n")
    items = tasks()
    # Held out: 6 countries (both languages), sums a+b with (a*3+b) % 7 == 0, and a fixed sample of
    # repeat pairs; everything else trains (subsampled so the SFT run stays short).
    held_countries = {c[0] for c in random.sample(CAPITALS, 6)}
    train, held = [], []
    for it in items:
        lang, kind, key, _, _ = it
        if kind == "capital":
            (held if key in held_countries else train).append(it)
        elif kind == "add":
            a, b = map(int, key.split("+"))
            (held if (a * 3 + b) % 7 == 0 else train).append(it)
        else:
            (held if random.random() < 0.03 else train).append(it)
    repeat_train = [t for t in train if t[1] == "repeat"]
    other_train = [t for t in train if t[1] != "repeat"]
    train = other_train + random.sample(repeat_train, 160)
    random.shuffle(train)
    held_repeat = [t for t in held if t[1] == "repeat"]
    held = [t for t in held if t[1] != "repeat"] + random.sample(held_repeat, min(12, len(held_repeat)))
    for lang in ("en", "zh"):
        recs = [{"instruction": t[3], "input": "", "output": t[4]} for t in train if t[0] == lang]
        with open(os.path.join(ROOT, f"demo_sft_{lang}.json"), "w", encoding="utf-8") as f:
            json.dump(recs, f, ensure_ascii=False, indent=1)
    ev = [{"instruction": t[3], "input": "", "output": t[4], "lang": t[0], "task": t[1]} for t in held]
    with open(os.path.join(ROOT, "demo_eval.json"), "w", encoding="utf-8") as f:
        json.dump(ev, f, ensure_ascii=False, indent=1)
    print(f"corpus docs {len(corpus())}, sft train {len(train)}, held-out {len(held)}")


if __name__ == "__main__":
    main()
