"""Tests for data/*/prepare.py: determinism, schema, golds graded correct against their own
solutions by rewards.is_correct, bad-row handling. Real-data tests skip when ../shared/data is absent."""

import importlib.util
import json
import os

import pytest

import rewards

ROOT = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(ROOT, "..", "shared", "data")
SCHEMA = {"question", "solution", "answer"}


def load_prepare(name):
    """Import data/<name>/prepare.py as a module (importing it has no side effects)."""
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", os.path.join(ROOT, "data", name, "prepare.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


arith = load_prepare("arith")
gsm8k = load_prepare("gsm8k")
math_prep = load_prepare("math")


def check_rows(rows):
    for row in rows:
        assert SCHEMA <= set(row), row
        assert all(isinstance(row[k], str) and row[k].strip() for k in SCHEMA), row
        assert rewards.is_correct(row["solution"], row["answer"]), row


# -----------------------------------------------------------------------------
# arith

def test_arith_deterministic_and_disjoint():
    kw = dict(n_train=300, n_test=50, min_operands=3, max_operands=5, max_value=99)
    a = arith.make_splits(seed=7, **kw)
    assert a == arith.make_splits(seed=7, **kw)
    assert a != arith.make_splits(seed=8, **kw)
    train, test = a
    assert len(train) == 300 and len(test) == 50
    assert not {r["question"] for r in train} & {r["question"] for r in test}


def test_arith_shipped_files_match_the_seeded_generator():
    """data/arith/{train,test}.jsonl are exactly what the default command regenerates."""
    train, test = arith.make_splits(seed=1337, n_train=10000, n_test=500,
                                    min_operands=3, max_operands=5, max_value=99)
    assert rewards.read_jsonl(os.path.join(ROOT, "data", "arith", "train.jsonl")) == train
    assert rewards.read_jsonl(os.path.join(ROOT, "data", "arith", "test.jsonl")) == test


def test_arith_schema_steps_and_every_gold_graded_correct():
    rows = rewards.load_problems("arith", "train") + rewards.load_problems("arith", "test")
    assert len(rows) == 10500
    check_rows(rows)
    for row in rows[:200]:
        steps = rewards.split_steps(row["solution"])
        n_ops = row["question"].count(" + ") + row["question"].count(" - ")
        assert len(steps) == n_ops + 1  # one operation per step, then the boxed answer
        assert steps[-1] == f"The answer is \\boxed{{{row['answer']}}}."
    # the grader is not vacuous: a wrong answer against each solution is graded wrong
    for row in rows[:50]:
        assert not rewards.is_correct(row["solution"], str(int(row["answer"]) + 1))


def test_arith_problem_arithmetic_is_right():
    import random

    rng = random.Random(0)
    for _ in range(200):
        row = arith.make_problem(rng, 2, 6, 999)
        expr = row["question"][len("Compute "):-1].split()
        acc = int(expr[0])
        for op, x in zip(expr[1::2], expr[2::2]):
            acc = acc + int(x) if op == "+" else acc - int(x)
        assert row["answer"] == str(acc)


def test_arith_bad_knobs():
    with pytest.raises(ValueError, match="min_operands"):
        arith.make_splits(0, 10, 10, 1, 3, 9)
    with pytest.raises(ValueError, match="problem space too small"):
        arith.make_splits(0, 1000, 100, 2, 2, 3)


def test_arith_tokenizer_ids_and_template():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "data", "arith", "tokenizer"))
    assert (tok.pad_token_id, tok.eos_token_id, tok.convert_tokens_to_ids("<step>")) == (0, 1, 2)
    assert tok.padding_side == "left"
    assert rewards.build_prompt(tok, "Compute 1 + 2.") == "Q: Compute 1 + 2.\nA: "
    text = "37 + 12 = 49\n\n49 - 8 = 41\n\nThe answer is \\boxed{41}."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text  # char-level round trip


# -----------------------------------------------------------------------------
# GSM8K

RAW_GSM8K = {"question": " Janet has 16 eggs. ",
             "answer": "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018"}


def test_gsm8k_convert_row():
    row = gsm8k.convert_row(RAW_GSM8K)
    assert row == {"question": "Janet has 16 eggs.",
                   "solution": "She sells 16 - 3 - 4 = 9 eggs.\n\nShe makes 9 * 2 = $18.\n\n"
                               "The answer is \\boxed{1018}.",
                   "answer": "1018"}
    check_rows([row])
    assert len(rewards.split_steps(row["solution"])) == 3


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize("bad,reason", [
    ('{"question": "q", "answer": "no final answer"}', "####"),
    ('{"question": "q", "answer": "x\\n#### "}', "empty final answer"),
    ('{"answer": "x\\n#### 3"}', "question"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
])
def test_gsm8k_bad_rows_error_or_skip(tmp_path, bad, reason):
    good = json.dumps(RAW_GSM8K)
    src = tmp_path / "raw"
    src.mkdir()
    write_lines(src / "test.jsonl", [good, bad, good])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"test\.jsonl:2: .*{reason}"):
        gsm8k.main(["--source", str(src), "--splits", "test", "--out-dir", str(out)])
    gsm8k.main(["--source", str(src), "--splits", "test", "--out-dir", str(out), "--skip-bad"])
    rows = rewards.read_jsonl(out / "test.jsonl")
    assert len(rows) == 2
    assert gsm8k.convert_lines([good, bad, good], "x", skip_bad=True)[1] == 1


