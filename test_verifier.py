"""
Tests for scripts/verifier.py (the step-corruption test of a PRM, issue 14): the corruption on hand
examples, the pairs it builds from real arith gold solutions, the detection rate with stub scorers
(no model), and main end to end with a stub PRM, bad input included.
"""

import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import common  # noqa: E402
import rewards  # noqa: E402
import verifier  # noqa: E402

SOLUTION = "37 + 12 = 49\n\n49 - 8 = 41\n\nThe answer is \\boxed{41}."
ARITH = re.compile(r"^(-?\d+) ([+\-*]) (-?\d+) = (-?\d+)$")


def checking_score(step):
    """A stub verifier that checks arithmetic: 0.9 for a right "a op b = c", 0.1 for a wrong one,
    0.5 for any other step."""
    m = ARITH.match(step)
    if not m:
        return 0.5
    a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
    return 0.9 if {"+": a + b, "-": a - b, "*": a * b}[op] == c else 0.1


def checking_fn(questions, steps):
    return [[checking_score(s) for s in st] for st in steps]


# -----------------------------------------------------------------------------
# the corruption

def test_corrupt_changes_only_the_result_of_that_step():
    steps = rewards.split_steps(SOLUTION)
    assert verifier.corrupt(steps, 2, 1) == ["37 + 12 = 49", "49 - 8 = 42", "The answer is \\boxed{41}."]
    assert verifier.corrupt(steps, 1, 1) == ["37 + 12 = 50", "49 - 8 = 41", "The answer is \\boxed{41}."]
    assert verifier.corrupt(steps, 2, -3) == ["37 + 12 = 49", "49 - 8 = 38", "The answer is \\boxed{41}."]
    assert steps == ["37 + 12 = 49", "49 - 8 = 41", "The answer is \\boxed{41}."]  # not modified in place
    for k in (0, 3, 4):  # no step 0; step 3 is the answer step, never corrupted
        assert verifier.corrupt(steps, k, 1) is None


def test_corrupt_step_hand_examples():
    assert verifier.corrupt_step("-13 - 98 = -111", 1) == "-13 - 98 = -110"
    assert verifier.corrupt_step("-13 - 98 = -111", -1) == "-13 - 98 = -112"
    assert verifier.corrupt_step("5 - 6 = -1", 1) == "5 - 6 = 0"
    assert verifier.corrupt_step("2.5 * 3 = 7.50", 1) == "2.5 * 3 = 8.50"  # decimals keep their digits
    assert verifier.corrupt_step("So 3 + 4 = 7 apples, and 2 more.", 1) == "So 3 + 4 = 8 apples, and 2 more."
    assert verifier.corrupt_step("a = 2 so b = 10", 5) == "a = 2 so b = 15"  # the last "=" holds the result
    for step in ("Let me double-check.", "12 + 3 is 15", "x = y", "The answer is 15 ="):
        assert verifier.corrupt_step(step, 1) is None, step


def test_make_pairs_skips_steps_without_a_result_and_keeps_one_text_per_key():
    sources = [("a", "qa", "Let me think.\n\n3 + 4 = 7\n\nThe answer is \\boxed{7}."),  # step 2 ok, step 1 not
               ("b", "qb", "3 + 4 = 7\n\nThe answer is \\boxed{7}."),  # one work step: too few for step 2
               ("c", "qc", "1 + 1 = 2\n\nLet me double-check.\n\nThe answer is \\boxed{2}."),  # step 2 has no '='
               ("c", "qc", SOLUTION), ("c", "qc", "1 + 2 = 3\n\n3 + 3 = 6\n\nThe answer is \\boxed{6}."),
               ("d", "qd", SOLUTION)]
    pairs, skipped = verifier.make_pairs(sources, k=2, delta=1, n=10)
    assert [p["question"] for p in pairs] == ["qa", "qc", "qd"]  # c: its first usable text, once
    assert pairs[0]["corrupted"] == ["Let me think.", "3 + 4 = 8", "The answer is \\boxed{7}."]
    assert pairs[1]["steps"] == rewards.split_steps(SOLUTION)
    assert skipped == {"too few steps": 1, "no '= number' at the step": 1}
    pairs, skipped = verifier.make_pairs(sources, k=1, delta=1, n=2)
    assert [p["question"] for p in pairs] == ["qb", "qc"] and skipped["no '= number' at the step"] == 1


def test_gold_pairs_on_arith_differ_in_one_step_by_delta():
    problems = common.load_problems("arith", "test", limit=20)
    pairs, _ = verifier.make_pairs([(i, p["question"], p["solution"]) for i, p in enumerate(problems)], 2, 1, 20)
    assert len(pairs) == 20
    assert pairs[0]["steps"][1] == "-28 + 50 = 22" and pairs[0]["corrupted"][1] == "-28 + 50 = 23"
    for p in pairs:
        assert [j for j, (a, b) in enumerate(zip(p["steps"], p["corrupted"])) if a != b] == [1]
        assert len(p["steps"]) == len(p["corrupted"])
        assert int(p["corrupted"][1].split("=")[-1]) == int(p["steps"][1].split("=")[-1]) + 1
        assert checking_score(p["steps"][1]) == 0.9 and checking_score(p["corrupted"][1]) == 0.1


# -----------------------------------------------------------------------------
# the detection rate

