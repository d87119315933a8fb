"""
Tests for scripts/ablation.py: its PPO flags parse in ppo.py, the variants and run naming, the
stale-run check, the extra-steps count, the seed aggregation of the results table. The runs
themselves are experiments (README), not tests.
"""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))

import ablation  # noqa: E402
import common  # noqa: E402
import ppo  # noqa: E402


def test_ppo_flags_parse_and_hold_the_documented_settings():
    cfg = ablation.Config()
    flags = ablation.ppo_flags(cfg) + ablation.variant_flags("prm", 1, cfg.eta, "out/x")
    ppo_cfg = common.parse_config(ppo.Config, flags)
    assert ppo_cfg.policy == cfg.policy == "models/arith-policy"
    assert (ppo_cfg.steps, ppo_cfg.prompts_per_step, ppo_cfg.samples_per_prompt) == (50, 64, 1)
    assert (ppo_cfg.eval_every, ppo_cfg.eval_limit, ppo_cfg.eval_split) == (25, 200, "valid")
    assert (ppo_cfg.eta, ppo_cfg.max_new_tokens, ppo_cfg.save_every, ppo_cfg.sample_every) == (0.5, 160, 0, 0)
    assert ppo_cfg.reward == "prm" and ppo_cfg.seed == 1 and ppo_cfg.out_dir == "out/x"
    # v2: every other PPO setting is ppo.py's own default (tuned on valid)
    default = ppo.Config()
    for k in ("lr", "lam", "beta", "alpha", "ppo_epochs", "minibatches", "anneal_lr", "gamma", "temperature",
              "delta_last", "truncation"):
        assert getattr(ppo_cfg, k) == getattr(default, k), k


def test_shipped_models_named_by_the_ablation_exist():
    cfg = ablation.Config()
    for path in (cfg.policy, cfg.prm, cfg.orm):
        assert os.path.exists(os.path.join(ablation.ROOT, path, "model.safetensors")), path


def test_run_names_seed_major_with_eta_sweep():
    cfg = ablation.Config(modes="prm,clip", seeds="0,1", eta_sweep="0.3,0.5")
    names = [n for n, *_ in ablation.run_names(cfg)]
    assert names[:4] == ["prm_s0", "clip_s0", "prm_s1", "clip_s1"]
    # the sweep runs clip and clip_delta on the first seed, skipping the default eta (already a run)
    assert names[4:] == ["clip_eta0.3_s0", "clip_delta_eta0.3_s0"]
    # valid evals: the sweep and the first seed's clip / clip_delta at the default eta
    assert [n for n, *_ in ablation.valid_runs(cfg)] == ["clip_s0", "clip_eta0.3_s0", "clip_delta_eta0.3_s0"]


def test_default_runs_are_the_twelve_variants_times_seeds():
    cfg = ablation.Config()
    runs = ablation.run_names(cfg)
    variants = ["success", "orm", "prm", "prm_normed", "prm_lenpen", "clip", "delta", "delta_keep",
                "clip_delta", "min", "prm_noscore", "clip_delta_noscore"]
    assert cfg.modes.split(",") == variants == list(ablation.VARIANTS)
    assert runs == [(f"{v}_s{s}", v, s, 0.5) for s in (0, 1, 2) for v in variants]
    with pytest.raises(common.RunError, match="unknown variant"):
        ablation.run_names(ablation.Config(modes="prm,clipdelta"))


def test_variant_flags_reach_ppo():
    cfg = ablation.Config()

    def parsed(variant):
        return common.parse_config(ppo.Config, ablation.ppo_flags(cfg) + ablation.variant_flags(variant, 0, 0.5, "o"))
    keep = ablation.variant_flags("delta_keep", 2, 0.7, "out/d")
    assert keep[:4] == ["--delta-last", "keep", "--reward", "delta"] and keep[4:] == [
        "--seed", "2", "--eta", "0.7", "--out-dir", "out/d"]
    assert ablation.variant_flags("prm_noscore", 0, 0.5, "o")[:4] == ["--truncation", "no-score", "--reward", "prm"]
    got = {v: parsed(v) for v in ablation.VARIANTS}
    assert (got["delta_keep"].reward, got["delta_keep"].delta_last, got["delta_keep"].truncation) == ("delta", "keep", "zero-success")
    assert (got["prm_noscore"].reward, got["prm_noscore"].truncation) == ("prm", "no-score")
    assert (got["clip_delta_noscore"].reward, got["clip_delta_noscore"].truncation) == ("clip_delta", "no-score")
    assert (got["delta"].delta_last, got["prm"].truncation) == ("drop", "zero-success")
    for v, (mode, _) in ablation.VARIANTS.items():
        assert got[v].reward == mode, v


def test_differs_names_the_flags_a_saved_run_was_made_without():
    flags = ["--steps", "50", "--eta", "0.5", "--policy", "models/arith-policy", "--out-dir", "out/a/x"]
    saved = {"steps": 50, "eta": 0.5, "policy": "models/arith-policy", "out_dir": "elsewhere/x"}
    assert ablation.differs(saved, flags) == []  # the out dir may move
    assert ablation.differs(dict(saved, steps=40, policy="v1"), flags) == [
        "steps: 40 -> 50", "policy: v1 -> models/arith-policy"]


