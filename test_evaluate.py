"""Tests for evaluate.py: the metric helpers against brute force, grading robustness, generation
padding invariance, subprocess smoke runs on a tiny model (arith and GSM8K-format rows, best-of-N
with a tiny PRM / ORM), bad input; and scripts/plot.py (the former plot mode)."""

import dataclasses
import importlib
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import common
import evaluate as ev
import rewards
from conftest import ROOT, build_tiny_model

plot = importlib.import_module("scripts.plot")


# -----------------------------------------------------------------------------
# pass@k, maj@k, repeated steps, PRM aggregation, best-of-N

def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 7):
        for c in range(n + 1):
            correct = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
                assert ev.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_edges_and_large_n():
    assert ev.pass_at_k(8, 0, 8) == 0.0
    assert ev.pass_at_k(8, 1, 1) == pytest.approx(1 / 8)
    assert ev.pass_at_k(8, 1, 8) == 1.0
    # n = 1000: C(1000, 500) overflows a float; the product form does not
    assert ev.pass_at_k(1000, 10, 500) == pytest.approx(1 - math.comb(990, 500) / math.comb(1000, 500))
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5)]:
        with pytest.raises(ValueError):
            ev.pass_at_k(*bad)


def test_majority_vote_tie_rule_and_non_voters():
    assert ev.majority_vote(["5", "3", "3", "5"]) == 0  # 2-2 tie: "5" was voted first
    assert ev.majority_vote(["3", "5", "5", "3"]) == 0
    assert ev.majority_vote(["7", "5", "3", "5"]) == 1  # clear majority, first voter of "5"
    assert ev.majority_vote([None, "5", None, "3"]) == 1  # None does not vote; 1-1 tie -> earliest
    assert ev.majority_vote([None, None]) is None
    assert ev.majority_vote(["x = 3", "4", "x=3"]) == 0  # whitespace does not split a vote


def test_maj_at_k_averages_disjoint_chunks():
    answers = ["1", "2", "2", "9", None, None, "3", "3"]
    correct = [True, False, False, False, False, False, True, True]
    assert ev.maj_at_k(answers, correct, 8) == 0.0  # "2" 2 votes, "3" 2 votes: "2" first -> wrong
    # k = 2: chunks [1,2] -> "1" (tie, first) right; [2,9] -> "2" wrong; [-,-] -> no vote; [3,3] right
    assert ev.maj_at_k(answers, correct, 2) == pytest.approx(2 / 4)
    assert ev.maj_at_k(answers, correct, 1) == pytest.approx(3 / 8)  # maj@1 = sampling accuracy
    # k = 3: chunks [1,2,2] -> "2" wrong, [9,-,-] -> "9" wrong; the last 2 samples are unused
    assert ev.maj_at_k(answers, correct, 3) == 0.0
    assert ev.maj_at_k(answers[::-1], correct[::-1], 3) == pytest.approx(1 / 2)  # [3,3,-] right


def test_repeated_steps_whitespace_normalised():
    steps = ["3 + 4 = 7", "7 +  1 = 8", "3  +\t4 = 7", "7 + 1 = 8", "3 + 4 = 7", "3 + 4 = 70"]
    assert rewards.repeated_steps(steps) == 3
    assert rewards.repeated_steps([]) == 0
    assert rewards.repeated_steps(["a", "A"]) == 0  # case matters: only whitespace is normalised
    resp = "1 + 1 = 2\n\n1 + 1 = 2\n\n 1 + 1 =  2 \n\nThe answer is \\boxed{2}."
    rec = ev.measure(resp, truncated=False, n_tokens=10)
    assert (rec["steps"], rec["repeated_steps"], rec["answer"]) == (4, 2, "2")


def test_aggregate_prm_and_best_of_n():
    assert ev.aggregate_prm([0.9, 0.2, 0.8], "min") == 0.2
    assert ev.aggregate_prm([0.9, 0.2, 0.8], "product") == pytest.approx(0.144)
    assert ev.aggregate_prm([0.9, 0.2, 0.8], "last") == 0.8
    assert ev.aggregate_prm([], "min") == -math.inf
    with pytest.raises(ValueError):
        ev.aggregate_prm([0.5], "mean")
    assert ev.best_of_n([0.1, 0.7, 0.7, 0.2]) == 1  # tie -> earliest
    assert ev.best_of_n([-math.inf, -math.inf]) == 0
    assert ev.ks_for(8) == [1, 2, 4, 8] and ev.ks_for(6) == [1, 2, 4, 6] and ev.ks_for(1) == [1]


