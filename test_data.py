"""Tests for data/*/prepare.py: determinism, schema, golds graded correct against their own
solutions by grading.is_correct, bad-row handling. Real-data tests skip when ../shared/data is absent."""

import importlib.util
import json
import os

import pytest

import common
import grading
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
prm800k = load_prepare("prm800k")
math_shepherd = load_prepare("math_shepherd")


def check_rows(rows):
    for row in rows:
        assert SCHEMA <= set(row), row
        assert all(isinstance(row[k], str) and row[k].strip() for k in SCHEMA), row
        assert grading.is_correct(row["solution"], row["answer"]), row


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
    assert common.read_jsonl(os.path.join(ROOT, "data", "arith", "train.jsonl")) == train
    assert common.read_jsonl(os.path.join(ROOT, "data", "arith", "test.jsonl")) == test


def test_arith_valid_split_is_disjoint_and_leaves_train_and_test_unchanged():
    kw = dict(n_train=300, n_test=50, min_operands=3, max_operands=5, max_value=99)
    train, test = arith.make_splits(seed=7, **kw)
    train3, test3, valid = arith.make_splits(seed=7, n_valid=40, **kw)
    assert (train3, test3) == (train, test) and len(valid) == 40
    qs = [{r["question"] for r in rows} for rows in (train, test, valid)]
    assert not (qs[0] & qs[2]) and not (qs[1] & qs[2])


def test_arith_shipped_valid_and_sft_files_match_the_seeded_generator():
    train, _, valid = arith.make_splits(seed=1337, n_train=10000, n_test=500, min_operands=3,
                                        max_operands=5, max_value=99, n_valid=500)
    assert common.read_jsonl(os.path.join(ROOT, "data", "arith", "valid.jsonl")) == valid
    sft = arith.make_demonstrations(1337, train, 0.08, 0.10, 0.10)
    assert common.read_jsonl(os.path.join(ROOT, "data", "arith", "sft.jsonl")) == sft


def replay(question, solution):
    """An independent reading of a demonstration: (operation steps as (a, op, x, c), restatements
    as values, checks as (c, inverse op, x, a)), every step classified or the test fails."""
    import re

    ops, restates, checks = [], [], []
    for step in rewards.split_steps(solution)[:-1]:
        if m := re.fullmatch(r"(-?\d+) ([+-]) (\d+) = (-?\d+)", step):
            ops.append((int(m[1]), m[2], int(m[3]), int(m[4])))
        elif m := re.fullmatch(r"So far we have (-?\d+)\.", step):
            restates.append(int(m[1]))
        elif m := re.fullmatch(r"Check: (-?\d+) ([+-]) (\d+) = (-?\d+)\.", step):
            checks.append((int(m[1]), m[2], int(m[3]), int(m[4])))
        else:
            raise AssertionError(f"unexpected step {step!r}")
    return ops, restates, checks


def test_arith_demonstrations_habits():
    import random

    q = "Compute 37 + 12 - 8 + 50."
    clean, ok = arith.demonstrate(random.Random(0), q, 0.0, 0.0, 0.0)
    assert ok and clean == "37 + 12 = 49\n\n49 - 8 = 41\n\n41 + 50 = 91\n\nThe answer is \\boxed{91}."
    # every operation restated and checked: the checks are the inverse operations, all true
    full, ok = arith.demonstrate(random.Random(0), q, 0.0, 1.0, 1.0)
    ops, restates, checks = replay(q, full)
    assert ok and [c for *_, c in ops] == restates == [49, 41, 91]
    assert checks == [(49, "-", 12, 37), (41, "+", 8, 49), (91, "-", 50, 41)]
    # always slipping: each result off by 1 or 10 from its own inputs, the chain carries it, no checks
    for seed in range(20):
        text, ok = arith.demonstrate(random.Random(seed), q, 1.0, 0.0, 1.0)
        ops, _, checks = replay(q, text)
        assert not checks
        for (a, op, x, c), nxt in zip(ops, ops[1:] + [None]):
            assert abs(c - (a + x if op == "+" else a - x)) in (1, 10)
            if nxt:
                assert nxt[0] == c
        assert text.endswith(f"\\boxed{{{ops[-1][3]}}}.") and not ok or ops[-1][3] == 91


