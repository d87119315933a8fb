"""
PRM800K (Lightman et al., 2023; github.com/openai/prm800k: human step ratings of GPT-4 solutions to
MATH problems) as step-labeled records for `prm_train.py --data`: data/prm800k/train.jsonl.

Output: one JSON object per line, the schema prm_train.py reads (its own Monte-Carlo labeler writes
the same keys, plus id / sample / response / finished / soft):

    {"question": str, "answer": str | null, "steps": [str, ...],
     "labels": [float in [0, 1], one per step], "correct": 0 | 1, "source": "prm800k"}

  NOTE: "source" marks the data for the stages: PRM800K holds about 4,500 MATH test problems, and
  every stage that reads such rows warns to evaluate on MATH500, not on the full MATH test set.

  A step never contains the step separator (--step-sep, default a blank line), so splitting the
  joined steps at scoring time gives them back. prm_train reads a label > 0 as a good step (hard
  target) and the label itself as the soft target; "correct" is the ORM target.

Conversion of one raw row {"question": {"problem", "ground_truth_answer"}, "label": {"steps":
[{"completions": [{"text", "rating"}], "chosen_completion", "human_completion"}], "finish_reason"}}:
  1. Follow the chosen completion of every step (a human completion, rated 1, when the labeler wrote
     one); where the trajectory ended without a choice, keep the step rated -1, if any.
  2. Label: rating 1 -> 1.0, -1 -> 0.0, 0 (neutral) -> --neutral (default 1.0: "not wrong").
  3. Stop after the first step rated -1 (later ratings are meaningless) or at a step without a
     rating or text. A row with no step left is dropped (counted).
  4. A step containing the separator has it replaced by one newline (else scoring would split it).
  5. correct = 1 when finish_reason is "solution" and no step was rated -1.
Input files: JSONL (the PRM800K release) or pretty-printed JSON objects one after another (its
examples). A row of another schema (e.g. Math-Shepherd) is an error naming the file and row.

Usage:
    python data/prm800k/prepare.py --source path/to/prm800k/data/phase2_train.jsonl
    python data/prm800k/prepare.py --source phase1_train.jsonl phase2_train.jsonl --neutral 0.5 \\
        --out data/prm800k/train.jsonl
    python data/prm800k/prepare.py --source <hub id> --split train   # a hub copy (needs `datasets`, internet)
    python prm_train.py --init models/arith-policy --data data/prm800k/train.jsonl
"""

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_STEP_SEP = "\n\n"  # = rewards.DEFAULT_STEP_SEP, the project's step separator (METHOD §3)


# -----------------------------------------------------------------------------
# NOTE: deliberate twin of data/math_shepherd/prepare.py (same lines there): every prepare script
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


def read_prm800k(rows, neutral=1.0, sep=DEFAULT_STEP_SEP):
    """PRM800K records (github.com/openai/prm800k) -> step-labeled records, one per trajectory.

    Follows the chosen completion of every step (a human completion, label 1, when the labeler
    wrote one); stops after the first step rated -1 (later labels are meaningless) or at a step
    without a rating. correct = 1 when the trajectory finished as a solution with no -1 step.
    """
    out = []
    for n, row in enumerate(rows):
        if not (isinstance(row.get("label"), dict) and "steps" in row["label"]):
            raise ValueError(f"row {n}: not a PRM800K row (keys {sorted(row)}; expected label.steps); "
                             "Math-Shepherd rows go through data/math_shepherd/prepare.py")
        q = row.get("question", {})
        steps, labels = [], []
        for st in row["label"]["steps"]:
            c = st.get("chosen_completion")
            comps = st.get("completions") or []
            if c is not None:
                text, rating = comps[c]["text"], comps[c].get("rating")
            elif st.get("human_completion"):
                hc = st["human_completion"]
                text, rating = (hc if isinstance(hc, str) else hc.get("text", "")), 1
            else:  # the trajectory ended here: keep the step that was rated wrong, if any
                bad = [x for x in comps if x.get("rating") == -1]
                if not bad:
                    break
                text, rating = bad[0]["text"], -1
            if rating is None or not text.strip():
                break
            steps.append(_clean_step(text, sep))
            labels.append({1: 1.0, 0: float(neutral), -1: 0.0}[rating])
            if rating == -1:
                break
        if steps:
            finished = row["label"].get("finish_reason") == "solution"
            out.append({"question": q.get("problem", ""), "answer": q.get("ground_truth_answer"),
                        "steps": steps, "labels": labels,
                        "correct": int(finished and min(labels) > 0), "source": "prm800k"})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", nargs="+", required=True,
                   help="PRM800K files (JSONL or JSON objects), or a hub id (needs `datasets` and internet)")
    p.add_argument("--split", default="train", help="split of a hub id")
    p.add_argument("--out", default=os.path.join(HERE, "train.jsonl"), help="output JSONL")
    p.add_argument("--neutral", type=float, default=1.0, help="label of a step rated 0 (neutral)")
    p.add_argument("--step-sep", default=DEFAULT_STEP_SEP,
                   help="step separator of prm_train.py --step-sep (default a blank line)")
    args = p.parse_args(argv)

    rows = read_rows(args.source, args.split)
    recs = read_prm800k(rows, args.neutral, args.step_sep)
    write_jsonl(args.out, recs)
    n_steps = sum(len(r["steps"]) for r in recs)
    print(f"wrote {len(recs)} trajectories ({n_steps} steps, {len(rows) - len(recs)} rows without a rated "
          f"step dropped, {sum(r['correct'] for r in recs)} correct) to {args.out}")


if __name__ == "__main__":
    main()
