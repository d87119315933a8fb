"""
GSM8K (Cobbe et al., 2021) in the project schema: data/gsm8k/{train,test}.jsonl with rows
{"question", "solution", "answer"}, read by common.load_problems("gsm8k", split).

Conversion of one raw row {"question", "answer": "<reasoning lines>\\n#### N"}:
  1. answer   = N after the last "####", thousands commas removed ("1,080" -> "1080").
  2. solution = the reasoning lines, calculator annotations "<<16-3-4=9>>" removed, one step per
                line joined by a blank line (the project's step separator, METHOD §3), plus a last
                step "The answer is \\boxed{N}." so every stage reads the final answer the same way.
  3. question = the question, stripped.
A row that is not JSON, lacks a question, or has no "#### N" is an error naming the file and line;
with --skip-bad it is skipped and counted instead.

Usage:
    python data/gsm8k/prepare.py                          # ../shared/data/gsm8k if present, else the hub
    python data/gsm8k/prepare.py --source path/to/dir     # dir with train.jsonl / test.jsonl
    python data/gsm8k/prepare.py --source openai/gsm8k    # hub id (needs `datasets` and internet)
"""

import argparse
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
LOCAL_DEFAULT = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data", "gsm8k"))
HUB_DEFAULT = "openai/gsm8k"
CALC = re.compile(r"<<[^<>]*>>")  # GSM8K calculator annotations, e.g. <<16-3-4=9>>


class BadRow(ValueError):
    """A raw row that cannot be converted (the message says why)."""


def convert_row(raw):
    """A raw GSM8K row -> {"question", "solution", "answer"}; raises BadRow."""
    if not isinstance(raw, dict):
        raise BadRow("row is not a JSON object")
    question, text = raw.get("question"), raw.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise BadRow("missing or empty 'question'")
    if not isinstance(text, str) or "####" not in text:
        raise BadRow("'answer' has no '#### N' final answer")
    reasoning, gold = text.rsplit("####", 1)
    gold = gold.strip().replace(",", "")
    if not gold:
        raise BadRow("empty final answer after '####'")
    steps = [CALC.sub("", line).strip() for line in reasoning.split("\n")]
    steps = [s for s in steps if s]
    steps.append(f"The answer is \\boxed{{{gold}}}.")
    return {"question": question.strip(), "solution": "\n\n".join(steps), "answer": gold}


# NOTE: convert_lines, read_split and write_jsonl are deliberate twins of data/math/prepare.py: each prepare
# script runs alone (nanoGPT's data/*/prepare.py pattern), so a fix here goes there too.
def convert_lines(lines, source, skip_bad=False):
    """Convert raw JSONL lines; returns (rows, n_skipped). Errors name `source` and the line number."""
    rows, skipped = [], 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadRow(f"not valid JSON ({e.msg})") from None
            rows.append(convert_row(raw))
        except BadRow as e:
            if not skip_bad:
                raise ValueError(f"{source}:{lineno}: {e} (use --skip-bad to skip such rows)") from None
            skipped += 1
    return rows, skipped


def read_split(source, split):
    """(lines, name) of one split from a local dir / .jsonl file, or a hub id via `datasets`."""
    if os.path.isdir(source) or source.endswith(".jsonl"):
        path = os.path.join(source, f"{split}.jsonl") if os.path.isdir(source) else source
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines(), path
    from datasets import load_dataset  # hub path, for online users only

    ds = load_dataset(source, "main", split=split)
    return [json.dumps(r) for r in ds], f"{source}[{split}]"


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=LOCAL_DEFAULT if os.path.isdir(LOCAL_DEFAULT) else HUB_DEFAULT,
                   help="local dir with <split>.jsonl, or a hub id (default: ../shared/data/gsm8k "
                        f"if present, else {HUB_DEFAULT})")
    p.add_argument("--splits", default="train,test", help="comma-separated splits")
    p.add_argument("--out-dir", default=HERE, help="where <split>.jsonl are written")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad rows instead of failing")
    args = p.parse_args(argv)

    os.makedirs(args.out_dir, exist_ok=True)
    for split in args.splits.split(","):
        lines, name = read_split(args.source, split)
        rows, skipped = convert_lines(lines, name, args.skip_bad)
        out = os.path.join(args.out_dir, f"{split}.jsonl")
        write_jsonl(out, rows)
        print(f"{name}: wrote {len(rows)} rows to {out} ({skipped} bad rows skipped)")


if __name__ == "__main__":
    main()
