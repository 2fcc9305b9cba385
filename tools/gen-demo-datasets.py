#!/usr/bin/env python3
"""Generates ferrotune's own demo instruction sets (datasets/demo_en.json, datasets/demo_zh.json).

Small, simple and regular on purpose: arithmetic, capitals, opposites, letter/format tasks and a few
two-turn dialogues, so a tiny model can visibly learn them in the demo fine-tune. Deterministic (fixed seed);
rerun it to regenerate the committed files: python3 tools/gen-demo-datasets.py
"""
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "datasets"

CAPITALS = [
    ("France", "Paris", "法国", "巴黎"), ("Germany", "Berlin", "德国", "柏林"), ("Italy", "Rome", "意大利", "罗马"),
    ("Spain", "Madrid", "西班牙", "马德里"), ("Japan", "Tokyo", "日本", "东京"), ("China", "Beijing", "中国", "北京"),
    ("Egypt", "Cairo", "埃及", "开罗"), ("Canada", "Ottawa", "加拿大", "渥太华"), ("Russia", "Moscow", "俄罗斯", "莫斯科"),
    ("India", "New Delhi", "印度", "新德里"), ("Kenya", "Nairobi", "肯尼亚", "内罗毕"), ("Peru", "Lima", "秘鲁", "利马"),
    ("Greece", "Athens", "希腊", "雅典"), ("Norway", "Oslo", "挪威", "奥斯陆"), ("Thailand", "Bangkok", "泰国", "曼谷"),
    ("Portugal", "Lisbon", "葡萄牙", "里斯本"), ("Austria", "Vienna", "奥地利", "维也纳"), ("Poland", "Warsaw", "波兰", "华沙"),
    ("Cuba", "Havana", "古巴", "哈瓦那"), ("Chile", "Santiago", "智利", "圣地亚哥"),
]
OPPOSITES = [
    ("hot", "cold", "热", "冷"), ("big", "small", "大", "小"), ("fast", "slow", "快", "慢"), ("up", "down", "上", "下"),
    ("day", "night", "白天", "黑夜"), ("open", "closed", "开", "关"), ("happy", "sad", "高兴", "难过"),
    ("light", "dark", "明亮", "黑暗"), ("early", "late", "早", "晚"), ("full", "empty", "满", "空"),
    ("old", "new", "旧", "新"), ("high", "low", "高", "低"), ("left", "right", "左", "右"), ("long", "short", "长", "短"),
    ("buy", "sell", "买", "卖"),
]
WORDS = ["apple", "river", "stone", "garden", "window", "planet", "music", "bridge", "yellow", "forest",
         "candle", "rocket", "silver", "island", "pencil"]
ZH_DIGITS = "零一二三四五六七八九"
ZH_WORDS = [("苹果", "apple"), ("太阳", "sun"), ("月亮", "moon"), ("水", "water"), ("书", "book"), ("猫", "cat"),
            ("狗", "dog"), ("学校", "school"), ("朋友", "friend"), ("老师", "teacher"), ("花", "flower"),
            ("山", "mountain"), ("雨", "rain"), ("电脑", "computer"), ("音乐", "music")]


def zh_number(n):
    """Chinese numerals for 0..99."""
    if n < 10:
        return ZH_DIGITS[n]
    tens, ones = divmod(n, 10)
    head = ("" if tens == 1 else ZH_DIGITS[tens]) + "十"
    return head + ("" if ones == 0 else ZH_DIGITS[ones])


def rec(instruction, output, inp="", history=None):
    r = {"instruction": instruction, "input": inp, "output": output}
    if history:
        r["history"] = history
    return r


def english(rng):
    out = []
    for _ in range(30):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        out.append(rec(f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
    for _ in range(20):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        out.append(rec(f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
    for c, cap, _, _ in CAPITALS:
        out.append(rec(f"What is the capital of {c}?", f"The capital of {c} is {cap}."))
    for w, o, _, _ in OPPOSITES:
        out.append(rec(f"What is the opposite of \"{w}\"?", f"The opposite of \"{w}\" is \"{o}\"."))
    for w in WORDS:
        out.append(rec("Convert the word to uppercase.", w.upper(), w))
        out.append(rec("Reverse the letters of the word.", w[::-1], w))
        out.append(rec(f"How many letters are in the word \"{w}\"?", f"The word \"{w}\" has {len(w)} letters."))
    for _ in range(15):
        nums = rng.sample(range(1, 100), 5)
        out.append(rec("Sort these numbers in ascending order.", ", ".join(map(str, sorted(nums))),
                       ", ".join(map(str, nums))))
    for c, cap, _, _ in CAPITALS[:10]:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        out.append(rec(f"And what is {a} + {b}?", f"{a} + {b} = {a + b}.",
                       history=[[f"What is the capital of {c}?", f"The capital of {c} is {cap}."]]))
    return out


def chinese(rng):
    out = []
    for _ in range(30):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        out.append(rec(f"计算 {a} 加 {b} 等于多少？", f"{a} 加 {b} 等于 {a + b}。"))
    for _ in range(20):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        out.append(rec(f"{a} 乘以 {b} 是多少？", f"{a} 乘以 {b} 等于 {a * b}。"))
    for _, _, c, cap in CAPITALS:
        out.append(rec(f"{c}的首都是哪里？", f"{c}的首都是{cap}。"))
    for _, _, w, o in OPPOSITES:
        out.append(rec(f"“{w}”的反义词是什么？", f"“{w}”的反义词是“{o}”。"))
    for zh, en in ZH_WORDS:
        out.append(rec("把这个词翻译成英文。", en, zh))
        out.append(rec(f"“{en}”的中文是什么？", f"“{en}”的中文是“{zh}”。"))
    for _ in range(25):
        n = rng.randint(0, 99)
        out.append(rec(f"用汉字写出数字 {n}。", zh_number(n)))
    for _ in range(15):
        nums = rng.sample(range(1, 100), 5)
        out.append(rec("把这些数字从小到大排列。", "，".join(map(str, sorted(nums))), "，".join(map(str, nums))))
    for _, _, c, cap in CAPITALS[:10]:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        out.append(rec(f"那么 {a} 加 {b} 呢？", f"{a} 加 {b} 等于 {a + b}。",
                       history=[[f"{c}的首都是哪里？", f"{c}的首都是{cap}。"]]))
    return out


def main():
    rng = random.Random(20240601)
    for name, records in [("demo_en.json", english(rng)), ("demo_zh.json", chinese(rng))]:
        rng.shuffle(records)
        text = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
        (ROOT / name).write_text(text, encoding="utf-8")
        print(f"{name}: {len(records)} records")


if __name__ == "__main__":
    main()