def test_arith_demonstration_mix_matches_its_probabilities():
    import random

    rows = arith.make_splits(seed=3, n_train=2000, n_test=1, min_operands=3, max_operands=5, max_value=99)[0]
    rng = random.Random(1)
    n_ops = slips = restates = 0
    for row in rows:
        text, _ = arith.demonstrate(rng, row["question"], 0.08, 0.10, 0.10)
        ops, rs, _ = replay(row["question"], text)
        n_ops += len(ops)
        restates += len(rs)
        slips += sum(abs(c - (a + x if op == "+" else a - x)) in (1, 10) for a, op, x, c in ops)
    assert abs(slips / n_ops - 0.08) < 0.015 and abs(restates / n_ops - 0.10) < 0.015


def test_arith_schema_steps_and_every_gold_graded_correct():
    rows = common.load_problems("arith", "train") + common.load_problems("arith", "test")
    assert len(rows) == 10500
    check_rows(rows)
    for row in rows[:200]:
        steps = rewards.split_steps(row["solution"])
        n_ops = row["question"].count(" + ") + row["question"].count(" - ")
        assert len(steps) == n_ops + 1  # one operation per step, then the boxed answer
        assert steps[-1] == f"The answer is \\boxed{{{row['answer']}}}."
    # the grader is not vacuous: a wrong answer against each solution is graded wrong
    for row in rows[:50]:
        assert not grading.is_correct(row["solution"], str(int(row["answer"]) + 1))


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
    assert common.build_prompt(tok, "Compute 1 + 2.") == "Q: Compute 1 + 2.\nA: "
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
    rows = common.read_jsonl(out / "test.jsonl")
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
    assert len(common.load_problems(str(tmp_path / "a" / "train.jsonl"))) == 3


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "gsm8k")), reason="no ../shared/data/gsm8k")
def test_gsm8k_real_test_split(tmp_path):
    gsm8k.main(["--source", os.path.join(SHARED, "gsm8k"), "--splits", "test", "--out-dir", str(tmp_path)])
    rows = common.load_problems(str(tmp_path / "test.jsonl"))
    assert len(rows) == 1319
    check_rows(rows)
    raw = common.read_jsonl(os.path.join(SHARED, "gsm8k", "test.jsonl"))
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
    assert len(common.read_jsonl(tmp_path / "math500" / "test.jsonl")) == 2


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "math500")), reason="no ../shared/data/math500")
def test_math500_real(tmp_path):
    math_prep.main(["--names", "math500", "--out-root", str(tmp_path)])
    rows = common.load_problems(str(tmp_path / "math500" / "test.jsonl"))
    assert len(rows) == 500
    check_rows(rows[:150])  # NOTE: a slice keeps the file fast; all 500 (and all MATH test) pass
    raw = common.read_jsonl(os.path.join(SHARED, "math500", "test.jsonl"))
    assert [r["answer"] for r in rows] == [r["answer"] for r in raw]


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "math")), reason="no ../shared/data/math")
def test_math_real_train_has_bad_rows_that_skip_bad_counts(tmp_path):
    src = os.path.join(SHARED, "math")
    with pytest.raises(ValueError, match=r"train\.jsonl:\d+: no 'answer' field"):
        math_prep.main(["--names", "math", "--splits", "train", "--out-root", str(tmp_path)])
    math_prep.main(["--names", "math", "--source", src, "--splits", "train,test",
                    "--out-root", str(tmp_path), "--skip-bad"])
    assert len(common.read_jsonl(tmp_path / "math" / "train.jsonl")) == 7498  # 7500 minus 2 empty answers
    test = common.load_problems(str(tmp_path / "math" / "test.jsonl"))
    assert len(test) == 5000
    check_rows(test[:100])


# -----------------------------------------------------------------------------
# step-labeled data: PRM800K, Math-Shepherd (the schema prm_train.py --data reads)

