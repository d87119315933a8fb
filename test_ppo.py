"""Tests for ppo.py: the math helpers against naive loops, masks, sampling, the rollout / score /
update stages against hand computations, and subprocess runs on tiny random models (one per reward
mode, torchrun + FSDP on gloo, SIGKILL + resume, bad input)."""

import contextlib
import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import common
import ppo
import grading
import rewards
from conftest import ROOT, build_tiny_model

PY = sys.executable
TINY = ["--prompts-per-step", "4", "--samples-per-prompt", "2", "--max-new-tokens", "24",
        "--eval-limit", "4", "--sample-every", "1", "--step-tag", "<step>"]


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


def test_explained_variance_matches_naive():
    mask, v, _ = ragged(6, 8, seed=7)
    ret = v + 0.5 * torch.randn(6, 8, generator=torch.Generator().manual_seed(8))

    def var(xs):
        mu = sum(xs) / len(xs)
        return sum((x - mu) ** 2 for x in xs) / len(xs)

    y = [ret[b, t].item() for b in range(6) for t in range(8) if mask[b, t]]
    d = [(ret[b, t] - v[b, t]).item() for b in range(6) for t in range(8) if mask[b, t]]
    junk_v, junk_ret = v.clone(), ret.clone()
    junk_v[~mask], junk_ret[~mask] = 1e3, -1e3  # padding must not count
    assert ppo.explained_variance(junk_v, junk_ret, mask) == pytest.approx(1 - var(d) / var(y), abs=1e-5)
    assert ppo.explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert math.isnan(ppo.explained_variance(v, torch.zeros(6, 8), mask))  # constant returns


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


def cleanrl_token_loss(logp, old_logp, adv, v, old_v, ret, c, cv):
    """One token's PPO losses, written the CleanRL way with Python floats (the naive reference)."""
    ratio = math.exp(logp - old_logp)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * min(max(ratio, 1 - c), 1 + c)
    pg_loss = max(pg_loss1, pg_loss2)
    v_loss_unclipped = (v - ret) ** 2
    v_clipped = old_v + min(max(v - old_v, -cv), cv)
    v_loss_clipped = (v_clipped - ret) ** 2
    v_loss = 0.5 * max(v_loss_unclipped, v_loss_clipped)
    return pg_loss, v_loss, float(pg_loss2 > pg_loss1), ratio, (ratio - 1) - (logp - old_logp)


def test_ppo_token_losses_match_cleanrl_reference():
    B, T, c, cv = 9, 7, 0.2, 0.3
    mask, _, _ = ragged(B, T, seed=4)
    g = torch.Generator().manual_seed(4)
    old_logp = -torch.rand(B, T, generator=g) * 3
    logp = old_logp + (torch.rand(B, T, generator=g) * 2 - 1)  # ratios in [e^-1, e]: both sides of the clip
    adv = torch.randn(B, T, generator=g)
    old_v = torch.randn(B, T, generator=g)
    v = old_v + (torch.rand(B, T, generator=g) * 2 - 1)  # |v - old_v| up to 1, cv = 0.3
    ret = torch.randn(B, T, generator=g)
    L = ppo.ppo_token_losses(logp, old_logp, adv, v, old_v, ret, mask, c, cv)
    regimes = set()
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                assert all(L[k][b, t] == 0 for k in ("pg", "vf", "clip", "ratio", "approx_kl"))
                continue
            args = [x[b, t].item() for x in (logp, old_logp, adv, v, old_v, ret)]
            pg, vf, clipped, ratio, approx_kl = cleanrl_token_loss(*args, c, cv)
            assert L["pg"][b, t].item() == pytest.approx(pg, abs=1e-5)
            assert L["vf"][b, t].item() == pytest.approx(vf, abs=1e-5)
            assert L["clip"][b, t].item() == clipped
            assert L["ratio"][b, t].item() == pytest.approx(ratio, abs=1e-5)
            assert L["approx_kl"][b, t].item() == pytest.approx(approx_kl, abs=1e-5)
            r, a, dv = ratio, args[2], args[3] - args[4]
            regimes.add(("hi" if r > 1 + c else "lo" if r < 1 - c else "in", a > 0, abs(dv) > cv))
    # the inputs reach every regime: ratio above / below / inside the clip range with either sign
    # of the advantage, values inside and outside the value clip range
    assert {(s, a) for s, a, _ in regimes} == {(s, a) for s in ("hi", "lo", "in") for a in (True, False)}
    assert {o for _, _, o in regimes} == {True, False}
    assert (L["clip"] > 0).any() and (L["clip"][mask] == 0).any()


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
    out, lengths, fin = common.sample(model, ids, mask, 12, 0.0, {tok.eos_token_id}, tok.pad_token_id)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[:, ids.shape[1]:]
    for b in range(2):
        n = int(lengths[b])
        assert out[b, :n].tolist() == ref[b, :n].tolist()


