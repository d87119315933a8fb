"""
Math-Shepherd (Wang et al., 2024, arXiv 2312.08935; hub: peiyi9979/Math-Shepherd: automatic
Monte-Carlo step labels of GSM8K and MATH solutions) as step-labeled records for
`prm_train.py --data`: data/math_shepherd/train.jsonl.

Output: one JSON object per line, the schema prm_train.py reads (its own Monte-Carlo labeler writes
the same keys, plus answer / id / sample / response / finished / soft):

    {"question": str, "steps": [str, ...], "labels": [float in [0, 1], one per step], "correct": 0 | 1}

  A step never contains the step separator (--step-sep, default a blank line), so splitting the
  joined steps at scoring time gives them back. prm_train reads a label > 0 as a good step (hard
  target) and the label itself as the soft target; "correct" is the ORM target.

Conversion of one raw row {"input": "<q> Step 1: ... ки\\nStep 2: ... ки", "label": the same text
with every tag replaced by "+" or "-", "task"}:
  1. Split "input" at the step tag (--tag, default "ки"); a row without a tag is an error.
  2. Label of step k = 1.0 if "label" has "+" where "input" has its k-th tag, 0.0 for "-"; any other
     character means the two texts disagree: an error naming the row.
  3. question = the text before "Step 1:"; steps lose their "Step k:" prefix (prm_train's
     math-shepherd input format adds it back) and the separator (replaced by one newline).
  4. correct = the last step's label.
Input: a hub id (online) or local files, JSONL or pretty-printed JSON objects one after another.

Usage:
    python data/math_shepherd/prepare.py                          # the hub copy (needs `datasets`, internet)
    python data/math_shepherd/prepare.py --source path/to/math-shepherd.jsonl --out data/math_shepherd/train.jsonl
    python prm_train.py --init <model> --data data/math_shepherd/train.jsonl --step-tag "ки" ...
"""

import argparse
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
HUB_DEFAULT = "peiyi9979/Math-Shepherd"
MATH_SHEPHERD_TAG = "ки"  # = rewards.MATH_SHEPHERD_TAG, the tag of the data set and its PRMs
DEFAULT_STEP_SEP = "\n\n"  # = rewards.DEFAULT_STEP_SEP, the project's step separator (METHOD §3)


# -----------------------------------------------------------------------------
# NOTE: deliberate twin of data/prm800k/prepare.py (same lines there): every prepare script
# stands alone, as data/gsm8k and data/math do. Change both together.

def _json_objects(path):
    """JSON objects of a file: JSONL, or pretty-printed objects one after another."""
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        s = f.read()
    i, out = 0, []
    while True:
        while i < len(s) and s[i].isspace():
            i += 1
        if i >= len(s):
            return out
        try:
            obj, i = dec.raw_decode(s, i)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: bad JSON at line {s.count(chr(10), 0, i) + 1} ({e.msg})") from None
        out.append(obj)


def _clean_step(step, sep):
    # NOTE: a step that contains the separator would be split in two at scoring time; join its lines
    return step.replace(sep, "\n").strip()


def read_rows(sources, split="train"):
    """Raw rows of local files (JSONL or JSON objects), or of a hub id via `datasets` (online)."""
    rows = []
    for src in sources:
        if os.path.exists(src):
            rows += _json_objects(src)
        else:  # NOTE: hub path for online users; tests never hit it
            import datasets

            rows += list(datasets.load_dataset(src, split=split))
    if not rows:
        raise ValueError(f"{' '.join(sources)}: no records")
    return rows


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")

# end of the twin lines
# -----------------------------------------------------------------------------


def read_math_shepherd(rows, tag=MATH_SHEPHERD_TAG, sep=DEFAULT_STEP_SEP):
    """Math-Shepherd rows {"input": "<q> Step 1: ... ки\\nStep 2: ... ки", "label": same with +/-}.

    "label" is "input" with every tag replaced by "+" or "-". Steps lose their "Step k:" prefix
    (the math-shepherd input format adds it back); correct = the last step's label.
    """
    out = []
    for n, row in enumerate(rows):
        if not (isinstance(row.get("input"), str) and isinstance(row.get("label"), str)):
            raise ValueError(f"Math-Shepherd row {n}: not a Math-Shepherd row (keys {sorted(row)}; expected "
                             "input and label texts); PRM800K rows go through data/prm800k/prepare.py")
        src, lab = row["input"], row["label"]
        pieces = src.split(tag)
        if len(pieces) < 2:
            raise ValueError(f"Math-Shepherd row {n}: no step tag {tag!r} in input")
        labels, off = [], 0
        for p in pieces[:-1]:
            off += len(p)
            if lab[off: off + 1] not in ("+", "-"):
                raise ValueError(f"Math-Shepherd row {n}: label text does not match input at char {off}")
            labels.append(1.0 if lab[off] == "+" else 0.0)
            off += 1
        m = re.search(r"Step 1\s*:", pieces[0])
        question = pieces[0][: m.start()].strip() if m else ""
        pieces[0] = pieces[0][m.start():] if m else pieces[0]
        steps = [_clean_step(re.sub(r"^\s*Step \d+\s*:\s*", "", p), sep) for p in pieces[:-1]]
        out.append({"question": question, "steps": steps, "labels": labels,
                    "correct": int(labels[-1] > 0.5)})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", nargs="+", default=[HUB_DEFAULT],
                   help=f"local files (JSONL or JSON objects) or a hub id (default {HUB_DEFAULT}: needs "
                        "`datasets` and internet)")
    p.add_argument("--split", default="train", help="split of a hub id")
    p.add_argument("--out", default=os.path.join(HERE, "train.jsonl"), help="output JSONL")
    p.add_argument("--tag", default=MATH_SHEPHERD_TAG, help="step tag in the raw input text")
    p.add_argument("--step-sep", default=DEFAULT_STEP_SEP,
                   help="step separator of prm_train.py --step-sep (default a blank line)")
    args = p.parse_args(argv)

    rows = read_rows(args.source, args.split)
    recs = read_math_shepherd(rows, args.tag, args.step_sep)
    write_jsonl(args.out, recs)
    n_steps = sum(len(r["steps"]) for r in recs)
    print(f"wrote {len(recs)} solutions ({n_steps} steps, {sum(r['correct'] for r in recs)} correct) to {args.out}")


if __name__ == "__main__":
    main()