def test_math_shepherd_reader():
    rows = [{"input": "Janet has 3 eggs. Step 1: She eats 1, so 3 - 1 = 2 ки\nStep 2: The answer is: 2 ки",
             "label": "Janet has 3 eggs. Step 1: She eats 1, so 3 - 1 = 2 +\nStep 2: The answer is: 2 -",
             "task": "GSM8K"}]
    (r,) = math_shepherd.read_math_shepherd(rows)
    assert r["question"] == "Janet has 3 eggs."
    assert r["steps"] == ["She eats 1, so 3 - 1 = 2", "The answer is: 2"]
    assert r["labels"] == [1.0, 0.0] and r["correct"] == 0
    bad = [{"input": "q Step 1: a ки", "label": "q Step 1: a ?"}]
    with pytest.raises(ValueError, match="does not match"):
        math_shepherd.read_math_shepherd(bad)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "prm800k_examples")),
                    reason="../shared/data/prm800k_examples absent")
def test_prm800k_reader():
    d = os.path.join(SHARED, "prm800k_examples")
    recs = prm800k.read_prm800k(prm800k.read_rows([os.path.join(d, "phase1_train_example.json")]))
    assert len(recs) == 3
    first = recs[0]
    assert first["question"].startswith("Three pencils") and first["answer"] == "29"
    assert len(first["steps"]) == 6 and first["labels"] == [1.0] * 6 and first["correct"] == 1
    # phase 2: a neutral step, then the trajectory ends at the step rated -1
    (p2, *_) = prm800k.read_prm800k(prm800k.read_rows([os.path.join(d, "phase2_train_example.json")]), neutral=0.5)
    assert p2["labels"] == [1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.0] and p2["correct"] == 0
    assert all("\n\n" not in s for r in recs for s in r["steps"])


def test_step_label_readers_refuse_each_others_rows():
    ms_row = {"input": "q Step 1: a ки", "label": "q Step 1: a +"}
    prm_row = {"question": {"problem": "q"}, "label": {"steps": []}}
    with pytest.raises(ValueError, match="data/math_shepherd/prepare.py"):
        prm800k.read_prm800k([ms_row])
    with pytest.raises(ValueError, match="data/prm800k/prepare.py"):
        math_shepherd.read_math_shepherd([prm_row])


def test_step_label_prepare_scripts_write_the_schema(tmp_path):
    """main() of both scripts on a local file (pretty-printed JSON objects): one JSONL line per
    solution with question / steps / labels / correct, one label per step, no separator in a step."""
    ms_raw = tmp_path / "ms.json"
    ms_raw.write_text(json.dumps({"input": "Q? Step 1: a\n\nb ки\nStep 2: c ки", "label": "Q? Step 1: a\n\nb +\nStep 2: c +"},
                                 indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    math_shepherd.main(["--source", str(ms_raw), "--out", str(tmp_path / "ms.jsonl")])
    (r,) = common.read_jsonl(tmp_path / "ms.jsonl")
    assert r == {"question": "Q?", "steps": ["a\nb", "c"], "labels": [1.0, 1.0], "correct": 1}
    comps = [{"text": "x = 1", "rating": 1}, {"text": "x = 2", "rating": -1}]
    prm_raw = tmp_path / "prm.jsonl"
    prm_raw.write_text(json.dumps({"question": {"problem": "P", "ground_truth_answer": "1"},
                                   "label": {"finish_reason": "solution",
                                             "steps": [{"completions": comps, "chosen_completion": 0},
                                                       {"completions": [{"text": "so 1", "rating": 0}],
                                                        "chosen_completion": 0}]}}) + "\n")
    out = tmp_path / "prm" / "train.jsonl"
    prm800k.main(["--source", str(prm_raw), "--neutral", "0.5", "--out", str(out)])
    (r,) = common.read_jsonl(out)
    assert r == {"question": "P", "answer": "1", "steps": ["x = 1", "so 1"], "labels": [1.0, 0.5], "correct": 1,
                 "source": "prm800k"}
