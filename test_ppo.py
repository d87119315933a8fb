"""Tests for ppo.py: the math helpers against naive loops, masks, sampling, and subprocess runs on
tiny random models (one per reward mode, torchrun + FSDP on gloo, SIGKILL + resume, bad input)."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import ppo
import rewards
from conftest import ROOT, build_tiny_model

PY = sys.executable
TINY = ["--prompts-per-step", "4", "--samples-per-prompt", "2", "--max-new-tokens", "24",
        "--eval-limit", "4", "--sample-every", "1", "--prm-step-tag", "<step>"]


def ragged(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = T  # one full row, and zero-length rows likely
    mask = torch.arange(T)[None] < lengths[:, None]  # (B, T) prefix masks
    return mask, torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)


# -----------------------------------------------------------------------------
# pure helpers vs naive loops

@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (1.0, 0.0), (0.99, 0.5)])
def test_gae_matches_naive_double_loop(gamma, lam):
    mask, r, v = ragged(7, 9, seed=1)
    adv, ret = ppo.gae(r * mask, v * mask, mask, gamma, lam)
    for b in range(7):
        n = int(mask[b].sum())
        for t in range(9):
            if t >= n:
                assert adv[b, t] == 0 and ret[b, t] == 0
                continue
            want = 0.0
            for k in range(t, n):  # A_t = sum_k (gamma lam)^(k-t) delta_k, V = 0 after the end
                nxt = v[b, k + 1].item() if k + 1 < n else 0.0
                want += (gamma * lam) ** (k - t) * (r[b, k].item() + gamma * nxt - v[b, k].item())
            assert adv[b, t].item() == pytest.approx(want, abs=1e-5)
            assert ret[b, t].item() == pytest.approx(want + v[b, t].item(), abs=1e-5)


def test_gae_gamma_one_lam_one_is_return_to_go_minus_value():
    mask, r, v = ragged(5, 6, seed=2)
    adv, _ = ppo.gae(r * mask, v * mask, mask, 1.0, 1.0)
    rtg = (r * mask).flip(1).cumsum(1).flip(1)
    assert torch.allclose(adv, (rtg - v) * mask, atol=1e-5)


def test_masked_mean_and_whiten_match_naive():
    mask, x, _ = ragged(6, 8, seed=3)
    vals = [x[b, t].item() for b in range(6) for t in range(8) if mask[b, t]]
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((y - mean) ** 2 for y in vals) / (len(vals) - 1))
    assert ppo.masked_mean(x, mask).item() == pytest.approx(mean, abs=1e-6)
    w = ppo.masked_whiten(x, mask)
    for b in range(6):
        for t in range(8):
            want = (x[b, t].item() - mean) / std if mask[b, t] else 0.0
            assert w[b, t].item() == pytest.approx(want, abs=1e-4)
    assert ppo.masked_whiten(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)).abs().max() == 0  # eps guard


def test_kl_penalty_on_every_response_token_and_success_on_last():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # row 0: EOS at t=2
    logp, ref = torch.randn(2, 5), torch.randn(2, 5)
    step_vals = torch.tensor([[0.5], [0.25]])
    score = rewards.place_rewards(step_vals, torch.tensor([[0], [1]]), torch.ones(2, 1, dtype=torch.bool),
                                  torch.tensor([1.0, 0.0]), mask)
    total, kl = ppo.kl_rewards(score, logp, ref, mask, beta=0.1)
    want = -0.1 * (logp - ref) * mask
    want[0, 0] += 0.5
    want[1, 1] += 0.25
    want[0, 2] += 1.0  # success on the EOS token, the last True of the mask
    assert torch.allclose(total, want)
    assert (total[0, 3:] == 0).all() and (kl[0, 3:] == 0).all()  # nothing on padding
    assert (kl[mask] != 0).all()  # KL on every response token, EOS included


def test_loss_masking_includes_eos_excludes_padding():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(2, 4, generator=g) for _ in range(6)]  # logp, old, adv, v, old_v, ret

    def total(a):
        L = ppo.ppo_token_losses(*a, mask, 0.2, 0.2)
        return (L["pg"].sum() + L["vf"].sum()).item()

    base = total(args)
    junk = [a.clone() for a in args]
    for a in junk:
        a[0, 3] = 1e6  # padding position: anything there must not matter
    assert total(junk) == pytest.approx(base)
    eos = [a.clone() for a in args]
    eos[2][0, 2] += 1.0  # the EOS token's advantage does matter
    assert total(eos) != pytest.approx(base)


def test_minibatch_split_keeps_prompts_together_and_is_world_size_invariant():
    prompts, M, n = 24, 4, 3
    ids = ppo.minibatch_ids(prompts, M, n, torch.Generator().manual_seed(0))
    assert sorted(ids.tolist()) == sorted(list(range(M)) * (prompts * n // M))
    assert all(len(set(ids[p * n:(p + 1) * n].tolist())) == 1 for p in range(prompts))  # a prompt's samples together
    for world in (1, 2, 3, 6):  # every rank block holds the same share of each minibatch
        B = prompts * n // world
        for r in range(world):
            block = ids[r * B:(r + 1) * B]
            assert all((block == m).sum() == B // M for m in range(M))


def test_problem_indices_are_epoch_permutations():
    seen = [i for s in range(5) for i in ppo.problem_indices(s, 4, 10, seed=3)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert ppo.problem_indices(2, 4, 10, seed=3) == seen[8:12]


def test_repeated_steps():
    assert ppo.repeated_steps(["1 + 2 = 3", "1  +  2 = 3", "3 + 4 = 7", "1 + 2 = 3"]) == 2
    assert ppo.repeated_steps([]) == 0


# -----------------------------------------------------------------------------
# the sampler

@pytest.fixture(scope="module")
def tiny_policy(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), tok


def test_greedy_sample_matches_generate_with_left_padding(tiny_policy):
    model, tok = tiny_policy
    ids, mask = ppo.encode(tok, ["Compute 1 + 2.", "Compute 10 - 200 + 3000 - 4."], "cpu")
    out, lengths, fin = ppo.sample(model, ids, mask, 12, 0.0, {tok.eos_token_id}, tok.pad_token_id)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[:, ids.shape[1]:]
    for b in range(2):
        n = int(lengths[b])
        assert out[b, :n].tolist() == ref[b, :n].tolist()


def test_sampled_row_depends_only_on_its_global_index(tiny_policy):
    model, tok = tiny_policy
    qs = ["Compute 1 + 2.", "Compute 33 - 4 + 5.", "Compute 7 + 8 + 9 + 10.", "Compute 5 - 6."]
    ids, mask = ppo.encode(tok, qs, "cpu")
    full, Lf, _ = ppo.sample(model, ids, mask, 16, 1.0, {tok.eos_token_id}, tok.pad_token_id,
                             torch.Generator().manual_seed(5), torch.arange(4), 4)
    ids2, mask2 = ppo.encode(tok, qs[2:], "cpu")  # rows 2, 3 alone, as rank 1 of 2 would hold them
    half, Lh, _ = ppo.sample(model, ids2, mask2, 16, 1.0, {tok.eos_token_id}, tok.pad_token_id,
                             torch.Generator().manual_seed(5), torch.arange(2) + 2, 4)
    for b in range(2):
        assert Lh[b] == Lf[b + 2] and half[b, :Lh[b]].tolist() == full[b + 2, :Lf[b + 2]].tolist()


def test_logprobs_and_values_do_not_depend_on_padding(tiny_policy, tiny_model_dir):
    from transformers import AutoModelForTokenClassification
    model, tok = tiny_policy
    critic = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    qs = ["Compute 1 + 2.", "Compute 10 - 200 + 3000 - 4.", "Compute 5 - 6 + 7."]
    ids, mask = ppo.encode(tok, qs, "cpu")
    resp, lengths, _ = ppo.sample(model, ids, mask, 10, 1.0, {tok.eos_token_id}, tok.pad_token_id,
                                  torch.Generator().manual_seed(1), torch.arange(3), 3)
    lengths = torch.tensor([10, 4, 7])  # ragged responses, as if rows 1 and 2 had ended early
    rmask = torch.arange(resp.shape[1])[None] < lengths[:, None]
    full, attn, P = torch.cat([ids, resp], 1), torch.cat([mask, rmask.long()], 1), ids.shape[1]
    with torch.no_grad():
        logp = ppo.policy_logprobs(model, full, attn, P, 1.0)
        values = ppo.critic_values(critic, full, attn, P)
        for b in range(3):  # the same row alone, with no padding at all
            p = int(mask[b].sum())
            row = torch.cat([ids[b, P - p:], resp[b, :lengths[b]]])[None]
            lp = torch.log_softmax(model(input_ids=row).logits[0, p - 1:-1].float(), -1)
            want = lp.gather(-1, row[0, p:, None]).squeeze(-1)
            assert torch.allclose(logp[b, :lengths[b]], want, atol=1e-5)
            v = critic(input_ids=row).logits[0, p - 1:-1, 0]
            assert torch.allclose(values[b, :lengths[b]], v, atol=1e-5)


def test_response_mask_covers_eos_even_when_pad_equals_eos(tiny_policy):
    model, tok = tiny_policy
    ids, mask = ppo.encode(tok, ["Compute 1 + 2.", "Compute 4 - 5."], "cpu")
    free, _, fin = ppo.sample(model, ids, mask, 8, 0.0, set(), tok.pad_token_id)
    assert not fin.any()
    eos = int(free[0, 3])  # pretend row 0's 4th greedy token is EOS, and pad is that same id
    out, lengths, fin = ppo.sample(model, ids, mask, 8, 0.0, {eos}, pad_id=eos)
    n = int(lengths[0])
    assert fin[0] and n <= 4 and out[0, n - 1] == eos
    rmask = torch.arange(out.shape[1])[None] < lengths[:, None]  # how ppo.py builds response_mask
    assert rmask[0, n - 1] and not rmask[0, n:].any()  # EOS in, padding out, though ids are equal


# -----------------------------------------------------------------------------
# end-to-end runs on tiny models

def run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kw)


def metrics(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]


KEYS = ["reward/success", "reward/learned", "reward/kl", "reward/total", "policy/loss", "policy/clipfrac",
        "policy/approx_kl", "policy/entropy", "policy/first_ratio", "value/loss", "value/clipfrac",
        "rollout/response_tokens", "rollout/steps_per_response", "rollout/repeated_step_fraction",
        "rollout/truncated_fraction", "rollout/accuracy", "perf/generate_s", "perf/score_s",
        "perf/forward_s", "perf/update_s", "perf/step_s"]


@pytest.mark.parametrize("mode", ppo.REWARD_MODES)
def test_smoke_run_per_reward_mode(mode, tiny_model_dir, tmp_path):
    out = str(tmp_path / mode)
    p = run([PY, "ppo.py", "--policy", tiny_model_dir, "--prm", tiny_model_dir, "--orm", tiny_model_dir,
             "--reward", mode, "--steps", "2", "--out-dir", out, *TINY])
    assert p.returncode == 0, p.stderr[-3000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval/greedy_accuracy" in rows[-1]
    for r in rows[1:]:
        assert all(k in r and math.isfinite(r[k]) for k in KEYS), r
        assert abs(r["policy/first_ratio"] - 1) < 1e-4
    if mode == "success":
        assert all(r["reward/learned"] == 0 for r in rows[1:])
    elif "delta" not in mode:  # (Delta gives 0 to the random policy's one-step responses)
        assert any(r["reward/learned"] != 0 for r in rows[1:])
    if mode in ("clip", "clip_delta"):
        assert all(r["reward/learned"] <= 0 for r in rows[1:])  # Clip: every step term <= 0
    assert "--- sample" in p.stdout + p.stderr
    meta = json.load(open(os.path.join(out, "ckpt", "meta.json")))
    assert meta["step"] == 2 and meta["config"]["reward"] == mode
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification
    AutoModelForCausalLM.from_pretrained(os.path.join(out, "ckpt", "policy"))
    AutoModelForTokenClassification.from_pretrained(os.path.join(out, "ckpt", "critic"))


def test_torchrun_fsdp_two_ranks_matches_one_process(tiny_model_dir, tmp_path):
    common = ["--policy", tiny_model_dir, "--prm", tiny_model_dir, "--reward", "clip_delta", "--steps", "2",
              *TINY, "--sample-every", "0"]
    one = run([PY, "ppo.py", *common, "--out-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run([PY, "-m", "torch.distributed.run", "--nproc_per_node=2", "ppo.py", *common, "--fsdp",
               "--out-dir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "per rank 4 rows" in two.stdout
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for k, v in x.items():
            if not k.startswith("perf/"):
                assert y[k] == pytest.approx(v, rel=1e-3, abs=1e-5), (x["step"], k)
    from safetensors.torch import load_file  # the gathered FSDP checkpoint equals the 1-process one
    wa = load_file(str(tmp_path / "one" / "ckpt" / "policy" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "ckpt" / "policy" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_sigkill_then_resume_is_bit_identical(tiny_model_dir, tmp_path):
    common = [PY, "ppo.py", "--policy", tiny_model_dir, "--prm", tiny_model_dir, "--reward", "clip_delta",
              "--steps", "8", "--save-every", "2", *TINY, "--sample-every", "0", "--eval-limit", "0"]
    full = run(common + ["--out-dir", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr[-3000:]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(common + ["--out-dir", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta, t0 = out / "ckpt" / "meta.json", time.time()
    while not meta.exists() and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.01)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive, "the run finished before it could be killed"
    saved = json.load(open(meta))["step"]
    assert saved < 8
    res = run(common + ["--out-dir", str(out), "--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from" in res.stdout
    from safetensors.torch import load_file
    for name in ("policy", "critic"):
        a = load_file(str(tmp_path / "full" / "ckpt" / name / "model.safetensors"))
        b = load_file(str(out / "ckpt" / name / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["step"] for r in metrics(out)] == list(range(1, 9))  # no duplicated or lost steps
    assert metrics(out)[-1]["reward/total"] == metrics(tmp_path / "full")[-1]["reward/total"]


# -----------------------------------------------------------------------------
# bad input: one clear line, no traceback (in-process: fast)

def fail(argv, capsys):
    with pytest.raises(SystemExit) as e:
        ppo.main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_paths_give_one_clear_error(tiny_model_dir, tmp_path, capsys):
    base = ["--steps", "1", "--out-dir", str(tmp_path / "o"), *TINY]
    err = fail(base + ["--policy", str(tmp_path / "nope")], capsys)
    assert "nope" in err and "sft.py" in err
    err = fail(base + ["--policy", tiny_model_dir, "--reward", "prm", "--prm", str(tmp_path / "no-such-prm")], capsys)
    assert "no-such-prm" in err and "prm_train.py" in err
    err = fail(base + ["--policy", tiny_model_dir, "--reward", "success", "--dataset", "gsm8k_typo"], capsys)
    assert "gsm8k_typo" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Compute 1 + 1.", "answer": "2"}\n{"question": "Compute 2 + 2."}\n')
    err = fail(base + ["--policy", tiny_model_dir, "--reward", "success", "--dataset", str(bad)], capsys)
    assert "bad.jsonl" in err and "row 2" in err
    ungradable = tmp_path / "ungradable.jsonl"
    ungradable.write_text("".join('{"question": "Compute 1 + 1.", "answer": "\\\\frac{"}\n' for _ in range(8)))
    err = fail(base + ["--policy", tiny_model_dir, "--reward", "success", "--dataset", str(ungradable),
                       "--eval-limit", "0"], capsys)
    assert "step 1" in err and "frac{" in err
    err = fail(base + ["--policy", tiny_model_dir, "--reward", "prmm"], capsys)
    assert "prmm" in err
    err = fail(base + ["--policy", tiny_model_dir, "--resume"], capsys)
    assert "no checkpoint" in err


def test_nan_reward_stops_with_step_and_quantity_and_keeps_checkpoint(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM
    nan_prm = build_tiny_model(tmp_path / "nan-prm", seed=1)
    m = AutoModelForCausalLM.from_pretrained(nan_prm)
    with torch.no_grad():
        m.model.norm.weight.fill_(float("nan"))
    m.save_pretrained(nan_prm)
    out = str(tmp_path / "run")
    base = ["--policy", tiny_model_dir, "--prm", tiny_model_dir, "--reward", "prm", "--out-dir", out,
            *TINY, "--eval-limit", "0", "--sample-every", "0"]
    ppo.main(base + ["--steps", "1"])
    before = open(os.path.join(out, "ckpt", "policy", "model.safetensors"), "rb").read()
    err = fail(base + ["--steps", "2", "--resume", "--prm", nan_prm], capsys)
    assert "step 2" in err and "non-finite rewards" in err
    assert json.load(open(os.path.join(out, "ckpt", "meta.json")))["step"] == 1
    assert open(os.path.join(out, "ckpt", "policy", "model.safetensors"), "rb").read() == before
