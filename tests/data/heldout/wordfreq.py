#!/usr/bin/env python3
"""Count words in text files and print the most common ones.

Usage:
    wordfreq.py [-n 20] [--min-length 3] [--ignore-case] FILE...
"""

import argparse
import re
import string
import sys
from collections import Counter
from pathlib import Path

WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*")
STOP_WORDS = {
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they",
    "this", "to", "was", "will", "with",
}  # fmt: skip


def read_text(path):
    """Return the contents of a file, or of stdin when the path is "-"."""
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def tokenize(text, ignore_case=False):
    words = WORD_RE.findall(text)
    if ignore_case:
        words = [w.lower() for w in words]
    return [w.strip("'-") for w in words if w.strip("'-")]


def count_words(paths, min_length=1, ignore_case=False, skip_stop_words=False):
    counts = Counter()
    for path in paths:
        for word in tokenize(read_text(path), ignore_case):
            if len(word) < min_length:
                continue
            if skip_stop_words and word.lower() in STOP_WORDS:
                continue
            counts[word] += 1
    return counts


def format_table(rows, total):
    if not rows:
        return "no words found"
    width = max(len(word) for word, _ in rows)
    lines = []
    for rank, (word, count) in enumerate(rows, start=1):
        share = 100.0 * count / total if total else 0.0
        lines.append(f"{rank:>3}. {word:<{width}}  {count:>6}  {share:5.1f}%")
    return "\n".join(lines)


def letter_histogram(counts):
    letters = Counter()
    for word, count in counts.items():
        for ch in word.lower():
            if ch in string.ascii_lowercase:
                letters[ch] += count
    total = sum(letters.values()) or 1
    rows = []
    for ch in string.ascii_lowercase:
        bar = "#" * round(50 * letters[ch] / total)
        rows.append(f"{ch} {bar}")
    return "\n".join(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Print the most common words in text files.")
    parser.add_argument("files", nargs="+", help="files to read; - for standard input")
    parser.add_argument("-n", "--top", type=int, default=20, help="how many words to show (default: 20)")
    parser.add_argument("--min-length", type=int, default=1, help="ignore shorter words")
    parser.add_argument("-i", "--ignore-case", action="store_true", help="fold case before counting")
    parser.add_argument("--no-stop-words", action="store_true", help="skip common English words")
    parser.add_argument("--letters", action="store_true", help="also print a letter histogram")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    missing = [p for p in args.files if p != "-" and not Path(p).is_file()]
    if missing:
        print(f"error: no such file: {missing[0]}", file=sys.stderr)
        return 2
    counts = count_words(
        args.files,
        min_length=args.min_length,
        ignore_case=args.ignore_case,
        skip_stop_words=args.no_stop_words,
    )
    total = sum(counts.values())
    print(format_table(counts.most_common(args.top), total))
    print(f"\n{len(counts)} distinct words, {total} in total")
    if args.letters:
        print()
        print(letter_histogram(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
