"""
The arith world: a synthetic math task with the shape of MATH / GSM8K reasoning, small enough for a
laptop CPU. Writes train / valid / test JSONL (question / solution / answer, the schema every stage
reads), the SFT demonstrations sft.jsonl, and a char-level tokenizer in Hugging Face format.

A problem chains integer additions and subtractions; the natural solution does one operation per
step, steps separated by a blank line, and ends with a boxed answer:

    question: Compute 37 + 12 - 8.
    solution: 37 + 12 = 49\n\n49 - 8 = 41\n\nThe answer is \boxed{41}.
    answer:   41

Splits: train (10,000), test (500) and valid (500) questions, pairwise disjoint. `solution` is the
clean reference solution above. Tune on valid; report test once (README "Honest evaluation").

SFT demonstrations (sft.jsonl: the train questions, one demonstration each). The paper starts RL from
instruct models that are imperfect in ways RL can fix: they slip, and they write steps nobody needs.
A policy fine-tuned on clean solutions only is instead nearly deterministic (entropy ~0.02 nats per
token) and wrong only where its capacity ends, which leaves RL nothing to find. So the
demonstrations are written like a hurried human's, three habits drawn independently per step:
  - slip (--slip-prob, 0.08 per operation): the result is off by 1 or 10 (a dropped carry or
    borrow, a misread digit); later steps carry the wrong value on, so the final answer is wrong;
  - restate (--restate-prob, 0.10 after an operation): "So far we have 41." (correct, not needed);
  - check (--check-prob, 0.10 after a correct operation): "Check: 41 + 8 = 49." (the inverse
    operation; correct, not needed).
The mix makes sampled responses vary in correctness and in length, and puts correct-but-unneeded
steps in the policy's (and so the PRM's training) distribution: the steps a PRM rightly scores high
and that the paper's hacked policies repeat. The `answer` field stays the true gold.

Usage:
    python data/arith/prepare.py                      # writes data/arith/{train,valid,test,sft}.jsonl + tokenizer/
    python data/arith/prepare.py --min-operands 3 --max-operands 6 --max-value 999
"""

import argparse
import json
import os
import random
import string

HERE = os.path.dirname(os.path.abspath(__file__))

PAD, EOS, STEP_TAG = "<pad>", "<eos>", "<step>"
# A prompt is "Q: <question>\nA: " and the assistant turn ends with EOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Q: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'A: ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)


def make_problem(rng, min_operands, max_operands, max_value):
    """One problem as a dict in the shared schema."""
    n = rng.randint(min_operands, max_operands)
    nums = [rng.randint(1, max_value) for _ in range(n)]
    ops = [rng.choice("+-") for _ in range(n - 1)]
    question = "Compute " + " ".join(
        [str(nums[0])] + [f"{op} {x}" for op, x in zip(ops, nums[1:])]) + "."
    steps, acc = [], nums[0]
    for op, x in zip(ops, nums[1:]):
        new = acc + x if op == "+" else acc - x
        steps.append(f"{acc} {op} {x} = {new}")
        acc = new
    steps.append(f"The answer is \\boxed{{{acc}}}.")
    return {"question": question, "solution": "\n\n".join(steps), "answer": str(acc)}


def demonstrate(rng, question, slip_prob, restate_prob, check_prob):
    """One SFT demonstration of `question` ("Compute a op b op c."): the reference steps with a slip,
    restatement or check drawn independently per operation (module docstring). Returns the solution
    text and whether its boxed answer is the true one."""
    tokens = question[len("Compute "):-1].split()
    acc, true, steps = int(tokens[0]), int(tokens[0]), []
    for op, x in zip(tokens[1::2], map(int, tokens[2::2])):
        new = acc + x if op == "+" else acc - x
        true = true + x if op == "+" else true - x
        slipped = rng.random() < slip_prob
        if slipped:
            new += rng.choice((-10, -1, 1, 10))
        steps.append(f"{acc} {op} {x} = {new}")
        if rng.random() < restate_prob:
            steps.append(f"So far we have {new}.")
        if not slipped and rng.random() < check_prob:
            steps.append(f"Check: {new} {'-' if op == '+' else '+'} {x} = {acc}.")
        acc = new
    steps.append(f"The answer is \\boxed{{{acc}}}.")
    return "\n\n".join(steps), acc == true


def make_demonstrations(seed, rows, slip_prob, restate_prob, check_prob):
    """sft.jsonl: one demonstration per row (same question and gold), deterministic in the seed."""
    rng = random.Random(seed + 1)
    out = []
    for row in rows:
        solution, _ = demonstrate(rng, row["question"], slip_prob, restate_prob, check_prob)
        out.append({**row, "solution": solution})
    return out


def make_splits(seed, n_train, n_test, min_operands, max_operands, max_value, n_valid=0):
    """Disjoint train / test / valid splits (no question in two of them), deterministic in the seed.
    NOTE: valid is drawn after test, so adding it left train and test as they were."""
    if not 2 <= min_operands <= max_operands:
        raise ValueError("need 2 <= min_operands <= max_operands")
    rng = random.Random(seed)
    seen, rows = set(), []
    attempts = 0
    n = n_train + n_test + n_valid
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError("problem space too small for the requested split sizes; "
                             "raise --max-value or --max-operands")
        row = make_problem(rng, min_operands, max_operands, max_value)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    if not n_valid:
        return rows[:n_train], rows[n_train:]
    return rows[:n_train], rows[n_train:n_train + n_test], rows[n_train + n_test:]


def build_tokenizer():
    """A char-level tokenizer over printable ASCII + newline, with PAD, EOS and the PRM step tag."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, STEP_TAG] + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    # every character is its own pre-token; NOTE: Fuse() is needed so decode() does not join with spaces
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=PAD,
        additional_special_tokens=[STEP_TAG], padding_side="left",
        chat_template=CHAT_TEMPLATE, model_max_length=512)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=HERE, help="where {train,valid,test,sft}.jsonl and tokenizer/ go")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--n-valid", type=int, default=500)
    p.add_argument("--min-operands", type=int, default=3)
    p.add_argument("--max-operands", type=int, default=5)
    p.add_argument("--max-value", type=int, default=99, help="operands are drawn from 1..max_value")
    p.add_argument("--slip-prob", type=float, default=0.08, help="SFT demonstrations: P(an operation's result is off)")
    p.add_argument("--restate-prob", type=float, default=0.10, help="P('So far we have X.' after an operation)")
    p.add_argument("--check-prob", type=float, default=0.10, help="P('Check: ...' after a correct operation)")
    args = p.parse_args()
    if args.n_valid < 1:
        p.error("--n-valid must be >= 1 (defaults are tuned on it)")
    for name in ("slip_prob", "restate_prob", "check_prob"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be in [0, 1]")

    train, test, valid = make_splits(args.seed, args.n_train, args.n_test, args.min_operands,
                                     args.max_operands, args.max_value, n_valid=args.n_valid)
    sft = make_demonstrations(args.seed, train, args.slip_prob, args.restate_prob, args.check_prob)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid), ("test", test), ("sft", sft)):
        write_jsonl(os.path.join(args.out_dir, f"{name}.jsonl"), rows)
    build_tokenizer().save_pretrained(os.path.join(args.out_dir, "tokenizer"))
    print(f"wrote {len(train)} train / {len(valid)} valid / {len(test)} test problems, {len(sft)} SFT "
          f"demonstrations and tokenizer/ to {args.out_dir}")


if __name__ == "__main__":
    main()