def test_sampled_row_depends_only_on_its_global_index(tiny_policy):
    model, tok = tiny_policy
    qs = ["Compute 1 + 2.", "Compute 33 - 4 + 5.", "Compute 7 + 8 + 9 + 10.", "Compute 5 - 6."]
    ids, mask = ppo.encode(tok, qs, "cpu")
    full, Lf, _ = common.sample(model, ids, mask, 16, 1.0, {tok.eos_token_id}, tok.pad_token_id,
                                torch.Generator().manual_seed(5), torch.arange(4), 4)
    ids2, mask2 = ppo.encode(tok, qs[2:], "cpu")  # rows 2, 3 alone, as rank 1 of 2 would hold them
    half, Lh, _ = common.sample(model, ids2, mask2, 16, 1.0, {tok.eos_token_id}, tok.pad_token_id,
                                torch.Generator().manual_seed(5), torch.arange(2) + 2, 4)
    for b in range(2):
        assert Lh[b] == Lf[b + 2] and half[b, :Lh[b]].tolist() == full[b + 2, :Lf[b + 2]].tolist()


def test_inverse_cdf_never_falls_off_a_cdf_that_ends_below_one():
    # float32 softmax rows sum to 1 only up to rounding; this one ends 2^-20 short, and its last id
    # has probability 0. The largest torch.rand value, 1 - 2^-24, lies above the CDF's end.
    probs = torch.tensor([0.25, 0.0, 0.5, 0.25 - 2 ** -20, 0.0])  # (V,)
    assert probs.cumsum(-1)[-1] < 1 - 2 ** -24
    us = [0.0, 0.1, 0.3, 0.6, 0.8, 0.9999, 1 - 2 ** -24]
    tok = common.inverse_cdf(probs.expand(len(us), -1), torch.tensor(us))
    total = sum(probs.tolist())
    for u, k in zip(us, tok.tolist()):  # naive inverse CDF of the normalised probabilities
        acc, want = 0.0, None
        for i, p in enumerate(probs.tolist()):
            acc += p / total
            if want is None and acc > u:
                want = i
        assert k == want and probs[k] > 0, (u, k)
    torch.manual_seed(0)
    many = common.inverse_cdf(probs.expand(20000, -1), torch.rand(20000))
    assert probs[many].min() > 0