def _rec(problem, kind, sample, correct, answer="1", truncated=False, prm=None, orm=None, steps=1):
    r = {"problem": problem, "kind": kind, "sample": sample, "correct": correct, "answer": answer,
         "truncated": truncated, "response_tokens": 10, "steps": steps, "repeated_steps": 0,
         "grading_error": None}
    if prm is not None:
        r["prm_step_scores"] = prm
    if orm is not None or prm is not None:
        r["orm_score"] = orm
    return r


def test_summarize_best_of_n_each_aggregation_picks_its_own_sample():
    # one problem, 3 samples: min picks s0, product picks s1, last picks s2; only s1 is right,
    # the ORM prefers s1. Greedy is wrong.
    recs = [_rec(0, "greedy", 0, False, "7"),
            _rec(0, "sample", 0, False, "5", prm=[0.6, 0.6, 0.6], orm=0.1),
            _rec(0, "sample", 1, True, "6", prm=[0.99, 0.5, 0.99], orm=0.9),
            _rec(0, "sample", 2, False, "5", prm=[0.3, 0.3, 0.995], orm=None)]
    res = ev.summarize(recs, prm_agg="product")
    assert res["best_of_n_prm_min"] == 0.0
    assert res["best_of_n_prm_product"] == 1.0 and res["best_of_n_prm"] == 1.0
    assert res["best_of_n_prm_last"] == 0.0
    assert res["best_of_n_orm"] == 1.0
    assert res["greedy_accuracy"] == 0.0 and res["sampling_accuracy"] == pytest.approx(1 / 3)
    assert res["maj@2"] == 0.0  # chunk [s0, s1]: 1-1 tie -> "5" (first) -> wrong
    assert res["pass@2"] == pytest.approx(2 / 3) and res["pass@3"] == 1.0


def test_within_problem_auc_hand_computed():
    # problem 0: the correct sample scores highest -> 1.0; problem 1: correct {0.4, 0.9} vs wrong
    # {0.4, 0.9}: pairs 1/2 (tie) + 0 + 1 + 1/2 (tie) = 2 of 4 -> 0.5; problem 2: all correct, left out
    auc, n = ev.within_problem_auc([[0.8, 0.5, 0.3], [0.4, 0.9, 0.4, 0.9], [0.1, 0.2]],
                                   [[True, False, False], [True, True, False, False], [True, True]])
    assert (auc, n) == (pytest.approx(0.75), 2)
    assert ev.within_problem_auc([[0.1, 0.2], [0.3]], [[True, True], [False]]) == (None, 0)
    assert ev.within_problem_auc([[-math.inf, 0.1]], [[False, True]]) == (1.0, 1)  # no steps ranks last


def test_summarize_within_problem_auc_uses_the_headline_aggregation():
    R = _rec
    recs = [  # problem 0: min ranks the correct s0 first (AUC 1), last ranks it last (AUC 0)
        R(0, "sample", 0, True, prm=[0.9, 0.6], orm=0.9), R(0, "sample", 1, False, prm=[0.5, 0.7], orm=None),
        R(0, "sample", 2, False, prm=[0.4, 0.8], orm=0.1), R(0, "sample", 3, False, prm=[0.3, 0.9], orm=0.95),
        # problem 1: correct {0.4, 0.9} vs wrong {0.4, 0.9} under every aggregation -> 0.5
        R(1, "sample", 0, True, prm=[0.4], orm=0.5), R(1, "sample", 1, True, prm=[0.9], orm=0.5),
        R(1, "sample", 2, False, prm=[0.4], orm=0.5), R(1, "sample", 3, False, prm=[0.9], orm=0.5),
        # problem 2: all correct -> not counted
        *[R(2, "sample", j, True, prm=[0.1 * j + 0.1], orm=0.5) for j in range(4)],
        # problem 3: the truncated sample is wrong (and scores highest): correct 0.5 beats 2 of 3 -> 2/3
        R(3, "sample", 0, True, prm=[0.5], orm=0.25), R(3, "sample", 1, False, truncated=True, prm=[0.95], orm=0.1),
        R(3, "sample", 2, False, prm=[0.1], orm=0.2), R(3, "sample", 3, False, prm=[0.2], orm=0.3)]
    res = ev.summarize(recs, prm_agg="min")
    assert res["prm_within_auc"] == pytest.approx((1 + 0.5 + 2 / 3) / 3) and res["prm_within_auc_problems"] == 3
    # ORM: problem 0 -> 0.9 beats None (-inf) and 0.1, loses to 0.95: 2/3; 1 -> 0.5; 3 -> 2/3
    assert res["orm_within_auc"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3) and res["orm_within_auc_problems"] == 3
    res = ev.summarize(recs, prm_agg="last")
    assert res["prm_within_auc"] == pytest.approx((0 + 0.5 + 2 / 3) / 3)
    assert "prm_within_auc" not in ev.summarize([R(0, "sample", 0, True)])  # no reward model, no key
    assert ev.summarize([R(0, "sample", 0, True, prm=[0.5])])["prm_within_auc"] is None


