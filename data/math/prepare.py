"""
MATH (Hendrycks et al., 2021) and MATH500 (the 500-problem test subset of Lightman et al., 2023) in
the project schema: data/math/{train,test}.jsonl and data/math500/test.jsonl with rows
{"question", "solution", "answer", "subject", "level", "unique_id"}, read by
common.load_problems("math" | "math500", split).

Conversion of one raw row {"problem", "solution", ["answer"], ...}:
  1. question = problem, stripped.
  2. answer   = the row's `answer` field when present and non-empty, else the content of the last
                \\boxed{...} / \\fbox{...} of the solution (brace-matched, nested braces allowed).
  3. solution = the solution text unchanged (MATH paragraphs are already separated by blank lines).
  Other fields (subject or type, level, unique_id) are kept when present. Rows of a split named
  *prm800k* (train_prm800k_12k: PRM800K's 12k problems, about 4,500 of them from the MATH test set)
  get "source": "prm800k", and every stage that reads them warns to evaluate on MATH500.
A row that is not JSON, lacks a problem or a solution, or has no gold answer by rule 2 is an error
naming the file and line; with --skip-bad it is skipped and counted instead.

Usage:
    python data/math/prepare.py                           # math train/test + math500 test from ../shared/data
    python data/math/prepare.py --names math500           # only MATH500
    python data/math/prepare.py --names math --splits train,test,train_prm800k_12k
    python data/math/prepare.py --names math500 --source HuggingFaceH4/MATH-500   # hub id, online users
"""

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data"))
# per dataset name: (local default dir, hub id for online users, default splits)
SOURCES = {
    "math": (os.path.join(SHARED, "math"), "DigitalLearningGmbH/MATH-lighteval", "train,test"),
    "math500": (os.path.join(SHARED, "math500"), "HuggingFaceH4/MATH-500", "test"),
}


class BadRow(ValueError):
    """A raw row that cannot be converted (the message says why)."""


def last_boxed(text):
    """Content of the last \\boxed{...} or \\fbox{...} in text (balanced braces), or None."""
    best = -1
    for cmd in ("\\boxed{", "\\fbox{"):
        i = text.rfind(cmd)
        if i > best:
            best, start = i, i + len(cmd)
    if best < 0:
        return None
    depth = 1
    for k in range(start, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[start:k]
    return None  # unbalanced


def convert_row(raw):
    """A raw MATH row -> project schema dict; raises BadRow."""
    if not isinstance(raw, dict):
        raise BadRow("row is not a JSON object")
    question = raw.get("problem", raw.get("question"))
    solution = raw.get("solution")
    if not isinstance(question, str) or not question.strip():
        raise BadRow("missing or empty 'problem'")
    if not isinstance(solution, str) or not solution.strip():
        raise BadRow("missing or empty 'solution'")
    answer = raw.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        answer = last_boxed(solution)
    if answer is None or not answer.strip():
        raise BadRow("no 'answer' field and no \\boxed{} answer in the solution")
    row = {"question": question.strip(), "solution": solution.strip(), "answer": answer.strip()}
    for key, new in (("subject", "subject"), ("type", "subject"), ("level", "level"), ("unique_id", "unique_id")):
        if key in raw and new not in row:
            row[new] = raw[key]
    return row


# NOTE: convert_lines, read_split and write_jsonl are deliberate twins of data/gsm8k/prepare.py: each prepare
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

    ds = load_dataset(source, split=split)
    return [json.dumps(r) for r in ds], f"{source}[{split}]"


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", default="math,math500", help="comma-separated: math, math500")
    p.add_argument("--source", default=None,
                   help="local dir with <split>.jsonl, a .jsonl file, or a hub id (only with one name; "
                        "default: ../shared/data/<name> if present, else the hub id in SOURCES)")
    p.add_argument("--splits", default=None, help="comma-separated splits (default: math train,test; math500 test)")
    p.add_argument("--out-root", default=os.path.dirname(HERE), help="<out-root>/<name>/<split>.jsonl")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad rows instead of failing")
    args = p.parse_args(argv)

    names = args.names.split(",")
    for name in names:
        if name not in SOURCES:
            p.error(f"unknown name {name!r} (expected math or math500)")
    if args.source and len(names) > 1:
        p.error("--source needs a single --names entry")
    for name in names:
        local, hub, splits = SOURCES[name]
        source = args.source or (local if os.path.isdir(local) else hub)
        out_dir = os.path.join(args.out_root, name)
        os.makedirs(out_dir, exist_ok=True)
        for split in (args.splits or splits).split(","):
            lines, src = read_split(source, split)
            rows, skipped = convert_lines(lines, src, args.skip_bad)
            if "prm800k" in split:  # NOTE: PRM800K's 12k split holds ~4,500 MATH test problems; the stages warn
                rows = [{**r, "source": "prm800k"} for r in rows]
            out = os.path.join(out_dir, f"{split}.jsonl")
            write_jsonl(out, rows)
            print(f"{src}: wrote {len(rows)} rows to {out} ({skipped} bad rows skipped)")


if __name__ == "__main__":
    main()
