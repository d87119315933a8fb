"""Tests for rewards.py: success grading (tables, real GSM8K / MATH data, adversarial input), the
Clip / Delta / Clip-Delta transforms against naive per-row loops, steps, token placement, loading.

Real-data tests read ../shared/data (relative to this file) and skip when it is absent.
Run: python -m pytest -q test_rewards.py
"""

import json
import os
import random
import threading
import time

import pytest
import torch

import rewards as R

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_DATA = os.path.join(HERE, "..", "shared", "data")
ARITH_DIR = os.path.join(HERE, "data", "arith")


def _shared(rel):
    path = os.path.join(SHARED_DATA, rel)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (real data lives in ../shared/data on the dev machines)")
    return path


# -----------------------------------------------------------------------------
# 1. Success grading: tables

MINERVA_GOLD = ("On Monday the stock keeps $90\\%$ of its value; on Tuesday it keeps $80\\%$ of that. " * 5
                + "So it keeps $72\\%$.\nFinal Answer: The final answer is $28\\%$. I hope it is correct.")

# (response, gold, expected). MATH-style first, then GSM8K-style, then extraction formats.
GRADING_CASES = [
    # numeric equivalence
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", True),
    ("\\boxed{3/4}", "\\frac34", True),
    ("\\boxed{\\tfrac12}", "\\frac{1}{2}", True),
    ("\\boxed{1.5}", "\\frac{3}{2}", True),
    ("\\boxed{1.50}", "1.5", True),
    ("\\boxed{5.0}", "5", True),
    ("\\boxed{0.333}", "\\frac13", False),
    ("\\boxed{0.1\\overline{6}}", "\\frac16", True),
    ("\\boxed{0.\\overline{3}}", "\\frac12", False),
    ("\\boxed{-5}", "-5", True),
    ("\\boxed{5}", "-5", False),
    ("\\boxed{-0}", "0", True),
    ("\\boxed{007}", "7", True),
    # radicals, pi, symbolic
    ("\\boxed{2\\sqrt2}", "\\sqrt8", True),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", True),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{1}{\\sqrt2}", True),
    ("\\boxed{\\pi}", "\\pi", True),
    ("\\boxed{2\\pi}", "2\\pi", True),
    ("\\boxed{3.14}", "\\pi", False),
    ("\\boxed{6.28}", "2\\pi", False),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\boxed{x^2+2x+2}", "(x+1)^2", False),
    ("\\boxed{2^{2005}}", "2^{2005}", True),
    ("\\boxed{2^{2006}}", "2^{2005}", False),
    ("\\boxed{i}", "i", True),
    ("\\boxed{-i}", "i", False),
    ("\\boxed{1+2i}", "1+2i", True),
    # units, degrees, dollars, percent, x= prefixes
    ("\\boxed{5\\text{ cm}}", "5", True),
    ("\\boxed{5 \\text{ inches}}", "5", True),
    ("\\boxed{5}", "5\\text{ inches}", True),
    ("\\boxed{30^\\circ}", "30", True),
    ("\\boxed{30°}", "30", True),
    ("\\boxed{45^{\\circ}}", "45^\\circ", True),
    ("\\boxed{\\$18}", "18", True),
    ("\\boxed{10\\%}", "10", True),
    ("\\boxed{x=5}", "5", True),
    ("\\boxed{y = 2x+3}", "2x+3", True),
    ("\\boxed{x=6}", "5", False),
    # thousands separators
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{100000}", "100,000", True),
    ("\\boxed{34,\\!650}", "34650", True),
    ("\\boxed{\\$16,\\!386.16}", "\\$16,\\!386.16", True),
    ("\\boxed{16386.17}", "\\$16,\\!386.16", False),
    # a comma followed by a space separates list items (MATH: "enter all solutions, separated by
    # commas"); only a comma directly between digit groups is a thousands separator
    ("\\boxed{32, 349}", "32349", False),
    ("\\boxed{3100}", "3, 100", False),
    ("The answer is 2, 500", "2500", False),
    ("\\boxed{81256}", "81, 256", False),
    ("\\boxed{2,500}", "2, 500", False),
    ("\\boxed{256, 81}", "81, 256", True),
    # tuples ordered, sets unordered, intervals, matrices
    ("\\boxed{(1,2)}", "(1,2)", True),
    ("\\boxed{(2,1)}", "(1,2)", False),
    ("\\boxed{\\{2,1\\}}", "\\{1,2\\}", True),
    ("\\boxed{1, 2}", "2, 1", True),
    ("\\boxed{12}", "1,2", False),
    ("\\boxed{[-2,3)}", "[-2,3)", True),
    ("\\boxed{(-2,3]}", "[-2,3)", False),
    ("\\boxed{(-\\infty, 0)\\cup(1,\\infty)}", "(-\\infty,0)\\cup(1,\\infty)", True),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\boxed{\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    # text answers and multiple choice
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", True),
    ("\\boxed{C}", "\\text{(C)}", True),
    ("\\boxed{D}", "\\text{(C)}", False),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", True),
    ("\\boxed{Sam}", "\\text{Evelyn}", False),
    # GSM8K-style: gold as a full solution, response formats models write
    ("#### 72", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", True),
    ("So she sold \\boxed{72} clips.", "... #### 72", True),
    ("\\boxed{73}", "... #### 72", False),
    ("The answer is 18 dollars.", "18", True),
    ("The answer is $18.", "18", True),
    ("The answer is \\$18.00.", "18", True),
    ("The answer is 1,250.", "#### 1,250", True),
    ("The answer is 1,251.", "#### 1,250", False),
    ("answer: 42", "42", True),
    ("The final answer is $42$. I hope it is correct.", "42", True),
    ("The answer is 5 apples.\n#### 7", "7", True),  # the last marker wins
    # MATH-style: gold as a full solution
    ("\\boxed{\\frac{1}{2}}", "So $R-r \\leq 1/2$, the maximum is $\\boxed{\\frac{1}{2}}$.", True),
    ("\\boxed{\\frac{1}{3}}", "So $R-r \\leq 1/2$, the maximum is $\\boxed{\\frac{1}{2}}$.", False),
    # gold as a Minerva-format solution without a box (longer than any bare answer)
    ("\\boxed{28\\%}", MINERVA_GOLD, True),
    ("\\boxed{72\\%}", MINERVA_GOLD, False),
    # box extraction: last box, nested, \fbox, unclosed
    ("\\fbox{7}", "7", True),
    ("\\boxed{\\boxed{7}}", "7", True),
    ("first \\boxed{3}, then \\boxed{7}", "7", True),
    ("first \\boxed{7}, then \\boxed{3}", "7", False),
    # boxes chained by only "and" / "or" / commas are one list answer (a hedge is not a guess)
    ("the roots are $\\boxed{-2}$ and $\\boxed{1}$.", "1, -2", True),
    ("$\\boxed{3}$ or $\\boxed{5}$", "5", False),
    ("\\boxed{32} and \\boxed{349}", "32349", False),
    ("\\boxed{-2, 1}", "so the roots are $\\boxed{1}$ and $\\boxed{-2}$.", True),
    ("\\boxed{1}", "so the roots are $\\boxed{1}$ and $\\boxed{-2}$.", False),
    ("\\boxed{185\\}", "185", True),  # a stray trailing backslash
    ("\\boxed{185}", "185\\", True),
    ("\\boxed{x+1\\}", "1+x", True),
    ("\\boxed{7} and then \\boxed{8", "7", True),
    ("7", "7", False),  # no box and no answer marker: no answer
]


@pytest.mark.parametrize("response,gold,expected", GRADING_CASES)
def test_is_correct_table(response, gold, expected):
    assert R.is_correct(response, gold) is expected
    assert R.success_reward(response, gold) == (1.0 if expected else 0.0)


def test_grading_table_size():
    assert len(GRADING_CASES) >= 60
    assert sum(e for _, _, e in GRADING_CASES) >= 20 and sum(not e for _, _, e in GRADING_CASES) >= 20


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{ \\{1, 2\\} }", "\\{1, 2\\}"),
    ("\\boxed{3}, so \\boxed{\\sqrt{5}}", "\\sqrt{5}"),  # prose between: the last box only
    ("\\boxed{3} and \\boxed{\\sqrt{5}}", "3, \\sqrt{5}"),  # one answer in two boxes
    ("$\\boxed{-2}$ \\quad \\text{or} \\quad $\\boxed{1}$.", "-2, 1"),
    ("\\boxed{(1, 2)},\\boxed{(2, 1)}", "(1, 2), (2, 1)"),
    ("$\\boxed{5}$ \\quad $\\boxed{\\boxed{5}}$", "5"),  # repeated: kept once
    ("\\boxed{1} orange \\boxed{2}", "2"),
    ("\\boxed{\\boxed{5}}", "5"),
    ("\\fbox{\\boxed{ 9 }}", "9"),
    ("\\boxed{\\boxed{3}+1}", "\\boxed{3}+1"),
    ("\\boxed {x^{2}}", "x^{2}"),
    ("\\boxed{3} \\boxed{4", "3"),
    ("x \\boxed{3", None),
    ("The answer is 5.", "5"),
    ("The answer is 3.5.", "3.5"),
    ("the answer is: $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("The answer is:\n5", "5"),
    ("ANSWER: 12", "12"),
    ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),
    ("blah\n#### 1,000", "1,000"),
    ("#### 7\nSo the answer is 8.", "8"),
    ("The answer is", None),
    ("no answer here 5", None),
    ("", None),
    (None, None),
    (17, None),
])
def test_extract_answer(text, expected):
    assert R.extract_answer(text) == expected