def test_summarize_truncated_does_not_vote_and_diagnostics():
    recs = [_rec(0, "sample", 0, False, "4", truncated=True, steps=5),
            _rec(0, "sample", 1, False, "4", truncated=True, steps=5),
            _rec(0, "sample", 2, True, "3", steps=2),
            _rec(1, "sample", 0, False, None, steps=0),
            _rec(1, "sample", 1, False, None, steps=0),
            _rec(1, "sample", 2, False, "2", steps=4)]
    recs[2]["repeated_steps"] = 1
    recs[4]["grading_error"] = "is_correct: ValueError: bad gold"
    res = ev.summarize(recs)
    assert res["maj@3"] == pytest.approx(0.5)  # problem 0: the truncated "4"s do not vote
    assert res["greedy_accuracy"] is None and "best_of_n_prm" not in res
    assert res["steps_per_response"] == pytest.approx(16 / 6)  # no greedy: headline = samples
    assert res["repeated_step_fraction"] == pytest.approx(1 / 16)
    assert res["truncated_fraction"] == pytest.approx(2 / 6)
    assert res["no_answer_fraction"] == pytest.approx(2 / 6)
    assert res["grading_errors"] == 1


def test_grade_counts_failures_and_truncation_without_crashing():
    recs = [dict(ev.measure(text, trunc, 5), gold=gold) for text, gold, trunc in [
        ("1 + 2 = 3\n\nThe answer is \\boxed{3}.", "3", False),
        ("The answer is \\boxed{3}.", "3", True),     # truncated: incorrect even if right
        ("The answer is \\boxed{4}.", "3", False),
        ("\\boxed{\\frac{1}{2}}", "0.5", False),
        ("\\boxed{3}", "", False),                    # unparsable gold: counted error, not a crash
        ("\x00\\boxed{" * 50, "3", False),            # garbage
    ]]
    ev.grade(recs, workers=1)
    assert [r["correct"] for r in recs] == [True, False, False, True, False, False]
    assert [r["grading_error"] is not None for r in recs] == [False] * 4 + [True, False]


# -----------------------------------------------------------------------------
# Generation

