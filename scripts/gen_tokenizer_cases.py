#!/usr/bin/env python3
"""Generate tests/data/tokenizer_cases.json: strings and their GPT-2 token ids.

The ids come from this file's own small implementation of GPT-2's reference encoder algorithm
(OpenAI's gpt-2 encoder.py): the byte-to-unicode table, the pre-tokenization regex run with the
Python `regex` module, and the rank-ordered BPE merge loop, reading the same encoder.json and
vocab.bpe as the C++ tokenizer (scripts/get_tokenizer.sh). It shares no code with the C++ side,
so the C++ test (tests/cpu/test_tokenizer.cpp) checks the C++ tokenizer against an independent
reference.

A second, independent cross-check: the lead runs scripts/check_tokenizer_tiktoken.py on the GPU
machine, where tiktoken is installed; it compares this file against tiktoken's gpt2 encoding.

Unicode versions: the regex classes \\p{L}, \\p{N}, \\s depend on the Unicode tables of the
regex engine (Python `regex` here, PCRE2 10.42 = Unicode 14 in the C++ build, Rust tables in
tiktoken). They differ only on characters assigned after Unicode 14 (and U+180E, which PCRE2
still counts as \\s), so every string below uses characters from older Unicode blocks only.

Usage: scripts/gen_tokenizer_cases.py [--tokenizer-dir assets/gpt2] [--out tests/data/tokenizer_cases.json]
"""
import argparse
import json
import os
import random
import sys

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_to_unicode_table():
    """Map each byte 0..255 to a printable unicode character, as GPT-2 does.

    Bytes that are already printable Latin-1 characters ('!'..'~', '\u00a1'..'\u00ac',
    '\u00ae'..'\u00ff') map to themselves; the remaining 68 bytes map, in increasing byte order,
    to U+0100, U+0101, ...
    """
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table = {}
    next_cp = 0x100
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(next_cp)
            next_cp += 1
    return table


class ReferenceGPT2Encoder:
    def __init__(self, tokenizer_dir):
        with open(os.path.join(tokenizer_dir, "encoder.json"), encoding="utf-8") as f:
            self.token_to_id = json.load(f)
        with open(os.path.join(tokenizer_dir, "vocab.bpe"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        self.merge_rank = {pair: rank for rank, pair in reversed(list(enumerate(merges)))}
        self.byte_char = byte_to_unicode_table()
        self.pattern = regex.compile(GPT2_PATTERN)

    def bpe(self, word):
        """Apply merges to a word (a string of byte-characters): repeatedly take the adjacent pair
        with the lowest merge rank and merge all its non-overlapping occurrences left to right."""
        symbols = list(word)
        while len(symbols) > 1:
            pairs = {(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)}
            best = min(pairs, key=lambda p: self.merge_rank.get(p, float("inf")))
            if best not in self.merge_rank:
                break
            merged = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def encode(self, text):
        ids = []
        for piece in self.pattern.findall(text):
            word = "".join(self.byte_char[b] for b in piece.encode("utf-8"))
            ids.extend(self.token_to_id[t] for t in self.bpe(word))
        return ids


# Hand-picked cases: each exercises one part of the pre-tokenizer or of BPE.
HANDPICKED = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning God created the heaven and the earth.",
    "don't can't won't I'm we'll they've she'd it's you're",
    "DON'T I'M YOU'RE WE'LL",          # contractions are case-sensitive in GPT-2's pattern
    "''s 's 't x's ''",
    "rock 'n' roll, 'quoted' and \"double quoted\"",
    "12345678901234567890",
    "3.14159 1,000,000 -42 +7e10 0x1F 1st 2nd",
    "a     b",                          # a run of spaces before a word
    "trailing spaces   ",
    "   leading spaces",
    "tab\tseparated\t\tvalues\t",
    "line one\nline two\n\nline four\n",
    "windows\r\nline endings\r\n",
    "\n\n\n   \n\t \n",
    " \u00a0non\u00a0breaking\u3000ideographic\u2003em space",
    "!!!???... --- *** ### @@@ $$$ %%%",
    "def f(x):\n    return x**2 + 1  # comment\n",
    "https://example.com/path?query=1&b=two#frag",
    "user@example.org, (555) 123-4567",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe \u00e5ngstr\u00f6m",
    "cafe\u0301 combining acute, n\u0303",   # combining marks are neither \p{L} nor \p{N}
    "\u4f60\u597d\uff0c\u4e16\u754c\u3002\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u05e9\u05dc\u05d5\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "emoji \U0001f600\U0001f680\U0001f44d\U0001f3fd \u2764\ufe0f",
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467 flags \U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5",
    "Hello\u4e16\u754c123abc\u0434\u0430\u00e9\U0001f600x",
    "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "a" * 300,
    "abcdefghij" * 40,
    " <|endoftext|>",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "\u00bd \u00b2 \u2153 \u2167 \u0663\u0664 \u096a\u096b",   # numeric characters of other scripts
    "math: \u2200x\u2208\u211d, x\u00b2 \u2265 0 \u2211 \u222b \u221e \u2260 \u2248",
    "zero\u200bwidth\u200cjoiners\u200d",
    "\x00\x01\x07\x1b[31mred\x1b[0m\x7f",
    "    indented code\n\tand a tab\n",
    "The year 2024 had 366 days; 1999 didn't.",
    "CamelCaseIdentifier snake_case_name kebab-case-name SCREAMING_CASE",
]

# Character pools for the random cases (all assigned in Unicode <= 14, see the docstring).
POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " ",
    "  \t\n\r",
    "'",
    ".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`\"",
    "\u00e9\u00e8\u00ea\u00e0\u00e7\u00f1\u00f6\u00fc\u00df\u00c5\u00d8",
    "\u4e00\u4e8c\u4e09\u4eba\u5927\u5c0f\u5c71\u6c34\u706b\u6728\u91d1\u571f",
    "\u3042\u3044\u3046\u30a2\u30a4\u30a6\u30fc",
    "\u0430\u0431\u0432\u0433\u0434\u0435\u0436\u0437\u0438\u0439",
    "\u03b1\u03b2\u03b3\u03b4\u03b5",
    "\U0001f600\U0001f602\U0001f44d\U0001f680\u2764\ufe0f\u200d",
    "\u00a0\u3000\u2003\u0085",
    "\u0301\u0308\u20ac\u00a3\u00a5\u00b0\u00b1\u00bd\u00b2",
]