def test_extract_answer_is_linear_on_huge_input():
    t = time.perf_counter()
    for text in ["\\boxed{" * 100_000, "\\boxed{1}" * 100_000, "{" * 1_000_000, "answer is " * 100_000,
                 "#### " * 200_000, "\\boxed{" * 50_000 + "1" + "}" * 50_000, "x" * 1_000_000 + "\\boxed{2}"]:
        R.extract_answer(text)
    assert time.perf_counter() - t < 5.0
    assert R.extract_answer("x" * 1_000_000 + "\\boxed{2}") == "2"
    assert R.extract_answer("\\boxed{}") is None


@pytest.mark.parametrize("gold", ["", "   ", "\\boxed{}", "#### ", "\\frac{1}{2", "\\sum_{i=1}^{10} i",
                                  None, ["72"], {"answer": 1}])
def test_unparsable_gold_raises_naming_it(gold):
    with pytest.raises(ValueError, match="gold answer"):
        R.is_correct("\\boxed{1}", gold)


def test_numeric_gold_values_are_accepted():
    assert R.is_correct("\\boxed{72}", 72) and R.is_correct("\\boxed{0.5}", 0.5)
    assert not R.is_correct("\\boxed{71}", 72)


@pytest.mark.parametrize("response", [None, "", "   ", 123, 4.5, b"\\boxed{1}", ["\\boxed{1}"],
                                      {"a": 1}, object(), "garbage ~~~ }{", "\\boxed{", "\\boxed{}",
                                      "The answer is", "#### ", "\\boxed{1}" + " " * R.MAX_RESPONSE_CHARS])