def test_left_padded_batch_gives_the_same_greedy_responses(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    qs = ["Compute 1 + 2.", "Compute 13 - 4 + 88 - 7 + 21.", "Compute 5 - 6 + 7."]
    cfg = ev.Config(greedy=True, samples=0, max_new_tokens=8, batch_size=3)
    jobs, batched = ev.generate_responses(model, tok, qs, cfg)
    alone = [ev.generate_responses(model, tok, [q], dataclasses.replace(cfg, batch_size=1))[1][0] for q in qs]
    assert jobs == [(0, "greedy", 0), (1, "greedy", 0), (2, "greedy", 0)] and batched == alone
    assert all(len(t) <= 8 and ((not fin) == (len(t) == 8 and tok.eos_token_id not in t)) for t, fin in batched)


class ScriptedLM(torch.nn.Module):
    """A stand-in policy whose generate() appends a fixed continuation per prompt (keyed by the
    unpadded prompt ids), cut at max_new_tokens and right-padded with pad_id as Hugging Face does."""

    def __init__(self, script):
        from transformers import GenerationConfig

        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))  # generate() reads the device from a parameter
        self.script = script
        self.generation_config = GenerationConfig()  # common.generate swaps it for a clean one

    def generate(self, input_ids, attention_mask, generation_config):
        T, pad = generation_config.max_new_tokens, generation_config.pad_token_id
        conts = [self.script[tuple(r[m.bool()].tolist())][:T] for r, m in zip(input_ids, attention_mask)]
        L = max(map(len, conts))
        return torch.cat([input_ids, torch.tensor([c + [pad] * (L - len(c)) for c in conts])], 1)


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_response_tokens_count_eos_when_finished_not_when_truncated(pad_is_eos):
    """response_tokens follows the response_mask convention (True on every generated token,
    EOS included): a finished response counts its EOS, a truncated one has no EOS to count."""
    from transformers import AutoTokenizer

    from conftest import ARITH_TOKENIZER

    tok = AutoTokenizer.from_pretrained(ARITH_TOKENIZER)  # one token per character
    eos, budget = tok.eos_token_id, 20
    if pad_is_eos:
        tok.pad_token = tok.eos_token
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    cases = [  # (question, continuation the model emits, hand count, truncated)
        ("Compute 1 + 2.", "\\boxed{3}", 9 + 1, False),  # 9 chars + EOS
        ("Compute 7 - 4.", "7 - 4 = 3\n\n\\boxed{3", 19 + 1, False),  # EOS is the 20th (last allowed) token
        ("Compute 13 - 4 + 88.", "13 - 4 = 9\n\n9 + 88 = 97", 20, True),  # 24 chars: cut at 20, no EOS
        ("Compute 5 - 6.", "5 - 6 = -1\n\n\\boxed{-1}", 20, True),  # 22 chars, EOS token 23: cut at 20
    ]
    prompts = [enc(common.build_prompt(tok, q)) for q, *_ in cases]
    script = {tuple(p): enc(c) + [eos] for p, (_, c, *_) in zip(prompts, cases)}
    gen = common.generate(ScriptedLM(script), tok, prompts, budget, batch_size=4, eos_ids={eos})
    problems = [{"question": q, "answer": "3"} for q, *_ in cases]
    recs = ev.response_records([(i, "greedy", 0) for i in range(len(cases))], gen, problems, tok)
    assert [r["response_tokens"] for r in recs] == [n for *_, n, _ in cases]
    assert [r["truncated"] for r in recs] == [t for *_, t in cases]
    assert [r["response"] for r in recs] == ["\\boxed{3}", "7 - 4 = 3\n\n\\boxed{3",
                                             "13 - 4 = 9\n\n9 + 88 =", "5 - 6 = -1\n\n\\boxed{-"]
    assert ev.diagnostics(recs)["mean_response_tokens"] == pytest.approx((10 + 20 + 20 + 20) / 4)


# -----------------------------------------------------------------------------
# Subprocess smoke runs and bad input