def test_policy_logprobs_use_the_temperature(tiny_policy):
    model, tok = tiny_policy
    ids, mask = ppo.encode(tok, ["Compute 1 + 2.", "Compute 10 - 200 + 3000 - 4."], "cpu")
    resp = torch.randint(2, len(tok), (2, 6), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([6, 3])
    rmask = torch.arange(6)[None] < lengths[:, None]
    full, attn, P = torch.cat([ids, resp], 1), torch.cat([mask, rmask.long()], 1), ids.shape[1]
    with torch.no_grad():
        logp, ent = ppo.policy_logprobs(model, full, attn, P, 0.7, entropy=True)
        for b in range(2):
            p = int(mask[b].sum())
            row = torch.cat([ids[b, P - p:], resp[b, :lengths[b]]])[None]
            lp = torch.log_softmax(model(input_ids=row).logits[0, p - 1:-1].float() / 0.7, -1)  # (n, V)
            want = lp.gather(-1, row[0, p:, None]).squeeze(-1)
            assert torch.allclose(logp[b, :lengths[b]], want, atol=1e-5)
            assert torch.allclose(ent[b, :lengths[b]], -(lp.exp() * lp).sum(-1), atol=1e-5)


def test_logprobs_and_values_do_not_depend_on_padding(tiny_policy, tiny_model_dir):
    from transformers import AutoModelForTokenClassification
    model, tok = tiny_policy
    critic = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    qs = ["Compute 1 + 2.", "Compute 10 - 200 + 3000 - 4.", "Compute 5 - 6 + 7."]
    ids, mask = ppo.encode(tok, qs, "cpu")
    resp, lengths, _ = common.sample(model, ids, mask, 10, 1.0, {tok.eos_token_id}, tok.pad_token_id,
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
    free, _, fin = common.sample(model, ids, mask, 8, 0.0, set(), tok.pad_token_id)
    assert not fin.any()
    eos = int(free[0, 3])  # pretend row 0's 4th greedy token is EOS, and pad is that same id
    out, lengths, fin = common.sample(model, ids, mask, 8, 0.0, {eos}, pad_id=eos)
    n = int(lengths[0])
    assert fin[0] and n <= 4 and out[0, n - 1] == eos
    rmask = torch.arange(out.shape[1])[None] < lengths[:, None]  # how ppo.py builds response_mask
    assert rmask[0, n - 1] and not rmask[0, n:].any()  # EOS in, padding out, though ids are equal


# -----------------------------------------------------------------------------
# stages in-process: rollout, score, ppo_update against hand computations

def hand_logprobs(model, row, p, temperature):
    """log-probs of row[p:] under model, from one unpadded forward of the (1, L) row."""
    lp = torch.log_softmax(model(input_ids=row).logits[0, p - 1:-1].float() / temperature, -1)
    return lp.gather(-1, row[0, p:, None]).squeeze(-1)


def test_rollout_ref_logprobs_come_from_the_reference_model(tiny_policy, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification
    model, tok = tiny_policy
    ref = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "ref", seed=1)).eval()
    critic = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    qs = ["Compute 1 + 2.", "Compute 10 - 200 + 3000 - 4.", "Compute 5 - 6 + 7."]
    cfg = SimpleNamespace(seed=0, max_new_tokens=8, temperature=0.7, prompt="auto")
    rt = SimpleNamespace(device="cpu", B=3, rank=0, n_rows=3, micro=2, amp=contextlib.nullcontext())
    ro = ppo.rollout(model, ref, critic, tok, {tok.eos_token_id}, qs, cfg, rt, step=1)
    ids, mask = ppo.encode(tok, qs, "cpu")
    with torch.no_grad():
        for b in range(3):
            p, n = int(mask[b].sum()), int(ro.lengths[b])
            row = torch.cat([ids[b, ro.P - p:], ro.resp[b, :n]])[None]
            want_ref, want_old = hand_logprobs(ref, row, p, 0.7), hand_logprobs(model, row, p, 0.7)
            assert torch.allclose(ro.ref_logp[b, :n], want_ref, atol=1e-5)
            assert torch.allclose(ro.old_logp[b, :n], want_old, atol=1e-5)
            assert not torch.allclose(want_ref, want_old, atol=1e-2)  # the two models do differ


class StubRM:
    """A reward model that returns fixed (values, end_idx, mask) whatever it reads."""
    step_sep = rewards.DEFAULT_STEP_SEP

    def __init__(self, kind, raw, end_idx, kmask):
        self.kind, self.out = kind, (torch.tensor(raw), torch.tensor(end_idx), torch.tensor(kmask))

    def score_tokens(self, questions, tok, response_ids):
        return self.out


def scored_batch(tok):
    """Two rows with the same correct solution: row 0 ends with EOS, row 1 hit max_new_tokens (one
    more token, a space, and no EOS). Both have T = n + 1 tokens."""
    text = "1 + 2 = 3\n\nThe answer is \\boxed{3}."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    space = tok(" ", add_special_tokens=False)["input_ids"]
    assert len(space) == 1
    resp = torch.tensor([ids + [tok.eos_token_id], ids + space])  # (2, T)
    n = len(ids)
    ro = SimpleNamespace(resp=resp, lengths=torch.tensor([n + 1, n + 1]), finished=torch.tensor([True, False]),
                         mask=torch.ones(2, n + 1, dtype=torch.bool))
    assert grading.is_correct(tok.decode(ids + space, skip_special_tokens=True), "3")  # correct, but truncated
    return [{"question": "Compute 1 + 2.", "answer": "3"}] * 2, ro, n


def score_cfg(reward, alpha=1.0, **kw):
    cfg = dict(grade_workers=1, dataset="test", reward=reward, alpha=alpha, eta=0.5, delta_last="drop",
               min_temperature=0.0, length_penalty=0.5, truncation="zero-success")
    return SimpleNamespace(**{**cfg, **kw})


def test_score_truncated_correct_response_gets_no_success(tiny_policy):
    _, tok = tiny_policy
    batch, ro, n = scored_batch(tok)
    sc = ppo.score(None, tok, batch, ro, score_cfg("success"), step=1)
    assert sc.success.tolist() == [1.0, 0.0]
    want = torch.zeros(2, n + 1)
    want[0, n] = 1.0  # success on the EOS of the finished row only
    assert torch.equal(sc.token, want)


@pytest.mark.parametrize("mode,raw,want", [
    # alpha = 0.3 and eta = 0.5, by hand; row 0 steps end at tokens 3 and 8, row 1's one step at 2
    ("prm", [[0.9, 0.4], [0.2, 0.0]], {(0, 3): 0.27, (0, 8): 0.12, (1, 2): 0.06}),
    ("clip", [[0.9, 0.4], [0.2, 0.0]], {(0, 3): 0.0, (0, 8): -0.03, (1, 2): -0.09}),
    ("delta", [[0.9, 0.4], [0.2, 0.0]], {(0, 3): 0.27, (0, 8): 0.0, (1, 2): 0.0}),
    ("orm", [[0.8], [0.6]], {(0, "n"): 0.24, (1, "n"): 0.18}),
])
def test_score_scales_the_learned_term_by_alpha(tiny_policy, mode, raw, want):
    _, tok = tiny_policy
    batch, ro, n = scored_batch(tok)
    ends = [[n], [n]] if mode == "orm" else [[3, 8], [2, 0]]
    kmask = [[True], [True]] if mode == "orm" else [[True, True], [True, False]]
    sc = ppo.score(StubRM("orm" if mode == "orm" else "prm", raw, ends, kmask), tok, batch, ro,
                   score_cfg(mode, alpha=0.3), step=1)
    expected = torch.zeros(2, n + 1)
    for (b, t), x in want.items():
        expected[b, n if t == "n" else t] += x
    expected[0, n] += 1.0  # success: the finished row only
    assert torch.allclose(sc.token, expected, atol=1e-6)


@pytest.mark.parametrize("mode,kw,raw,want", [
    # alpha = 0.3, by hand; row 0 steps end at tokens 3 and 8, row 1's one step at 2
    ("delta", dict(delta_last="keep"), [[0.9, 0.4], [0.2, 0.0]], {(0, 3): 0.15, (0, 8): 0.12, (1, 2): 0.06}),
    ("clip_delta", dict(delta_last="keep"), [[0.9, 0.4], [0.2, 0.0]], {(0, 3): 0.03, (0, 8): -0.03, (1, 2): -0.09}),
    ("min", {}, [[0.4, 0.9], [0.2, 0.0]], {(0, 3): -0.15, (0, 8): 0.27, (1, 2): 0.06}),  # G = (0.4, 0.9)
    ("min", {}, [[0.9, 0.4], [0.2, 0.0]], {(0, 3): 0.0, (0, 8): 0.12, (1, 2): 0.06}),  # G = (0.4, 0.4)
    ("prm_normed", {}, [[0.9, 0.4], [0.2, 0.0]], {(0, 3): 0.135, (0, 8): 0.06, (1, 2): 0.06}),
    ("prm_lenpen", dict(length_penalty=0.1), [[0.9, 0.4], [0.2, 0.0]], {(0, 3): 0.24, (0, 8): 0.09, (1, 2): 0.03}),
])
def test_score_new_modes_by_hand(tiny_policy, mode, kw, raw, want):
    _, tok = tiny_policy
    batch, ro, n = scored_batch(tok)
    rm = StubRM("prm", raw, [[3, 8], [2, 0]], [[True, True], [True, False]])
    sc = ppo.score(rm, tok, batch, ro, score_cfg(mode, alpha=0.3, **kw), step=1)
    expected = torch.zeros(2, n + 1)
    for (b, t), x in want.items():
        expected[b, t] += x
    expected[0, n] += 1.0  # success: the finished row only
    assert torch.allclose(sc.token, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["prm", "delta", "orm"])
def test_score_truncation_policies(tiny_policy, mode):
    """Row 1 is correct but has no EOS. zero-success: Correct = 0, its learned terms stay.
    no-score (ReaLHF): Correct and every learned term are 0. The finished row is the same under
    both, and kl_rewards still charges the KL on every token of the cut row."""
    _, tok = tiny_policy
    batch, ro, n = scored_batch(tok)
    if mode == "orm":
        rm = StubRM("orm", [[0.8], [0.6]], [[n], [n]], [[True], [True]])
    else:
        rm = StubRM("prm", [[0.9, 0.4], [0.7, 0.3]], [[3, 8], [2, 6]], [[True, True], [True, True]])
    zero = ppo.score(rm, tok, batch, ro, score_cfg(mode, alpha=0.3), step=1)
    none = ppo.score(rm, tok, batch, ro, score_cfg(mode, alpha=0.3, truncation="no-score"), step=1)
    assert zero.success.tolist() == none.success.tolist() == [1.0, 0.0]
    assert torch.equal(zero.token[0], none.token[0])  # the finished row does not change
    assert zero.token[1].abs().sum() > 0  # its learned terms stay under zero-success
    assert torch.equal(none.token[1], torch.zeros(n + 1))  # and are all gone under no-score
    assert torch.equal(none.values[1], torch.zeros_like(none.values[1]))
    logp, ref = torch.full((2, n + 1), -1.0), torch.full((2, n + 1), -1.5)
    total, kl = ppo.kl_rewards(none.token, logp, ref, ro.mask, beta=0.1)
    assert torch.allclose(total[1], torch.full((n + 1,), -0.05))  # only the KL penalty is left


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.05])
def test_ppo_update_matches_a_manual_sgd_loop(tiny_model_dir, max_grad_norm):
    """Two minibatches (one prompt x 2 samples each), micro-batches of one row, plain SGD: the
    parameters after ppo_update equal a hand-written CleanRL loop over the two minibatches."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification
    torch.manual_seed(0)
    policy0 = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    critic0 = common.no_dropout(AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1))
    B, P, T, temp, c, cv, lr = 4, 3, 5, 0.7, 0.2, 0.2, 0.5
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, policy0.config.vocab_size, (B, P + T), generator=g)  # (B, L), no prompt padding
    mask = torch.arange(T)[None] < torch.tensor([5, 3, 4, 2])[:, None]  # (B, T)
    ids[:, P:][~mask] = 0
    with torch.no_grad():
        logp0 = torch.stack([hand_logprobs(policy0, ids[b:b + 1], P, temp) for b in range(B)])
        v0 = critic0(input_ids=ids).logits[:, P - 1:-1, 0]
    ro = SimpleNamespace(ids=ids, attn=torch.cat([torch.ones(B, P, dtype=torch.long), mask.long()], 1), P=P,
                         mask=mask, old_logp=(logp0 + 0.5 * torch.randn(B, T, generator=g)) * mask,
                         values=(v0 + 0.5 * torch.randn(B, T, generator=g)) * mask)
    adv, returns = torch.randn(B, T, generator=g) * mask, torch.randn(B, T, generator=g) * mask

    def manual(order):
        policy, critic = copy.deepcopy(policy0), copy.deepcopy(critic0)
        for rows in order:
            m = mask[rows]
            logp = torch.stack([hand_logprobs(policy, ids[b:b + 1], P, temp) for b in rows])
            v = critic(input_ids=ids[rows]).logits[:, P - 1:-1, 0]
            old_logp, old_v, a, ret = ro.old_logp[rows], ro.values[rows], adv[rows], returns[rows]
            ratio = torch.exp(logp - old_logp)
            pg_loss1 = -a * ratio
            pg_loss2 = -a * torch.clamp(ratio, 1 - c, 1 + c)
            pg_loss = torch.max(pg_loss1, pg_loss2)
            v_loss_unclipped = (v - ret) ** 2
            v_clipped = old_v + torch.clamp(v - old_v, -cv, cv)
            v_loss_clipped = (v_clipped - ret) ** 2
            v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped)
            loss = ((pg_loss + v_loss) * m).sum() / m.sum()
            for model in (policy, critic):  # each model's gradient norm is clipped on its own
                params = list(model.parameters())
                grads = [torch.zeros_like(p_) if g_ is None else g_
                         for p_, g_ in zip(params, torch.autograd.grad(loss, params, allow_unused=True,
                                                                       retain_graph=True))]
                norm = sum((g_ ** 2).sum() for g_ in grads).sqrt().item()
                scale = min(1.0, max_grad_norm / (norm + 1e-6)) if max_grad_norm > 0 else 1.0
                with torch.no_grad():
                    for p_, g_ in zip(params, grads):
                        p_ -= lr * scale * g_
        return policy, critic

    policy, critic = copy.deepcopy(policy0), copy.deepcopy(critic0)
    models = {"policy": policy, "critic": critic}
    optims = {"policy": torch.optim.SGD(policy.parameters(), lr=lr),
              "critic": torch.optim.SGD(critic.parameters(), lr=lr)}
    cfg = SimpleNamespace(lr=lr, critic_lr=lr, anneal_lr=False, steps=1, ppo_epochs=1, seed=0, prompts_per_step=2,
                          minibatches=2, samples_per_prompt=2, temperature=temp, cliprange=c, cliprange_value=cv,
                          fsdp=False, max_grad_norm=max_grad_norm, out_dir="unused")
    rt = SimpleNamespace(device="cpu", rank=0, world_size=1, B=B, micro=1, amp=contextlib.nullcontext())
    ppo.ppo_update(models, optims, ro, adv, returns, cfg, rt, step=1)

    def dist_(a, b):
        return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))

    moved = min(dist_(policy, policy0), dist_(critic, critic0))
    # the minibatch order is the seeded split's business (tested above): either order may come first
    err = min(max(dist_(policy, mp), dist_(critic, mc)) for mp, mc in (manual([[0, 1], [2, 3]]),
                                                                      manual([[2, 3], [0, 1]])))
    assert moved > (1e-5 if max_grad_norm else 1e-3) and err < 1e-5 * (0.1 if max_grad_norm else 1), (moved, err)


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
        ev = r["value/explained_variance"]  # NaN when the returns are constant (step 1 of `success`: all 0)
        assert ev <= 1 or math.isnan(ev)
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
                # nan_ok: value/explained_variance is NaN on both when the returns are constant
                assert y[k] == pytest.approx(v, rel=1e-3, abs=1e-5, nan_ok=True), (x["step"], k)
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
        common.run_main(ppo.main, argv)
    assert e.value.code == 2
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
    assert "bad.jsonl:2" in err  # file:line (was "row 2")
    ungradable = tmp_path / "ungradable.jsonl"
    ungradable.write_text("".join('{"question": "Compute 1 + 1.", "answer": "\\\\frac{"}\n' for _ in range(8)))
    err = fail(base + ["--policy", tiny_model_dir, "--reward", "success", "--dataset", str(ungradable),
                       "--eval-limit", "0"], capsys)
    assert "ungradable.jsonl:1: ungradable gold" in err and "frac{" in err  # at load, not at step 1
    err = fail(base + ["--policy", tiny_model_dir, "--reward", "prmm"], capsys)
    assert "prmm" in err
    err = fail(base + ["--policy", tiny_model_dir, "--resume"], capsys)
    assert "no checkpoint" in err


def test_nan_reward_stops_with_step_and_quantity_and_keeps_checkpoint(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM
    nan_prm = build_tiny_model(tmp_path / "nan-prm", seed=1)
    out = str(tmp_path / "run")
    base = ["--policy", tiny_model_dir, "--prm", nan_prm, "--reward", "prm", "--out-dir", out,
            *TINY, "--eval-limit", "0", "--sample-every", "0"]
    ppo.main(base + ["--steps", "1"])
    before = open(os.path.join(out, "ckpt", "policy", "model.safetensors"), "rb").read()
    m = AutoModelForCausalLM.from_pretrained(nan_prm)  # the PRM goes bad in place (--resume refuses a new --prm)
    with torch.no_grad():
        m.model.norm.weight.fill_(float("nan"))
    m.save_pretrained(nan_prm)
    err = fail(base + ["--steps", "2", "--resume"], capsys)
    assert "step 2" in err and "non-finite rewards" in err
    assert json.load(open(os.path.join(out, "ckpt", "meta.json")))["step"] == 1
    assert open(os.path.join(out, "ckpt", "policy", "model.safetensors"), "rb").read() == before