def test_garbage_responses_are_false_and_never_raise(response):
    assert R.is_correct(response, "1") is False
    assert R.success_reward(response, "1") == 0.0


def test_success_reward_truncated_is_zero():
    assert R.success_reward("\\boxed{1}", "1") == 1.0
    assert R.success_reward("\\boxed{1}", "1", truncated=True) == 0.0


def test_integer_answers_never_touch_sympy(monkeypatch):
    # The arith world's plain integers are compared exactly in Python (fast, and no parser involved).
    def boom(ans):
        raise AssertionError("math-verify called for an integer pair")

    R._parse_gold.cache_clear()
    R._gold_parsed.cache_clear()
    monkeypatch.setattr(R, "_mv_parse", boom)
    assert R.is_correct("\\boxed{-63}", "-63")
    assert not R.is_correct("\\boxed{63}", "-63")
    assert R.is_correct("The answer is 1,250.", "... #### 1,250")


def test_arith_test_set_grades_correct_and_off_by_one_wrong():
    rows = R.load_problems(os.path.join(ARITH_DIR, "test.jsonl"))
    assert all(R.is_correct(r["solution"], r["answer"]) for r in rows)
    assert not any(R.is_correct(f"The answer is \\boxed{{{int(r['answer']) + 1}}}.", r["answer"]) for r in rows)


def test_math_verify_timeouts_are_whole_seconds():
    # NOTE: math-verify's signal.alarm takes ints; a float makes every comparison silently False.
    from math_verify import parse, verify

    assert isinstance(R.PARSE_TIMEOUT_S, int) and isinstance(R.VERIFY_TIMEOUT_S, int)
    a, b = parse("$\\frac{1}{2}$"), parse("$0.5$")
    assert verify(a, b, timeout_seconds=1)
    assert not verify(a, b, timeout_seconds=0.5)  # the trap this module avoids


def test_is_correct_off_the_main_thread():
    # math-verify's alarms raise ValueError off the main thread; is_correct must still work there.
    out, errors = {}, []

    def run():
        try:
            out["v"] = [R.is_correct("\\boxed{0.5}", "\\frac{1}{2}"), R.is_correct("\\boxed{0.6}", "\\frac{1}{2}"),
                        R.is_correct("\\boxed{7}", "7"), R.is_correct("\\boxed{9^{9^{9}}}", "1")]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=120)
    assert not errors and out["v"] == [True, False, True, False]