def run_eval(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p


def read_outputs(out_dir):
    with open(os.path.join(out_dir, "results.json")) as f:
        res = json.load(f)
    with open(os.path.join(out_dir, "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    return res, samples


REQUIRED_KEYS = ["greedy_accuracy", "sampling_accuracy", "pass@1", "pass@2", "maj@1", "maj@2",
                 "mean_response_tokens", "steps_per_response", "repeated_step_fraction",
                 "truncated_fraction", "no_answer_fraction", "grading_errors", "config"]


def test_smoke_arith_and_gsm8k_rows(tiny_model_dir, tmp_path):
    gsm = tmp_path / "gsm8k_tiny.jsonl"
    with open(gsm, "w") as f:
        for q, a in [("Tom has 3 apples and buys 4 more. How many apples?", "3 + 4 = 7\n#### 7"),
                     ("A box holds 12 pens. How many pens in 2 boxes?", "12 * 2 = 24\n#### 24"),
                     ("Sam had 1,000 dollars and spent 1. How much is left?", "#### 999")]:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    for dataset, limit in [("arith", "3"), (str(gsm), "0")]:
        out = tmp_path / f"out-{os.path.basename(dataset)}"
        p = run_eval("--policy", tiny_model_dir, "--dataset", dataset, "--eval-limit", limit,
                     "--samples", "2", "--max-new-tokens", "12", "--batch-size", "4", "--out-dir", str(out))
        res, samples = read_outputs(out)
        assert all(k in res for k in REQUIRED_KEYS), sorted(res)
        assert "greedy_accuracy" in p.stdout and res["n_problems"] == 3 and res["n_samples"] == 2
        assert len(samples) == 3 * (1 + 2)
        assert sorted((s["problem"], s["kind"], s["sample"]) for s in samples) == sorted(
            [(i, "greedy", 0) for i in range(3)] + [(i, "sample", j) for i in range(3) for j in range(2)])
        assert all(0.0 <= res[k] <= 1.0 for k in REQUIRED_KEYS[:6] + REQUIRED_KEYS[8:11])
        assert 1 <= res["mean_response_tokens"] <= 12 and res["config"]["samples"] == 2
        if dataset != "arith":
            assert [s["gold"] for s in samples if s["kind"] == "greedy"] == ["7", "24", "999"]


ARITH_POLICY = os.path.join(ROOT, "models", "arith-policy")


@pytest.mark.skipif(not os.path.exists(os.path.join(ARITH_POLICY, "config.json")),
                    reason="models/arith-policy not built (python sft.py ..., see README)")
def test_shipped_arith_policy_end_to_end(tmp_path):
    # the trained policy answers in the boxed format; its grades must agree with an independent
    # string comparison (arith answers are integers), and it must get some right
    out = tmp_path / "policy"
    run_eval("--policy", ARITH_POLICY, "--eval-limit", "8", "--samples", "2", "--out-dir", str(out))
    res, samples = read_outputs(out)
    assert res["no_answer_fraction"] == 0.0 and res["truncated_fraction"] == 0.0
    assert res["greedy_accuracy"] > 0.0 and res["steps_per_response"] >= 2
    for s in samples:
        assert s["correct"] == (s["answer"] == s["gold"] and not s["truncated"]), s
    assert res["pass@2"] >= res["sampling_accuracy"]


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory):
    """A tiny random causal LM usable as a Math-Shepherd-style PRM/ORM: the arith tokenizer has
    the step tag "<step>" and the label tokens "+" / "-" (passed explicitly below)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-rm"), seed=1, hidden=32, layers=1)


def test_best_of_n_with_tiny_prm_and_orm(tiny_model_dir, tiny_rm_dir, tmp_path):
    if not hasattr(rewards, "load_reward_model"):
        pytest.skip("rewards.load_reward_model has not landed in rewards.py")
    out = tmp_path / "bon"
    run_eval("--policy", tiny_model_dir, "--dataset", "arith", "--eval-limit", "3", "--samples", "4",
             "--max-new-tokens", "24", "--temperature", "1.5", "--prm", tiny_rm_dir, "--orm", tiny_rm_dir,
             "--step-tag", "<step>", "--prm-agg", "last", "--out-dir", str(out))
    res, samples = read_outputs(out)
    for k in ["best_of_n_prm", "best_of_n_prm_min", "best_of_n_prm_product", "best_of_n_prm_last",
              "best_of_n_orm", "maj@4", "greedy_accuracy"]:
        assert 0.0 <= res[k] <= 1.0, k
    assert res["best_of_n_prm"] == res["best_of_n_prm_last"]
    # every response carries one PRM score per step, each a probability
    assert all(len(s["prm_step_scores"]) == s["steps"] for s in samples)
    assert all(0.0 <= x <= 1.0 for s in samples for x in s["prm_step_scores"])
    # results.json agrees with a naive re-ranking of samples.jsonl
    for how, agg in [("min", min), ("product", math.prod), ("last", lambda v: v[-1])]:
        hits = []
        for p in range(3):
            group = sorted((s for s in samples if s["problem"] == p and s["kind"] == "sample"),
                           key=lambda s: s["sample"])
            best, best_score = None, None
            for s in group:
                score = agg(s["prm_step_scores"]) if s["prm_step_scores"] else -math.inf
                if best is None or score > best_score:
                    best, best_score = s, score
            hits.append(best["correct"])
        assert res[f"best_of_n_prm_{how}"] == pytest.approx(sum(hits) / 3), how
    # within-problem AUC (--prm-agg last) against a pairwise count over samples.jsonl
    aucs = []
    for p in range(3):
        group = [s for s in samples if s["problem"] == p and s["kind"] == "sample"]
        last = lambda s: s["prm_step_scores"][-1] if s["prm_step_scores"] else -math.inf  # noqa: E731
        pos, neg = [last(s) for s in group if s["correct"]], [last(s) for s in group if not s["correct"]]
        if pos and neg:
            aucs.append(sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg)))
    assert res["prm_within_auc_problems"] == len(aucs)
    assert res["prm_within_auc"] == (pytest.approx(sum(aucs) / len(aucs)) if aucs else None)
    # the saved scores are the scorer's scores for that response (no batching mix-up)
    rm = rewards.load_reward_model(tiny_rm_dir, kind="prm", step_tag="<step>")
    scored = [s for s in samples if s["steps"]][:4]
    fresh = rm.score([s["question"] for s in scored], [s["response"] for s in scored])
    for s, f in zip(scored, fresh):
        assert s["prm_step_scores"] == pytest.approx(f, abs=1e-4)


@pytest.mark.parametrize("dataset", ["nope", "data/does/not/exist.jsonl"])
def test_unknown_dataset_is_a_clear_error(dataset):
    with pytest.raises(common.RunError) as e:
        ev.main(["--dataset", dataset, "--policy", "/nonexistent"])
    msg = str(e.value)
    assert "arith, gsm8k, math, math500" in msg and dataset in msg


def test_missing_policy_and_bad_flags_are_clear_errors(tmp_path, capsys):
    with pytest.raises(common.RunError) as e:
        ev.main(["--policy", str(tmp_path / "no-such-policy"), "--eval-limit", "1"])
    assert "not found" in str(e.value) and "no-such-policy" in str(e.value)
    with pytest.raises(common.RunError) as e:  # caught before any generation
        ev.main(["--policy", str(tmp_path), "--prm", "models/no-such-prm"])
    assert "--prm 'models/no-such-prm' not found" in str(e.value)
    hub_id = "Qwen/Qwen2-1.5B-Instruct"
    assert common.model_source(hub_id, "--policy", "") == hub_id  # a hub id is left to the hub
    with pytest.raises(common.RunError) as e:  # exists, but is not a model
        ev.main(["--policy", str(tmp_path), "--eval-limit", "1"])
    assert "cannot load --policy" in str(e.value)
    with pytest.raises(SystemExit):
        common.parse_config(ev.Config, ["--no-such-flag", "1"])
    with pytest.raises(SystemExit) as e:  # a usage error: exit code 2, the allowed values named
        ev.main(["--prm-agg", "mean"])
    assert e.value.code == 2 and "'min', 'product', 'last'" in capsys.readouterr().err
    cfg = common.parse_config(ev.Config, ["--greedy", "false", "--samples", "3", "--out-dir", "x"])
    assert (cfg.greedy, cfg.samples, cfg.out_dir) == (False, 3, "x")
    assert common.parse_config(ev.Config, ["--greedy"]).greedy is True
    with pytest.raises(SystemExit):
        common.parse_config(ev.Config, ["--greedy", "maybe"])


def test_run_error_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--policy", str(tmp_path / "nope")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: --policy ") and p.stderr.count("\n") == 1, p.stderr


# -----------------------------------------------------------------------------
# scripts/plot.py (the former plot mode of evaluate.py)

def test_plot_from_synthetic_metrics(tmp_path):
    runs = []
    for name, slope in [("prm", 3.0), ("clip_delta", 0.1)]:
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        with open(d / "metrics.jsonl", "w") as f:
            for step in range(10):
                row = {"step": step, "reward/total": 0.1 * step, "rollout/accuracy": 0.5,
                       "rollout/response_tokens": 40 + slope * step, "perf/step_seconds": 1.0}
                if name == "prm":  # keys only one run has are still plotted
                    row.update({"rollout/steps_per_response": 4 + step, "reward/prm": 0.7})
                f.write(json.dumps(row) + "\n")
            if name == "prm":
                f.write('{"step": 10, "reward/to')  # half-written last line of a running job
        runs.append(str(d / "metrics.jsonl"))
    png = tmp_path / "plots" / "curves.png"
    plot.main([runs[0], str(tmp_path / "runs" / "clip_delta"), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    keys = plot.plot_runs(runs, str(tmp_path / "p2.png"), smooth=3)
    assert keys == ["reward/total", "rollout/accuracy", "rollout/response_tokens",
                    "rollout/steps_per_response", "reward/prm"]
    xs, ys = plot.series([{"step": 0, "a": 1.0}, {"step": 1, "a": float("nan")}, {"step": 2, "a": 3.0}], "a", 2)
    assert (xs, ys) == ([0, 2], [1.0, 2.0])
    with pytest.raises(common.RunError):
        plot.plot_runs([str(tmp_path / "missing.jsonl")], str(tmp_path / "x.png"))
