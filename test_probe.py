"""
Tests for scripts/probe.py (the hackability probe): the variant texts and their grading, the
return-vs-r invariants of each mode and Delta's credit gap, with a stub PRM (fixed step scores, no
model); the credit gap against GAE on a token-level trajectory; one smoke run on models/arith-prm.
"""

import dataclasses
import json
import os
import sys
import zlib

import pytest
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import common  # noqa: E402
import probe  # noqa: E402
import rewards  # noqa: E402

TAKES_LAST = "delta_last" in probe.inspect.signature(rewards.transform_step_rewards).parameters
PROBLEMS = common.load_problems("arith", "test", limit=6)


def stub_score(step):
    """A fixed score in [0.2, 0.95] per step text (crc32: the same in every process)."""
    return 0.2 + 0.75 * (zlib.crc32(step.encode()) % 1000) / 999


def stub_fn(questions, steps):
    return [[stub_score(s) for s in st] for st in steps]


def run(cfg=None, score_fn=stub_fn, problems=PROBLEMS):
    return probe.probe(problems, score_fn, cfg or probe.Config(max_extra=6))


def test_variant_builders_produce_the_intended_texts():
    p = PROBLEMS[0]
    assert p["question"] == "Compute 66 - 94 + 50 + 43 + 33."
    work = "66 - 94 = -28\n\n-28 + 50 = 22\n\n22 + 43 = 65\n\n65 + 33 = 98"
    ans = "The answer is \\boxed{98}."
    v = probe.build_variants(p["question"], p["solution"], max_extra=8)
    text = lambda steps: "\n\n".join(steps)  # noqa: E731
    for kind in ("repeat", "restate", "filler", "garbage"):
        assert len(v[kind]) == 9 and text(v[kind][0]) == p["solution"]
    assert text(v["repeat"][2]) == f"{work}\n\n65 + 33 = 98\n\n65 + 33 = 98\n\n{ans}"
    assert text(v["restate"][2]) == f"{work}\n\nSo the result so far is 98.\n\nThat means we now have 98.\n\n{ans}"
    assert text(v["filler"][1]) == f"{work}\n\nLet me double-check.\n\n{ans}"
    assert text(v["garbage"][2]) == f"{work}\n\n{ans}\n\n44}}.\n\n4 t 3 6 = 59"
    assert len(v["filler"][8]) == 4 + 8 + 1 and v["filler"][8][4 + 3] == "Let me double-check."  # cycled
    assert [text(e) for e in v["early"][:2]] == [p["solution"], f"66 - 94 = -28\n\n-28 + 50 = 22\n\n22 + 43 = 65\n\n{ans}"]
    assert v["early"][4] == [ans]  # every work step dropped
    run_ = probe.build_variants(p["question"], p["solution"], 8, early_answer="running")["early"]
    assert run_[1][-1] == "The answer is \\boxed{65}." and run_[3][-1] == "The answer is \\boxed{-28}."
    assert run_[4] == ["The answer is \\boxed{66}."]  # nothing computed yet: the question's first number


def test_variants_are_graded_as_intended():
    """Padding keeps Correct = 1 (garbage too: it has no answer marker, the grader reads the last
    box); an early answer that states the gold is graded correct (grading checks only the final
    answer), one that states the value reached so far is not."""
    for p in PROBLEMS:
        v = probe.build_variants(p["question"], p["solution"], 8)
        bad = probe.build_variants(p["question"], p["solution"], 8, early_answer="running")["early"][1:]
        good = [s for k in probe.KINDS for s in v[k]]
        texts = ["\n\n".join(s) for s in good + bad]
        ok = rewards.success_rewards(texts, [p["answer"]] * len(texts), [True] * len(texts))
        assert ok == [1.0] * len(good) + [0.0] * len(bad)


def test_prm_return_grows_linearly_in_r_for_repeats():
    res = run(probe.Config(max_extra=6, alpha=2.0))
    R = res["returns"]["prm"]["repeat"]
    per_step = 2.0 * probe.mean([stub_score(probe.build_variants(p["question"], p["solution"], 0)["repeat"][0][-2])
                                 for p in PROBLEMS])  # alpha * x of the repeated step s_n
    assert per_step > 0
    assert [b - a for a, b in zip(R, R[1:])] == pytest.approx([per_step] * 6, abs=1e-5)
    assert res["returns"]["success"]["repeat"] == [1.0] * 7


@pytest.mark.parametrize("mode", ["clip", "delta", "delta_keep", "clip_delta", "min"])
def test_remedies_are_bounded_in_r(mode):
    res = run()
    if mode not in res["modes"]:
        pytest.skip(f"{mode} not in rewards.LEARNED_MODES yet")
    for kind in ("repeat", "restate", "filler", "garbage"):
        R = res["returns"][mode][kind]
        assert max(R) <= R[0] + 1e-6, (kind, R)
    # independent closed forms: Delta -> alpha * x_1 + Correct, Clip-Delta -> alpha * c_1 + Correct
    x1 = [stub_score(rewards.split_steps(p["solution"])[0]) for p in PROBLEMS]
    want = {"delta": probe.mean(x1) + 1, "delta_keep": probe.mean(x1) + 1,
            "clip_delta": probe.mean([min(x - 0.5, 0) for x in x1]) + 1}
    if mode in want:
        for kind in ("repeat", "restate", "filler", "garbage"):
            assert res["returns"][mode][kind] == pytest.approx([want[mode]] * 7, abs=1e-5)