def test_grade_batch_matches_is_correct():
    responses = [r for r, _, _ in GRADING_CASES] + [None, "", "\\boxed{9^{9^{9}}}"]
    golds = [g for _, g, _ in GRADING_CASES] + ["1", "1", "1"]
    expected = [e for _, _, e in GRADING_CASES] + [False, False, False]
    assert R.grade_batch(responses, golds, processes=0) == expected
    assert R.grade_batch(responses, golds, processes=2) == expected
    assert R.grade_batch([], [], processes=2) == []
    with pytest.raises(ValueError, match="responses"):
        R.grade_batch(["1"], ["1", "2"])
    with pytest.raises(ValueError, match="gold answer"):
        R.grade_batch(["\\boxed{1}", "\\boxed{2}"], ["1", ""], processes=2)


# -----------------------------------------------------------------------------
# 1b. Success grading: real GSM8K / MATH data (skips without ../shared/data)

# MATH test items whose own solution does not grade as correct against their `answer` field, with
# the reason we accept each. Every MATH test `answer` is exactly the content of its solution's last
# \boxed{}; these five solutions end with boxes chained by "and" / "or", which we read as one list
# answer (README, "Grading conventions").
ACCEPTED_MATH_FAILURES = {
    # "find all solutions": the solution boxes them all, the `answer` field keeps only the last one
    "test/algebra/1878.json": "-2 and 1 (both check out); answer field 1",
    "test/intermediate_algebra/225.json": "3 or 2/5 (both check out); answer field 2/5",
    "test/precalculus/679.json": "pi/4 and 5pi/4; answer field 5pi/4",
    # "enter only one of them, not both": the solution boxes both; an answer doing so is wrong
    "test/intermediate_algebra/25.json": "both foci (10, 0) and (0, 0) boxed",
    "test/intermediate_algebra/702.json": "both vertices boxed",
}