def test_gsm8k_main_deterministic(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    write_lines(src / "train.jsonl", [json.dumps(RAW_GSM8K)] * 3)
    write_lines(src / "test.jsonl", [json.dumps(RAW_GSM8K)])
    gsm8k.main(["--source", str(src), "--out-dir", str(tmp_path / "a")])
    gsm8k.main(["--source", str(src), "--out-dir", str(tmp_path / "b")])
    for split in ("train", "test"):
        a, b = (tmp_path / d / f"{split}.jsonl" for d in "ab")
        assert a.read_bytes() == b.read_bytes()
    assert len(rewards.load_problems(str(tmp_path / "a" / "train.jsonl"))) == 3


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "gsm8k")), reason="no ../shared/data/gsm8k")
def test_gsm8k_real_test_split(tmp_path):
    gsm8k.main(["--source", os.path.join(SHARED, "gsm8k"), "--splits", "test", "--out-dir", str(tmp_path)])
    rows = rewards.load_problems(str(tmp_path / "test.jsonl"))
    assert len(rows) == 1319
    check_rows(rows)
    raw = rewards.read_jsonl(os.path.join(SHARED, "gsm8k", "test.jsonl"))
    for r, row in zip(raw, rows):  # the gold is exactly the #### number
        assert row["answer"] == r["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert "<<" not in row["solution"] and "####" not in row["solution"]


# -----------------------------------------------------------------------------
# MATH / MATH500

def test_math_last_boxed():
    assert math_prep.last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert math_prep.last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert math_prep.last_boxed("\\boxed{1} then \\fbox{2}") == "2"
    assert math_prep.last_boxed("no box") is None
    assert math_prep.last_boxed("\\boxed{unbalanced") is None


def test_math_convert_row():
    raw = {"problem": "What is $1/2$?", "solution": "It is $\\boxed{\\frac{1}{2}}$.",
           "answer": "\\frac12", "type": "Algebra", "level": "Level 1"}
    row = math_prep.convert_row(raw)
    assert row["question"] == "What is $1/2$?" and row["answer"] == "\\frac12"
    assert row["subject"] == "Algebra" and row["level"] == "Level 1"
    check_rows([row])
    del raw["answer"]  # no answer field: the last \boxed{} of the solution
    assert math_prep.convert_row(raw)["answer"] == "\\frac{1}{2}"


@pytest.mark.parametrize("bad,reason", [
    ('{"problem": "p", "solution": "no box here"}', "no 'answer' field"),
    ('{"problem": "p", "solution": "$\\\\boxed{}$", "answer": ""}', "no 'answer' field"),
    ('{"problem": "p", "answer": "1"}', "solution"),
    ('{"solution": "\\\\boxed{1}"}', "problem"),
    ("{oops", "not valid JSON"),
])
def test_math_bad_rows_error_or_skip(tmp_path, bad, reason):
    good = json.dumps({"problem": "p", "solution": "so $\\boxed{3}$", "answer": "3"})
    src = write_lines(tmp_path / "raw.jsonl", [good, good, bad])
    with pytest.raises(ValueError, match=rf"raw\.jsonl:3: .*{reason}"):
        math_prep.main(["--names", "math500", "--source", src, "--out-root", str(tmp_path)])
    math_prep.main(["--names", "math500", "--source", src, "--out-root", str(tmp_path), "--skip-bad"])
    assert len(rewards.read_jsonl(tmp_path / "math500" / "test.jsonl")) == 2


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "math500")), reason="no ../shared/data/math500")
def test_math500_real(tmp_path):
    math_prep.main(["--names", "math500", "--out-root", str(tmp_path)])
    rows = rewards.load_problems(str(tmp_path / "math500" / "test.jsonl"))
    assert len(rows) == 500
    check_rows(rows[:150])  # NOTE: a slice keeps the file fast; all 500 (and all MATH test) pass
    raw = rewards.read_jsonl(os.path.join(SHARED, "math500", "test.jsonl"))
    assert [r["answer"] for r in rows] == [r["answer"] for r in raw]


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "math")), reason="no ../shared/data/math")
def test_math_real_train_has_bad_rows_that_skip_bad_counts(tmp_path):
    src = os.path.join(SHARED, "math")
    with pytest.raises(ValueError, match=r"train\.jsonl:\d+: no 'answer' field"):
        math_prep.main(["--names", "math", "--splits", "train", "--out-root", str(tmp_path)])
    math_prep.main(["--names", "math", "--source", src, "--splits", "train,test",
                    "--out-root", str(tmp_path), "--skip-bad"])
    assert len(rewards.read_jsonl(tmp_path / "math" / "train.jsonl")) == 7498  # 7500 minus 2 empty answers
    test = rewards.load_problems(str(tmp_path / "math" / "test.jsonl"))
    assert len(test) == 5000
    check_rows(test[:100])