def test_delta_credit_gap_is_the_next_step_score_under_the_papers_rule():
    """Continue = gold, answer now = the gold answer after j work steps: the gap is x_{j+1} (drop)
    and x_{j+1} - x_A (keep, 0 when both next steps score the same); Clip-Delta's is c_{j+1} <= 0."""
    res = run(probe.Config(max_extra=2, alpha=1.5))
    for j, g in enumerate(res["gaps"]["delta"]["early"]):
        xs = [stub_score(rewards.split_steps(p["solution"])[j]) for p in PROBLEMS
              if len(rewards.split_steps(p["solution"])) - 1 > j]
        assert g == pytest.approx(1.5 * probe.mean(xs), abs=1e-5)
    assert all(g <= 1e-6 for g in res["gaps"]["clip_delta"]["early"])
    if not TAKES_LAST:
        return
    for j, g in enumerate(res["gaps"]["delta_keep"]["early"]):
        d = [stub_score(s[j]) - stub_score(s[-1]) for s in (rewards.split_steps(p["solution"]) for p in PROBLEMS)
             if len(s) - 1 > j]
        assert g == pytest.approx(1.5 * probe.mean(d), abs=1e-5)
    const = run(probe.Config(max_extra=2), lambda qs, st: [[0.7] * len(s) for s in st])
    assert const["gaps"]["delta"]["early"] == pytest.approx([0.7] * 4, abs=1e-6)
    assert const["gaps"]["delta_keep"]["early"] == pytest.approx([0.0] * 4, abs=1e-6)


def gae_advantages(token_rewards):
    """Naive GAE with gamma = lambda = 1 and V = 0: A_t = sum_{t' >= t} r_t'."""
    adv, acc = [0.0] * len(token_rewards), 0.0
    for t in reversed(range(len(token_rewards))):
        acc += token_rewards[t]
        adv[t] = acc
    return adv


def tokens(values, correct, alpha, per_step=3):
    """Token rewards of a trajectory of len(values) steps, `per_step` tokens each plus EOS."""
    r = []
    for v in values:
        r += [0.0] * (per_step - 1) + [alpha * v]
    return r + [correct]  # EOS carries Correct


@pytest.mark.parametrize("mode", ["prm", "clip", "delta", "clip_delta", "min", "prm_normed"])
def test_credit_gap_is_the_gae_advantage_difference_at_the_first_token_of_step_j_plus_1(mode):
    if mode not in getattr(rewards, "LEARNED_MODES", ("prm", "clip", "delta", "clip_delta")):
        pytest.skip(f"{mode} not available")
    cont, ans = [0.9, 0.6, 0.8, 0.7, 0.4], [0.9, 0.6, 0.3]  # share j = 2 steps
    vc, va = probe.step_values([cont, ans], mode, {}, 0.5)
    j, alpha = 2, 1.5
    a_cont = gae_advantages(tokens(vc, 1.0, alpha))[3 * j]  # first token of step j + 1
    a_ans = gae_advantages(tokens(va, 0.0, alpha))[3 * j]
    assert probe.credit_gap(vc, va, j, alpha, 1.0, 0.0) == pytest.approx(a_cont - a_ans, abs=1e-6)
    if mode == "delta":
        assert probe.credit_gap(vc, va, j, alpha) == pytest.approx(alpha * 0.8)  # x_{j+1}, drop
        # at the token ending step j the two reward-to-gos coincide (Delta's compensation)
        end_j = 3 * j - 1
        assert gae_advantages(tokens(vc, 1.0, alpha))[end_j] == pytest.approx(gae_advantages(tokens(va, 1.0, alpha))[end_j])


def test_mode_rows_split_delta_by_its_last_step_rule():
    names = [r[0] for r in probe.mode_rows()]
    assert names[0] == "success" and "prm" in names and "clip_delta" in names
    assert ("delta_keep" in names) == TAKES_LAST
    x, m = torch.tensor([[0.9, 0.6, 0.8]]), torch.ones(1, 3, dtype=torch.bool)
    if TAKES_LAST:
        assert probe.step_values([[0.9, 0.6, 0.8]], "delta", {"delta_last": "keep"}, 0.5) == [pytest.approx([0.3, -0.2, 0.8])]
    assert probe.step_values([[0.9, 0.6, 0.8]], "delta", {}, 0.5) == [pytest.approx([0.3, 0.6, 0.0])]
    assert rewards.transform_step_rewards(x, m, "delta", 0.5)[0].tolist() == pytest.approx([0.3, 0.6, 0.0])


def test_smoke_main_on_the_shipped_prm(tmp_path):
    prm = os.path.join(ROOT, "models", "arith-prm")
    if not os.path.isdir(prm):
        pytest.skip("models/arith-prm not shipped in this checkout")
    probe.main(["--prm", prm, "--dataset", "arith", "--eval-limit", "3", "--max-extra", "3",
                "--device", "cpu", "--out-dir", str(tmp_path)])
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "probe.png").stat().st_size > 0
    md = (tmp_path / "probe.md").read_text()
    assert "| `prm` |" in md and "Credit gap" in md
    assert res["n_problems"] == 3 and res["counts"]["repeat"] == [3] * 4
    assert res["returns"]["success"]["garbage"] == [1.0] * 4
    d = res["returns"]["delta"]["repeat"]
    assert max(d) - min(d) < 1e-5  # telescopes with a real PRM too
    assert dataclasses.asdict(probe.Config())["prm"] == "models/arith-prm"