def test_gsm8k_solutions_all_correct():
    rows = R.read_jsonl(_shared("gsm8k/test.jsonl"))
    assert len(rows) == 1319
    golds = [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    bad = [i for i, (r, g) in enumerate(zip(rows, golds)) if not R.is_correct(r["answer"], g)]
    assert not bad, [golds[i] for i in bad[:10]]
    # gold given as the full solution, response in the "The answer is X." format
    bad = [i for i, (r, g) in enumerate(zip(rows, golds)) if not R.is_correct(f"The answer is {g}.", r["answer"])]
    assert not bad, [golds[i] for i in bad[:10]]


def test_math_solutions_correct():
    rows = R.read_jsonl(_shared("math/test.jsonl"))
    assert len(rows) == 5000
    fails = [r["unique_id"] for r in rows if not R.is_correct(r["solution"], r["answer"])]
    unexpected = [u for u in fails if u not in ACCEPTED_MATH_FAILURES]
    assert 1 - len(fails) / len(rows) >= 0.995, fails[:20]
    assert len(unexpected) <= 5, unexpected  # new failures must be looked at and listed
    # gold as the full MATH solution, response in Minerva's format (a sample: sympy is slow-ish)
    sample = random.Random(0).sample(rows, 300)
    fails = [r["answer"] for r in sample
             if not R.is_correct(f"The final answer is ${r['answer']}$. I hope it is correct.", r["solution"])]
    assert len(fails) <= 1, fails


def _shuffled_pairs(answers, n, seed=0):
    rng = random.Random(seed)
    idx = list(range(len(answers)))
    rng.shuffle(idx)
    pairs = [(i, j) for i, j in zip(range(len(answers)), idx)
             if answers[i].replace(",", "").strip() != answers[j].replace(",", "").strip()]
    return pairs[:n]


def test_shuffled_pairs_are_rejected():
    gsm = R.read_jsonl(_shared("gsm8k/test.jsonl"))
    answers = [r["answer"].rsplit("####", 1)[1].strip() for r in gsm]
    pairs = _shuffled_pairs(answers, len(gsm))
    fp = sum(R.is_correct(gsm[i]["answer"], gsm[j]["answer"]) for i, j in pairs)
    assert len(pairs) > 1200 and fp / len(pairs) <= 0.005, fp

    math = R.read_jsonl(_shared("math/test.jsonl"))
    pairs = _shuffled_pairs([r["answer"] for r in math], 800)
    fps = [(math[i]["answer"], math[j]["answer"]) for i, j in pairs
           if R.is_correct(math[i]["solution"], math[j]["answer"])]
    assert len(pairs) == 800 and len(fps) / len(pairs) <= 0.005, fps


# -----------------------------------------------------------------------------
# 1c. Success grading: adversarial (untrusted) input

INJECTIONS = [
    "\\boxed{__import__('os').system('touch pwned')}",
    "The answer is __import__('os').system('touch pwned')",
    "#### __import__('os').system('touch pwned')",
    "\\boxed{eval(\"open('pwned', 'w')\")}",
    "\\boxed{exec(\"open('pwned', 'w').write('x')\")}",
    "\\boxed{().__class__.__bases__[0].__subclasses__()}",
    "\\boxed{\\input{/etc/passwd}}",
    "\\boxed{\\def\\x{\\x}\\x}",
    "\\boxed{lambda: open('pwned', 'w')}",
]
PATHOLOGICAL = [
    "\\boxed{9^{9^{9}}}", "\\boxed{9^9^9}", "\\boxed{(9^9)^{9^9}}", "\\boxed{{10^{10}}^{10^{10}}}",
    "\\boxed{\\left(10^{10}\\right)^{10^{10}}}", "\\boxed{10^{100000000}}", "\\boxed{2**99999999}",
    "\\boxed{e^{e^{e^{100}}}}", "\\boxed{10^{10^{10}}}",
    "\\boxed{99999999!}", "\\boxed{(9!)!}", "\\boxed{9!!!!!!}", "\\boxed{((3!)!)!}", "\\boxed{(10^{4})!}",
    "\\boxed{(99 \\cdot 99 \\cdot 99)!}", "\\boxed{\\binom{10^{9}}{5\\cdot 10^{8}}}",
    "\\boxed{\\binom{100000000}{50000000}}", "\\boxed{{100000 \\choose 50000}}",
    "\\boxed{\\sum_{i=1}^{10^{10}} i}", "\\boxed{\\prod_{i=1}^{100000} i}", "\\boxed{\\int_0^1 x dx}",
    "\\boxed{(x+1)^{9999}}", "\\boxed{\\frac{x^{9999}-1}{x-1}}", "\\boxed{(a+b+c+d+e+f+g+h)^{12}}",
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
    "\\boxed{" + "\\frac{1}{" * 200 + "2" + "}" * 200 + "}", "\\boxed{" + "1+" * 100000 + "1}",
    "\\boxed{" + "9" * 5000 + "}", "The answer is " + "9" * 100000, "x" * 1_000_000,
    "\\boxed{1}" * 100_000, "\\boxed{" * 100_000, "\\boxed{" * 20_000 + "1" + "}" * 20_000,
    "\\boxed{\\x00}", "\\boxed{\x00}", "\\boxed{1e999999999}",
]


@pytest.mark.parametrize("gold", ["1", "\\frac{1}{2}", "x^2+1"])
def test_adversarial_inputs_are_false_fast_and_run_nothing(gold, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    R.is_correct("\\boxed{0}", gold)  # warm-up: import math-verify, parse the gold
    worst, total = 0.0, time.perf_counter()
    for response in INJECTIONS + PATHOLOGICAL:
        t = time.perf_counter()
        assert R.is_correct(response, gold) is False, response[:80]
        worst = max(worst, time.perf_counter() - t)
    total = time.perf_counter() - total
    # every one of these is rejected by the screen, before any parsing: milliseconds each
    assert worst < 1.0 and total < 5.0, (worst, total)
    assert os.listdir(tmp_path) == []


def test_screen_rejects_pathological_answers_before_parsing():
    for response in PATHOLOGICAL[:24]:
        assert not R._looks_safe(R.extract_answer(response)), response
    for ok in ["2^{2005}", "\\frac{1}{2004!}", "(n+1)!", "x^{10} + 2x^8", "\\binom{10}{3}", "(x+1)^{2}",
               "\\begin{pmatrix} 1/\\sqrt{2} & 1/\\sqrt{2} \\\\ -1/\\sqrt{2} & 1/\\sqrt{2} \\end{pmatrix}"]:
        assert R._looks_safe(ok), ok


def test_parser_itself_executes_nothing(tmp_path, monkeypatch):
    # Even unscreened, math-verify's LaTeX parser must not evaluate Python: no file appears.
    monkeypatch.chdir(tmp_path)
    for text in INJECTIONS:
        R._mv_parse(R.extract_answer(text) or text)
    assert os.listdir(tmp_path) == []


def test_alarm_bounds_what_the_screen_lets_through():
    # Short, screened, and slow for sympy (~20 s unbounded): the whole-second alarm cuts it.
    slow = "\\boxed{(a+b+c+d+e+f+g+h)^{8}}"
    assert R._looks_safe(R.extract_answer(slow))
    t = time.perf_counter()
    assert R.is_correct(slow, "x^2+1") is False
    assert time.perf_counter() - t < R.PARSE_TIMEOUT_S + 2 * R.VERIFY_TIMEOUT_S + 2


# -----------------------------------------------------------------------------
# 2. Steps

@pytest.mark.parametrize("text,expected", [
    ("a\n\nb\n\nc", ["a", "b", "c"]),
    ("a\n\n\n\nb", ["a", "b"]),
    ("a\n\n\nb", ["a", "b"]),
    ("\n\n  a \n\nb\n\n", ["a", "b"]),
    ("one step\nwith a newline", ["one step\nwith a newline"]),
    ("single", ["single"]),
    ("", []),
    ("\n\n\n\n", []),
    (None, []),
])
def test_split_steps(text, expected):
    assert R.split_steps(text) == expected


def test_split_steps_custom_separator_and_ends():
    assert R.split_steps("a ки b ки", sep="ки") == ["a", "b"]
    with pytest.raises(ValueError):
        R.split_steps("a", sep="")
    text = "  3+4=7 \n\n\n7+1=8\n\nThe answer is \\boxed{8}.\n\n"
    steps, ends = R.split_steps_with_ends(text)
    assert steps == ["3+4=7", "7+1=8", "The answer is \\boxed{8}."]
    for step, end in zip(steps, ends):
        assert text[end - len(step): end] == step  # end is one past the step's last char


# -----------------------------------------------------------------------------
# 3. Clip / Delta / Clip-Delta against naive per-row loops

def naive_clip(x, eta):
    return [min(v - eta, 0.0) for v in x]


def naive_delta(x):
    """METHOD §2 in 1-indexed form: d_k = x_k - x_{k+1} (k < K-1), x_{K-1} (k = K-1), 0 (k = K)."""
    K = len(x)
    d = []
    for k in range(1, K + 1):
        if k < K - 1:
            d.append(x[k - 1] - x[k])
        elif k == K - 1:
            d.append(x[k - 1])
        else:
            d.append(0.0)
    return d


def random_ragged(seed, B=9, K=7):
    g = torch.Generator().manual_seed(seed)
    lengths = [0, 1, 2, K] + torch.randint(0, K + 1, (B - 4,), generator=g).tolist()
    scores = torch.rand(B, K, generator=g)
    mask = torch.arange(K).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (B, K)
    scores = torch.where(mask, scores, torch.full_like(scores, 7.0))  # garbage in the padding
    return scores, mask, lengths


def _rows(t, lengths):
    return [t[b, :n].tolist() for b, n in enumerate(lengths)]


@pytest.mark.parametrize("seed", range(5))
def test_transforms_match_naive_loops(seed):
    scores, mask, lengths = random_ragged(seed)
    eta = 0.3 + 0.1 * seed
    rows = _rows(scores, lengths)
    for name, out, ref in [
        ("clip", R.clip(scores, mask, eta), [naive_clip(x, eta) for x in rows]),
        ("delta", R.delta(scores, mask), [naive_delta(x) for x in rows]),
        ("clip_delta", R.clip_delta(scores, mask, eta), [naive_delta(naive_clip(x, eta)) for x in rows]),
    ]:
        assert out.shape == scores.shape and out.dtype == torch.float32, name
        for b, n in enumerate(lengths):
            assert torch.allclose(out[b, :n], torch.tensor(ref[b], dtype=torch.float32), atol=1e-6), (name, b)
            assert (out[b, n:] == 0).all(), (name, b)  # padding is 0, and padding scores never leak
        assert torch.equal(R.transform_step_rewards(scores, mask, name, eta), out)
    prm = R.transform_step_rewards(scores, mask, "prm", eta)
    assert torch.equal(prm, torch.where(mask, scores, torch.zeros_like(scores)))
    with pytest.raises(ValueError):
        R.transform_step_rewards(scores, mask, "success", eta)


@pytest.mark.parametrize("seed", range(5))
def test_clip_is_nonpositive(seed):
    scores, mask, _ = random_ragged(seed)
    for eta in (0.0, 0.5, 1.0):
        assert (R.clip(scores, mask, eta) <= 0).all()
        assert (R.clip_delta(scores, mask, eta).sum(dim=1) <= 1e-6).all()


@pytest.mark.parametrize("seed", range(5))
def test_delta_return_to_go_telescopes(seed):
    scores, mask, lengths = random_ragged(seed)
    d = R.delta(scores, mask)
    rtg = d.flip(1).cumsum(1).flip(1)  # (B, K) sum_{j >= k} d_j
    for b, K in enumerate(lengths):
        for k in range(1, K):  # 1-indexed k <= K-1
            assert abs(rtg[b, k - 1].item() - scores[b, k - 1].item()) < 1e-5
        if K >= 1:
            assert rtg[b, K - 1].item() == 0.0  # the last step's score is dropped


def test_repeating_a_step_does_not_change_the_delta_return():
    x = [0.9, 0.7, 0.8, 0.4]
    for j in range(len(x)):  # repeat step j (same score), anywhere, including the last
        padded = x[: j + 1] + [x[j]] + x[j + 1:]
        for transform in (lambda s, m: R.delta(s, m), lambda s, m: R.clip_delta(s, m, 0.5)):
            ret = [transform(torch.tensor([v]), torch.ones(1, len(v), dtype=torch.bool)).sum().item()
                   for v in (x, padded)]
            assert abs(ret[0] - ret[1]) < 1e-6
    # contrast: under plain PRM the same padding raises the return (the hack Delta removes)
    assert sum(x + [x[-1]]) > sum(x)


def test_k1_and_k0_rows():
    scores = torch.tensor([[0.8, 0.0], [0.3, 0.0], [0.6, 0.2]])
    mask = torch.tensor([[True, False], [False, False], [True, True]])
    d = R.delta(scores, mask)
    assert d.tolist()[0] == [0.0, 0.0] and d.tolist()[1] == [0.0, 0.0]  # K=1: 0; K=0: nothing
    assert torch.allclose(d[2], torch.tensor([0.6, 0.0]))
    assert R.clip(scores, mask, 0.5)[1].tolist() == [0.0, 0.0]
    assert R.clip_delta(scores, mask, 0.5)[0].tolist() == [0.0, 0.0]
    empty = torch.zeros(3, 0)
    emask = torch.zeros(3, 0, dtype=torch.bool)
    for out in (R.delta(empty, emask), R.clip(empty, emask, 0.5), R.clip_delta(empty, emask, 0.5)):
        assert out.shape == (3, 0)
    with pytest.raises(ValueError):
        R.delta(scores, mask.long())
    with pytest.raises(ValueError):
        R.clip(scores[0], mask[0], 0.5)


# -----------------------------------------------------------------------------
# 4. Token placement

@pytest.fixture(scope="module")
def arith_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.join(ARITH_DIR, "tokenizer"))


def test_step_end_tokens_and_placement_diagram(arith_tokenizer):
    # The docstring diagram of place_rewards, with the char-level arith tokenizer:
    #   tokens  3 + 4 = 7 \n \n 7 + 1 = 8 <eos> <pad>
    #   index   0 1 2 3 4  5  6 7 8 9 10 11  12    13
    #   step 1 ends on token 4 ('7'), step 2 on token 11 ('8'); success on 12, the EOS.
    tok = arith_tokenizer
    ids = tok("3+4=7\n\n7+1=8", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    text = tok.decode(ids, skip_special_tokens=True)
    steps, char_ends = R.split_steps_with_ends(text)
    assert steps == ["3+4=7", "7+1=8"]
    ends = R.step_end_token_indices(tok, ids, char_ends)
    assert ends == [4, 11]
    T = len(ids) + 1
    response_mask = torch.tensor([[True] * len(ids) + [False]])  # (1, T)
    r = R.place_rewards(torch.tensor([[0.25, -0.5]]), torch.tensor([ends]), torch.ones(1, 2, dtype=torch.bool),
                        torch.tensor([1.0]), response_mask)
    expected = torch.zeros(1, T)
    expected[0, 4], expected[0, 11], expected[0, 12] = 0.25, -0.5, 1.0
    assert torch.equal(r, expected)
    # NOT the token after the step (the separator's), and NOT the padding after EOS
    assert r[0, 5] == 0 and r[0, 13] == 0


def test_step_end_tokens_on_arith_solutions(arith_tokenizer):
    tok = arith_tokenizer
    for row in R.read_jsonl(os.path.join(ARITH_DIR, "test.jsonl"))[:20]:
        ids = tok(row["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        text = tok.decode(ids, skip_special_tokens=True)
        steps, char_ends = R.split_steps_with_ends(text)
        ends = R.step_end_token_indices(tok, ids, char_ends)
        for step, e in zip(steps, ends):
            assert tok.decode(ids[: e + 1], skip_special_tokens=True).endswith(step)
            assert not tok.decode(ids[:e], skip_special_tokens=True).endswith(step)


class PieceTokenizer:
    """A stand-in for a BPE tokenizer: token i decodes to pieces[i] (multi-char, some empty)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


def test_step_end_tokens_with_multichar_tokens_match_a_linear_scan():
    rng = random.Random(0)
    for _ in range(20):
        text = "\n\n".join(
            " ".join(rng.choice(["12", "+", "=", "abc", "x"]) for _ in range(rng.randint(1, 6)))
            for _ in range(rng.randint(1, 5)))
        pieces, i = [], 0
        while i < len(text):
            n = rng.randint(1, 4)
            pieces.append(text[i: i + n])
            if rng.random() < 0.2:
                pieces.append("")  # a special token that decodes to nothing
            i += n
        tok = PieceTokenizer(pieces + [""])  # last: EOS
        ids = list(range(len(pieces) + 1))
        _, char_ends = R.split_steps_with_ends(tok.decode(ids))
        got = R.step_end_token_indices(tok, ids, char_ends)
        ref = [next(t for t in ids if len(tok.decode(ids[: t + 1])) >= c) for c in char_ends]
        assert got == ref


def naive_place(values, end_idx, step_mask, success, response_mask):
    B, T = response_mask.shape
    out = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for k in range(values.shape[1]):
            if step_mask[b, k]:
                out[b][int(end_idx[b, k])] += float(values[b, k])
        n = int(response_mask[b].sum())
        out[b][max(n - 1, 0)] += float(success[b])
    return torch.tensor(out)


@pytest.mark.parametrize("seed", range(5))
def test_place_rewards_matches_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, T, K = 6, 12, 4
    n_tok = torch.randint(1, T + 1, (B,), generator=g)
    response_mask = torch.arange(T).unsqueeze(0) < n_tok.unsqueeze(1)  # (B, T)
    n_steps = torch.randint(0, K + 1, (B,), generator=g)
    step_mask = torch.arange(K).unsqueeze(0) < n_steps.unsqueeze(1)  # (B, K)
    end_idx = torch.stack([torch.sort(torch.randint(0, int(n), (K,), generator=g)).values for n in n_tok])
    values = torch.randn(B, K, generator=g)
    success = torch.randint(0, 2, (B,), generator=g).float()
    out = R.place_rewards(values, end_idx, step_mask, success, response_mask)
    assert torch.allclose(out, naive_place(values, end_idx, step_mask, success, response_mask))
    assert (out[~response_mask] == 0).all()


def test_place_rewards_truncated_and_shared_last_token():
    # A truncated response (no EOS): success (0 by METHOD §4, here 1 to see it) goes on the last
    # generated token; a step ending there adds to it.
    response_mask = torch.tensor([[True, True, True, False]])
    r = R.place_rewards(torch.tensor([[0.5]]), torch.tensor([[2]]), torch.tensor([[True]]),
                        torch.tensor([1.0]), response_mask)
    assert r.tolist() == [[0.0, 0.0, 1.5, 0.0]]
    r = R.place_rewards(torch.zeros(1, 0), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool),
                        torch.tensor([1.0]), response_mask)
    assert r.tolist() == [[0.0, 0.0, 1.0, 0.0]]


# -----------------------------------------------------------------------------
# Datasets

def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def test_load_problems_formats(tmp_path):
    path = _write(tmp_path / "p.jsonl", [
        {"question": "Q1", "solution": "s", "answer": "3"},
        {"problem": "Q2", "solution": "\\boxed{4}", "answer": "4"},  # raw MATH row
        {"question": "Q3", "answer": "work\n#### 1,250"},            # raw GSM8K row
    ])
    rows = R.load_problems(path)
    assert [r["question"] for r in rows] == ["Q1", "Q2", "Q3"]
    assert [r["answer"] for r in rows] == ["3", "4", "1250"]
    assert len(R.load_problems(path, limit=2)) == 2
    arith = R.load_problems("arith", "test", limit=3)
    assert len(arith) == 3 and all(R.is_correct(r["solution"], r["answer"]) for r in arith)


def test_load_problems_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"row 2"):
        R.load_problems(_write(tmp_path / "a.jsonl", [{"question": "Q", "answer": "1"}, {"question": "Q"}]))
    with pytest.raises(ValueError, match=r"row 1"):
        R.load_problems(_write(tmp_path / "b.jsonl", [{"question": " ", "answer": "1"}]))
    with pytest.raises(ValueError, match=r"c\.jsonl:2"):
        R.load_problems(_write(tmp_path / "c.jsonl", [{"question": "Q", "answer": "1"}, "{not json"]))
    with pytest.raises(FileNotFoundError, match="unknown dataset"):
        R.load_problems("no-such-dataset")
    monkeypatch.setattr(R, "DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        R.load_problems("gsm8k")
