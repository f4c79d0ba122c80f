#!/usr/bin/env python3
"""Cross-check tests/data/tokenizer_cases.json against tiktoken's GPT-2 encoding, offline.

tiktoken.get_encoding("gpt2") would download its BPE files; instead this script builds the same
encoding with tiktoken.Encoding(...) from the local encoder.json / vocab.bpe (assets/gpt2, made by
scripts/get_tokenizer.sh; on a machine without network, copy that folder there). tiktoken ranks
are token ids: GPT-2's ids are the byte tokens followed by the merges in vocab.bpe order, which
this script checks before using them. Prints every mismatch; exits non-zero on any.

Usage: scripts/check_tokenizer_tiktoken.py [--tokenizer-dir assets/gpt2] [--cases tests/data/tokenizer_cases.json]
"""
import argparse
import json
import os
import sys

# GPT-2's pattern, as in tiktoken's own gpt2 definition (same alternatives, written compactly there).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


def byte_to_unicode_table():
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, next_cp = {}, 0x100
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(next_cp)
            next_cp += 1
    return table


def load_ranks(tokenizer_dir):
    enc_path = os.path.join(tokenizer_dir, "encoder.json")
    bpe_path = os.path.join(tokenizer_dir, "vocab.bpe")
    for p in (enc_path, bpe_path):
        if not os.path.isfile(p):
            sys.exit(f"missing {p}: run scripts/get_tokenizer.sh (or copy assets/gpt2 to this machine)")
    with open(enc_path, encoding="utf-8") as f:
        encoder = json.load(f)
    char_to_byte = {c: b for b, c in byte_to_unicode_table().items()}
    ranks = {}
    for text, token_id in encoder.items():
        if text == EOT:
            continue
        ranks[bytes(char_to_byte[c] for c in text)] = token_id
    # Check that ids are exactly "256 byte tokens, then one token per merge in file order", the
    # premise of using ids as tiktoken ranks.
    with open(bpe_path, encoding="utf-8") as f:
        merges = [line.split(" ") for line in f.read().split("\n")[1:] if line]
    for rank, (left, right) in enumerate(merges):
        if encoder[left + right] != 256 + rank:
            sys.exit(f"{bpe_path}: merge {rank} ({left} {right}) has id {encoder[left + right]}, not {256 + rank}")
    if sorted(ranks.values()) != list(range(len(ranks))):
        sys.exit(f"{enc_path}: ids are not 0..{len(ranks) - 1}")
    return ranks, encoder[EOT]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer-dir", default=os.path.join(root, "assets", "gpt2"))
    ap.add_argument("--cases", default=os.path.join(root, "tests", "data", "tokenizer_cases.json"))
    args = ap.parse_args()
    try:
        import tiktoken
    except ImportError:
        sys.exit("tiktoken is not installed here (it is on the GPU machine)")
    ranks, eot_id = load_ranks(args.tokenizer_dir)
    enc = tiktoken.Encoding(
        name="gpt2_local",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: eot_id},
        explicit_n_vocab=len(ranks) + 1,
    )
    with open(args.cases, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    mismatches = 0
    for i, case in enumerate(cases):
        got = enc.encode_ordinary(case["text"])
        if got != case["ids"]:
            mismatches += 1
            print(f"MISMATCH case {i} {case['text']!r}:\n  file     {case['ids']}\n  tiktoken {got}")
    n_tokens = sum(len(c["ids"]) for c in cases)
    print(f"{len(cases) - mismatches} passed, {mismatches} failed ({len(cases)} cases, {n_tokens} tokens, tiktoken {tiktoken.__version__})")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
