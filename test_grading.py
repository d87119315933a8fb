"""Tests for grading.py: answer extraction and equivalence tables, real GSM8K / MATH data, and
adversarial (untrusted) input. The conventions they pin are the README's "Grading conventions".

Real-data tests read ../shared/data (relative to this file) and skip when it is absent.
Run: python -m pytest -q test_grading.py
"""

import os
import random
import threading
import time

import pytest

import common
import grading as G
import rewards

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_DATA = os.path.join(HERE, "..", "shared", "data")
ARITH_DIR = os.path.join(HERE, "data", "arith")


def _shared(rel):
    path = os.path.join(SHARED_DATA, rel)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (real data lives in ../shared/data on the dev machines)")
    return path


# -----------------------------------------------------------------------------
# 1. Tables

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
    assert G.is_correct(response, gold) is expected
    assert rewards.success_reward(response, gold) == (1.0 if expected else 0.0)


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
    assert G.extract_answer(text) == expected


def test_extract_answer_is_linear_on_huge_input():
    t = time.perf_counter()
    for text in ["\\boxed{" * 100_000, "\\boxed{1}" * 100_000, "{" * 1_000_000, "answer is " * 100_000,
                 "#### " * 200_000, "\\boxed{" * 50_000 + "1" + "}" * 50_000, "x" * 1_000_000 + "\\boxed{2}"]:
        G.extract_answer(text)
    assert time.perf_counter() - t < 5.0
    assert G.extract_answer("x" * 1_000_000 + "\\boxed{2}") == "2"
    assert G.extract_answer("\\boxed{}") is None


@pytest.mark.parametrize("gold", ["", "   ", "\\boxed{}", "#### ", "\\frac{1}{2", "\\sum_{i=1}^{10} i",
                                  None, ["72"], {"answer": 1}])
def test_unparsable_gold_raises_naming_it(gold):
    with pytest.raises(ValueError, match="gold answer"):
        G.is_correct("\\boxed{1}", gold)


def test_numeric_gold_values_are_accepted():
    assert G.is_correct("\\boxed{72}", 72) and G.is_correct("\\boxed{0.5}", 0.5)
    assert not G.is_correct("\\boxed{71}", 72)


@pytest.mark.parametrize("response", [None, "", "   ", 123, 4.5, b"\\boxed{1}", ["\\boxed{1}"],
                                      {"a": 1}, object(), "garbage ~~~ }{", "\\boxed{", "\\boxed{}",
                                      "The answer is", "#### ", "\\boxed{1}" + " " * G.MAX_RESPONSE_CHARS])
def test_garbage_responses_are_false_and_never_raise(response):
    assert G.is_correct(response, "1") is False
    assert rewards.success_reward(response, "1") == 0.0


def test_integer_answers_never_touch_sympy(monkeypatch):
    # The arith world's plain integers are compared exactly in Python (fast, and no parser involved).
    def boom(ans):
        raise AssertionError("math-verify called for an integer pair")

    G._parse_gold.cache_clear()
    G._gold_parsed.cache_clear()
    monkeypatch.setattr(G, "_mv_parse", boom)
    assert G.is_correct("\\boxed{-63}", "-63")
    assert not G.is_correct("\\boxed{63}", "-63")
    assert G.is_correct("The answer is 1,250.", "... #### 1,250")


def test_arith_test_set_grades_correct_and_off_by_one_wrong():
    rows = common.load_problems(os.path.join(ARITH_DIR, "test.jsonl"))
    assert all(G.is_correct(r["solution"], r["answer"]) for r in rows)
    assert not any(G.is_correct(f"The answer is \\boxed{{{int(r['answer']) + 1}}}.", r["answer"]) for r in rows)


def test_math_verify_timeouts_are_whole_seconds():
    # NOTE: math-verify's signal.alarm takes ints; a float makes every comparison silently False.
    from math_verify import parse, verify

    # (grading.py therefore switches math-verify's alarms off and bounds each pair itself)
    a, b = parse("$\\frac{1}{2}$"), parse("$0.5$")
    assert verify(a, b, timeout_seconds=1)
    assert not verify(a, b, timeout_seconds=0.5)  # the trap this module avoids


def test_is_correct_off_the_main_thread():
    # math-verify's alarms raise ValueError off the main thread; is_correct must still work there.
    out, errors = {}, []

    def run():
        try:
            out["v"] = [G.is_correct("\\boxed{0.5}", "\\frac{1}{2}"), G.is_correct("\\boxed{0.6}", "\\frac{1}{2}"),
                        G.is_correct("\\boxed{7}", "7"), G.is_correct("\\boxed{9^{9^{9}}}", "1")]
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
    assert G.grade_batch(responses, golds, processes=0) == expected
    assert G.grade_batch(responses, golds, processes=2) == expected
    assert G.grade_batch([], [], processes=2) == []
    with pytest.raises(ValueError, match="responses"):
        G.grade_batch(["1"], ["1", "2"])
    with pytest.raises(ValueError, match="gold answer"):
        G.grade_batch(["\\boxed{1}", "\\boxed{2}"], ["1", ""], processes=2)