def random_cases(n, seed):
    rng = random.Random(seed)
    words = ["the", "and", "of", "don't", "it's", "we'll", "1999", "3.5", "Hello", "world",
             "\u4f60\u597d", "caf\u00e9", "naive", " ", "  ", "\n", "\t", "<|endoftext|>", "'s"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 30)):
            if rng.random() < 0.4:
                parts.append(rng.choice(words))
            else:
                pool = rng.choice(POOLS)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
        out.append("".join(parts))
    return out


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer-dir", default=os.path.join(root, "assets", "gpt2"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "data", "tokenizer_cases.json"))
    ap.add_argument("--random", type=int, default=200, help="number of random strings to add")
    ap.add_argument("--seed", type=int, default=20240520)
    args = ap.parse_args()
    for f in ("encoder.json", "vocab.bpe"):
        if not os.path.isfile(os.path.join(args.tokenizer_dir, f)):
            sys.exit(f"missing {os.path.join(args.tokenizer_dir, f)}: run scripts/get_tokenizer.sh")
    enc = ReferenceGPT2Encoder(args.tokenizer_dir)
    texts = HANDPICKED + random_cases(args.random, args.seed)
    cases = [{"text": t, "ids": enc.encode(t)} for t in texts]
    doc = {
        "generator": "scripts/gen_tokenizer_cases.py (reference GPT-2 encoder in Python, regex module "
                     + regex.__version__ + ")",
        "pattern": GPT2_PATTERN,
        "cases": cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        # One case per line keeps the file reviewable and its diffs small.
        f.write("{\n")
        f.write(f'  "generator": {json.dumps(doc["generator"])},\n')
        f.write(f'  "pattern": {json.dumps(doc["pattern"])},\n')
        f.write('  "cases": [\n')
        for i, c in enumerate(cases):
            sep = "," if i + 1 < len(cases) else ""
            f.write(f"    {json.dumps(c, ensure_ascii=False)}{sep}\n")
        f.write("  ]\n}\n")
    n_tokens = sum(len(c["ids"]) for c in cases)
    print(f"wrote {args.out}: {len(cases)} cases, {n_tokens} tokens")


if __name__ == "__main__":
    main()
