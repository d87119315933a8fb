"""
Tests for scripts/ablation.py: its PPO flags parse in ppo.py, run naming, the seed aggregation of
the results table. The runs themselves are experiments (README), not tests.
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
    ppo_cfg = common.parse_config(ppo.Config, ablation.ppo_flags(cfg) + ["--reward", "prm", "--seed", "1"])
    assert ppo_cfg.policy == cfg.policy == "models/arith-policy"
    assert (ppo_cfg.steps, ppo_cfg.prompts_per_step, ppo_cfg.samples_per_prompt) == (40, 8, 8)
    assert ppo_cfg.anneal_lr is False  # the ablation holds the learning rate constant
    assert (ppo_cfg.lam, ppo_cfg.beta, ppo_cfg.eta, ppo_cfg.max_new_tokens) == (0.95, 0.02, 0.5, 160)
    assert ppo_cfg.reward == "prm" and ppo_cfg.seed == 1


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