def test_compare_hand_computed():
    r = verifier.compare([0.5, 0.6, 0.7, 0.2], [0.4, 0.6, 0.9, 0.1])
    # detected: 0.4 < 0.5 and 0.1 < 0.2; the tie 0.6 = 0.6 is not detected, 0.9 > 0.7 neither
    assert r["pairs"] == 4 and r["detection_rate"] == 0.5
    assert r["mean_correct"] == pytest.approx(0.5) and r["mean_corrupted"] == pytest.approx(0.5)
    assert r["mean_drop"] == pytest.approx(0.0)
    assert verifier.compare([], [])["detection_rate"] is None
    with pytest.raises(ValueError):
        verifier.compare([0.1], [])


def test_verify_with_stub_scorers():
    pairs, _ = verifier.make_pairs([(0, "q0", SOLUTION), (1, "q1", "1 + 2 = 3\n\n3 - 5 = -2\n\n-2 + 1 = -1\n\n"
                                                           "The answer is \\boxed{-1}.")], 2, 1, 10)
    calls = []

    def fn(questions, steps):
        calls.append((list(questions), steps))
        return checking_fn(questions, steps)

    res = verifier.verify(pairs, fn, 2)
    assert len(calls) == 1 and calls[0][0] == ["q0", "q1", "q0", "q1"]  # one batched call, both versions
    step, nxt, mn = res["rows"]["step"], res["rows"]["next"], res["rows"]["min"]
    assert (step["detection_rate"], step["mean_correct"], step["mean_corrupted"]) == (1.0, 0.9, 0.1)
    assert step["mean_drop"] == pytest.approx(0.8)
    # the next step is the same text in both versions: same score, never detected
    assert nxt["detection_rate"] == 0.0 and nxt["mean_correct"] == nxt["mean_corrupted"] == pytest.approx(0.7)
    assert mn["detection_rate"] == 1.0 and mn["mean_corrupted"] == pytest.approx(0.1)
    assert res["pairs"][1]["corrupted_scores"] == [0.9, 0.1, 0.9, 0.5]
    # a verifier that ignores the arithmetic detects nothing (ties are not detections)
    flat = verifier.verify(pairs, lambda qs, st: [[0.7] * len(s) for s in st], 2)
    assert flat["rows"]["step"]["detection_rate"] == 0.0
    with pytest.raises(ValueError):  # a scorer returning the wrong number of scores
        verifier.verify(pairs, lambda qs, st: [[0.5] for _ in st], 2)


# -----------------------------------------------------------------------------
# main, with a stub PRM; bad input

@pytest.fixture
def stub_prm(monkeypatch):
    monkeypatch.setattr(rewards, "load_reward_model", lambda *a, **k: "stub")
    monkeypatch.setattr(rewards, "score_responses", lambda rm, qs, steps, bs, desc=None: checking_fn(qs, steps))


def test_main_gold_and_policy_samples(stub_prm, tmp_path, capsys):
    out = tmp_path / "gold"
    verifier.main(["--prm", "models/arith-prm", "--n", "7", "--out-dir", str(out)])
    res = json.loads((out / "verifier.json").read_text())
    assert res["n_pairs"] == 7 and res["rows"]["step"]["detection_rate"] == 1.0 and res["split"] == "test"
    assert "| step 2 (corrupted) | 7 | 1.000 |" in (out / "verifier.md").read_text()
    assert "| step 2 (corrupted) | 7 | 1.000 |" in capsys.readouterr().out
    # --policy-samples: correct, untruncated responses only, the first per question
    rows = [{"problem": 0, "kind": "greedy", "question": "q0", "response": SOLUTION, "correct": False},
            {"problem": 0, "kind": "sample", "question": "q0", "response": SOLUTION, "correct": True,
             "truncated": True},
            {"problem": 0, "kind": "sample", "question": "q0", "response": "5 + 5 = 10\n\n10 - 1 = 9\n\n"
             "The answer is \\boxed{9}.", "correct": True, "truncated": False},
            {"problem": 1, "kind": "sample", "question": "q1", "response": SOLUTION, "correct": True}]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    verifier.main(["--policy-samples", str(samples), "--out-dir", str(tmp_path / "pol")])
    res = json.loads((tmp_path / "pol" / "verifier.json").read_text())
    assert [p["corrupted"][1] for p in res["pairs"]] == ["10 - 1 = 10", "49 - 8 = 42"]


def test_bad_input_is_one_line(stub_prm, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "response": "r"}\n')
    none = tmp_path / "none.jsonl"
    none.write_text(json.dumps({"question": "q", "response": SOLUTION, "correct": False}) + "\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    for argv, msg in [(["--n", "0"], "--n 0"), (["--delta", "0"], "--delta 0"), (["--step", "0"], "--step 0"),
                      (["--policy-samples", str(tmp_path / "nope.jsonl")], "no such file"),
                      (["--policy-samples", str(bad)], "bad.jsonl:1"),
                      (["--policy-samples", str(broken)], "not valid JSON"),
                      (["--policy-samples", str(none)], "no correct solution"),
                      (["--dataset", "nope"], "unknown dataset"), (["--step", "9"], "try a smaller --step")]:
        with pytest.raises(common.RunError, match=re.escape(msg)):
            verifier.main(argv + ["--out-dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as e:
        verifier.main(["--help"])
    assert e.value.code == 0 and "step-corruption" in capsys.readouterr().out