def test_extra_steps_counts_restatements_and_checks(tmp_path):
    rows = [{"kind": "greedy", "response": "1 + 2 = 3\n\nSo far we have 3.\n\nCheck: 3 - 2 = 1.\n\nThe answer is 3."},
            {"kind": "greedy", "response": "1 + 2 = 3\n\nThe answer is 3."},
            {"kind": "sample", "response": "So far we have 3.\n\nSo far we have 3."}]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ablation.extra_steps(str(tmp_path / "samples.jsonl")) == pytest.approx(1.0)  # (2 + 0) / 2 greedy
    assert ablation.extra_steps(str(tmp_path / "none.jsonl")) is None


def test_mean_std_is_sample_std():
    m, s = ablation.mean_std([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0) and s == pytest.approx(1.0)
    m, s = ablation.mean_std([5.0])
    assert m == 5.0 and s != s  # one seed: no std (NaN)


def test_table_aggregates_seeds(tmp_path):
    cfg = ablation.Config(modes="success,prm", seeds="0,1", out_dir=str(tmp_path / "out"),
                          results_dir=str(tmp_path / "res"), tag="t")
    keys = [k for k, *_ in ablation.COLS]

    def write(name, acc, length):
        d = tmp_path / "out" / "eval" / name
        d.mkdir(parents=True)
        r = dict.fromkeys(keys, 0.0) | {"greedy_accuracy": acc, "mean_response_tokens": length, "n_problems": 500}
        (d / "results.json").write_text(json.dumps(r))

    write("base", 0.5, 70.0)
    write("success_s0", 0.6, 70.0)
    write("success_s1", 0.4, 72.0)
    write("prm_s0", 0.0, 160.0)  # prm_s1 unfinished: the mode shows n = 1
    ablation.table(cfg)
    js = json.load(open(tmp_path / "res" / "t.json"))
    assert js["modes"]["success"]["n_seeds"] == 2
    assert js["modes"]["success"]["greedy_accuracy"]["mean"] == pytest.approx(0.5)
    assert js["modes"]["success"]["greedy_accuracy"]["std"] == pytest.approx(0.1414, abs=1e-3)
    assert js["modes"]["prm"]["n_seeds"] == 1
    md = open(tmp_path / "res" / "t.md").read()
    assert "| success | 2 | 50.0 ± 14.1 |" in md and "| prm | 1 | 0.0 |" in md and "500 arith test problems" in md


def test_table_sweep_best_of_n_extra_steps_and_timing(tmp_path, capsys):
    cfg = ablation.Config(modes="prm_normed,clip", seeds="0", eta_sweep="0.3", bon_n="8,16",
                          out_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "res"), tag="t")
    keys = [k for k, *_ in ablation.COLS if k != "extra_steps_per_response"]

    def write(name, acc, extra=None, samples=None):
        d = tmp_path / "out" / "eval" / name
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(dict.fromkeys(keys, 0.0) | {"greedy_accuracy": acc} | (extra or {})))
        if samples:
            (d / "samples.jsonl").write_text("".join(json.dumps({"kind": "greedy", "response": r}) + "\n" for r in samples))

    write("prm_normed_s0", 0.5, samples=["a\n\nCheck: 1 + 1 = 2.\n\nSo far we have 2.", "b"])
    write("clip_s0", 0.6)
    write("clip_s0_valid", 0.7)
    write("clip_eta0.3_s0_valid", 0.8)
    write("clip_eta0.3_s0", 0.99)  # a test eval of a sweep run (not made by evals) stays out of every table
    write("base_bon8", 0.5, {"maj@8": 0.6, "pass@8": 0.9, "best_of_n_prm": 0.55, "best_of_n_orm": 0.52})
    write("base_bon16", 0.5, {"maj@16": 0.6})  # no pass@16 / best-of-N keys: blank cells, no crash
    ablation.add_timing(cfg, "train", 60.0)
    ablation.add_timing(cfg, "train", 60.0)
    ablation.table(cfg)
    md = open(tmp_path / "res" / "t.md").read()
    js = json.load(open(tmp_path / "res" / "t.json"))
    assert "| prm_normed | 1 | 50.0 |" in md and md.split("| prm_normed |")[1].split("\n")[0].endswith("| 1.00 |  |")
    assert "| clip | 1 | 60.0 |" in md and "30.30 / 28.40" in md and "99.0" not in md
    assert "| clip | 0.3 | 80.0 |" in md and "| clip | 0.5 | 70.0 |" in md
    assert js["eta_sweep"]["clip_eta0.3_s0_valid"]["eta"] == 0.3
    assert "| 8 | 50.0 | 60.0 | 90.0 | 55.0 | 52.0 |" in md and "| 16 | 50.0 | 60.0 | - | - | - |" in md
    assert "base_bon16/results.json has no pass@16, best_of_n_prm, best_of_n_orm" in capsys.readouterr().out
    assert js["best_of_n"]["8"]["pass@8"] == 0.9 and js["modes"]["prm_normed"]["extra_steps_per_response"]["mean"] == 1.0
    assert "train 2.0 min" in md and js["timing"] == {"train": 120.0}


def test_pick_pairs_prefers_wrong_or_longer_prm_responses():
    a = [{"problem": i, "correct": i not in (2, 6), "response_tokens": 80 if i == 4 else 70} for i in range(8)]
    b = [{"problem": i, "correct": True, "response_tokens": 70} for i in range(8)]
    assert [x["problem"] for x, _ in ablation.pick_pairs(a, b)] == [2, 4, 6, 0]  # topped up with the first
    assert all(x["problem"] == y["problem"] for x, y in ablation.pick_pairs(a, b))