# -----------------------------------------------------------------------------
# 2. Real GSM8K / MATH data (skips without ../shared/data)

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
    rows = common.read_jsonl(_shared("gsm8k/test.jsonl"))
    assert len(rows) == 1319
    golds = [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    bad = [i for i, (r, g) in enumerate(zip(rows, golds)) if not G.is_correct(r["answer"], g)]
    assert not bad, [golds[i] for i in bad[:10]]
    # gold given as the full solution, response in the "The answer is X." format
    bad = [i for i, (r, g) in enumerate(zip(rows, golds)) if not G.is_correct(f"The answer is {g}.", r["answer"])]
    assert not bad, [golds[i] for i in bad[:10]]


def test_math_solutions_correct():
    rows = common.read_jsonl(_shared("math/test.jsonl"))
    assert len(rows) == 5000
    fails = [r["unique_id"] for r in rows if not G.is_correct(r["solution"], r["answer"])]
    unexpected = [u for u in fails if u not in ACCEPTED_MATH_FAILURES]
    assert 1 - len(fails) / len(rows) >= 0.995, fails[:20]
    assert len(unexpected) <= 5, unexpected  # new failures must be looked at and listed
    # gold as the full MATH solution, response in Minerva's format (a sample: sympy is slow-ish)
    sample = random.Random(0).sample(rows, 300)
    fails = [r["answer"] for r in sample
             if not G.is_correct(f"The final answer is ${r['answer']}$. I hope it is correct.", r["solution"])]
    assert len(fails) <= 1, fails


def _shuffled_pairs(answers, n, seed=0):
    rng = random.Random(seed)
    idx = list(range(len(answers)))
    rng.shuffle(idx)
    pairs = [(i, j) for i, j in zip(range(len(answers)), idx)
             if answers[i].replace(",", "").strip() != answers[j].replace(",", "").strip()]
    return pairs[:n]


def test_shuffled_pairs_are_rejected():
    gsm = common.read_jsonl(_shared("gsm8k/test.jsonl"))
    answers = [r["answer"].rsplit("####", 1)[1].strip() for r in gsm]
    pairs = _shuffled_pairs(answers, len(gsm))
    fp = sum(G.is_correct(gsm[i]["answer"], gsm[j]["answer"]) for i, j in pairs)
    assert len(pairs) > 1200 and fp / len(pairs) <= 0.005, fp

    math = common.read_jsonl(_shared("math/test.jsonl"))
    pairs = _shuffled_pairs([r["answer"] for r in math], 800)
    fps = [(math[i]["answer"], math[j]["answer"]) for i, j in pairs
           if G.is_correct(math[i]["solution"], math[j]["answer"])]
    assert len(pairs) == 800 and len(fps) / len(pairs) <= 0.005, fps


# -----------------------------------------------------------------------------
# 3. Adversarial (untrusted) input

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
    G.is_correct("\\boxed{0}", gold)  # warm-up: import math-verify, parse the gold
    worst, total = 0.0, time.perf_counter()
    for response in INJECTIONS + PATHOLOGICAL:
        t = time.perf_counter()
        assert G.is_correct(response, gold) is False, response[:80]
        worst = max(worst, time.perf_counter() - t)
    total = time.perf_counter() - total
    # every one of these is rejected by the screen, before any parsing: milliseconds each
    assert worst < 1.0 and total < 5.0, (worst, total)
    assert os.listdir(tmp_path) == []


def test_screen_rejects_pathological_answers_before_parsing():
    for response in PATHOLOGICAL[:24]:
        assert not G._looks_safe(G.extract_answer(response)), response
    for ok in ["2^{2005}", "\\frac{1}{2004!}", "(n+1)!", "x^{10} + 2x^8", "\\binom{10}{3}", "(x+1)^{2}",
               "\\begin{pmatrix} 1/\\sqrt{2} & 1/\\sqrt{2} \\\\ -1/\\sqrt{2} & 1/\\sqrt{2} \\end{pmatrix}"]:
        assert G._looks_safe(ok), ok


def test_parser_itself_executes_nothing(tmp_path, monkeypatch):
    # Even unscreened, math-verify's LaTeX parser must not evaluate Python: no file appears.
    monkeypatch.chdir(tmp_path)
    for text in INJECTIONS:
        G._mv_parse(G.extract_answer(text) or text)
    assert os.listdir(tmp_path) == []


def test_alarm_bounds_what_the_screen_lets_through():
    # Short, screened, and slow for sympy (~20 s unbounded): the pair's timer cuts it.
    slow = "\\boxed{(a+b+c+d+e+f+g+h)^{8}}"
    assert G._looks_safe(G.extract_answer(slow))
    t = time.perf_counter()
    assert G.is_correct(slow, "x^2+1") is False
    assert time.perf_counter() - t < G.PAIR_TIMEOUT_S + 2
