"""
The arith world: a synthetic math task with the shape of MATH / GSM8K reasoning, small enough for a
laptop CPU. Writes train/test JSONL (question / solution / answer, the schema every stage reads) and a
char-level tokenizer in Hugging Face format.

A problem chains integer additions and subtractions; the natural solution does one operation per
step, steps separated by a blank line, and ends with a boxed answer:

    question: Compute 37 + 12 - 8.
    solution: 37 + 12 = 49\n\n49 - 8 = 41\n\nThe answer is \boxed{41}.
    answer:   41

Usage:
    python data/arith/prepare.py                      # writes data/arith/{train,test}.jsonl + tokenizer/
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


def make_splits(seed, n_train, n_test, min_operands, max_operands, max_value):
    """Disjoint train/test splits (no test question appears in train), deterministic in the seed."""
    if not 2 <= min_operands <= max_operands:
        raise ValueError("need 2 <= min_operands <= max_operands")
    rng = random.Random(seed)
    seen, rows = set(), []
    attempts = 0
    while len(rows) < n_train + n_test:
        attempts += 1
        if attempts > 50 * (n_train + n_test):
            raise ValueError("problem space too small for the requested split sizes; "
                             "raise --max-value or --max-operands")
        row = make_problem(rng, min_operands, max_operands, max_value)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows[:n_train], rows[n_train:]


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
    p.add_argument("--out-dir", default=HERE, help="where train.jsonl, test.jsonl and tokenizer/ go")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--min-operands", type=int, default=3)
    p.add_argument("--max-operands", type=int, default=5)
    p.add_argument("--max-value", type=int, default=99, help="operands are drawn from 1..max_value")
    args = p.parse_args()

    train, test = make_splits(args.seed, args.n_train, args.n_test,
                              args.min_operands, args.max_operands, args.max_value)
    os.makedirs(args.out_dir, exist_ok=True)
    write_jsonl(os.path.join(args.out_dir, "train.jsonl"), train)
    write_jsonl(os.path.join(args.out_dir, "test.jsonl"), test)
    build_tokenizer().save_pretrained(os.path.join(args.out_dir, "tokenizer"))
    print(f"wrote {len(train)} train / {len(test)} test problems and tokenizer/ to {args.out_dir}")


if __name__ == "__main__":
    main()
