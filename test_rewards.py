"""Tests for rewards.py, in its order: the success reward and its truncation rule, steps, the
Clip / Delta / Clip-Delta transforms against naive per-row loops, token placement, and the
reward-model batching routine. Grading itself is tested in test_grading.py.

Run: python -m pytest -q test_rewards.py
"""

import math
import os
import random

import pytest
import torch

import common
import rewards as R

HERE = os.path.dirname(os.path.abspath(__file__))
ARITH_DIR = os.path.join(HERE, "data", "arith")


# -----------------------------------------------------------------------------
# 1. Success reward

def test_success_reward_truncated_is_zero():
    assert R.success_reward("\\boxed{1}", "1") == 1.0
    assert R.success_reward("\\boxed{1}", "1", truncated=True) == 0.0


@pytest.mark.parametrize("workers", [1, 2])
def test_success_rewards_grade_only_finished_responses(workers, monkeypatch):
    responses = ["\\boxed{3}", "\\boxed{3}", "\\boxed{4}", "The answer is 7.", None]
    golds = ["3", "3", "3", "7", "7"]
    finished = [True, False, True, True, True]
    assert R.success_rewards(responses, golds, finished, workers=workers) == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert R.success_rewards([], [], [], workers=workers) == []
    with pytest.raises(ValueError, match="finished"):
        R.success_rewards(["1"], ["1"], [True, False])
    # a truncated response is never handed to the grader at all
    graded = []
    monkeypatch.setattr(R, "grade_batch", lambda rs, gs, processes: graded.extend(rs) or [True] * len(rs))
    assert R.success_rewards(["a", "b", "c"], ["1", "1", "1"], [False, True, False]) == [0.0, 1.0, 0.0]
    assert graded == ["b"]


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


def test_repeated_steps():
    assert R.repeated_steps(["1 + 2 = 3", "1  +  2 = 3", "3 + 4 = 7", "1 + 2 = 3"]) == 2
    assert R.repeated_steps([]) == 0


def test_repeated_steps_whitespace_normalised():
    steps = ["3 + 4 = 7", "7 +  1 = 8", "3  +\t4 = 7", "7 + 1 = 8", "3 + 4 = 7", "3 + 4 = 70"]
    assert R.repeated_steps(steps) == 3
    assert R.repeated_steps(["a", "A"]) == 0  # case matters: only whitespace is normalised


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
# 3b. Delta's last step, min-form (PURE), the paper's PR-Normed and length-penalty baselines,
#     truncation policies, and the per-token credit gap they leave PPO

def naive_delta_keep(x):
    """d_k = x_k - x_{k+1} for k < K, d_K = x_K."""
    return [x[k] - x[k + 1] for k in range(len(x) - 1)] + x[-1:]


def naive_min_returns(x, T):
    """G_k = min_{j >= k} x_j (T = 0) or sum_{j >= k} softmax(-x_j / T) x_j, by loops."""
    G = []
    for k in range(len(x)):
        tail = x[k:]
        if T == 0:
            G.append(min(tail))
        else:
            e = [math.exp(-v / T) for v in tail]
            G.append(sum(ei * v for ei, v in zip(e, tail)) / sum(e))
    return G


def naive_min(x, T):
    G = naive_min_returns(x, T) + [0.0]
    return [G[k] - G[k + 1] for k in range(len(x))]


def naive_rtg(d):
    """Return-to-go sum_{j >= k} d_j of one row, by a loop."""
    out = []
    for k in range(len(d)):
        total = 0.0
        for j in range(k, len(d)):
            total += d[j]
        out.append(total)
    return out


def one_row(x, mode, alpha=1.0, **kw):
    """alpha times the transform of one row of real steps, as a list."""
    t = torch.tensor([x], dtype=torch.float)
    return (alpha * R.transform_step_rewards(t, torch.ones_like(t, dtype=torch.bool), mode, **kw))[0].tolist()


@pytest.mark.parametrize("seed", range(5))
def test_new_transforms_match_naive_loops(seed):
    scores, mask, lengths = random_ragged(seed)
    alpha, eta, c = 0.3, 0.3 + 0.1 * seed, 0.2 + 0.1 * seed
    rows = _rows(scores, lengths)
    cases = [
        ("delta", dict(delta_last="keep"), naive_delta_keep),
        ("clip_delta", dict(eta=eta, delta_last="keep"), lambda x: naive_delta_keep(naive_clip(x, eta))),
        ("clip_delta", dict(eta=eta, delta_last="drop"), lambda x: naive_delta(naive_clip(x, eta))),
        ("min", dict(), lambda x: naive_min(x, 0.0)),
        ("min", dict(min_temperature=0.1), lambda x: naive_min(x, 0.1)),
        ("min", dict(min_temperature=2.0), lambda x: naive_min(x, 2.0)),
        ("prm_normed", dict(), lambda x: [v / len(x) for v in x]),
        ("prm_lenpen", dict(length_penalty=c), lambda x: [v - c for v in x]),
    ]
    for mode, kw, ref in cases:
        out = alpha * R.transform_step_rewards(scores, mask, mode, **kw)  # (B, K)
        assert out.shape == scores.shape and out.dtype == torch.float32, (mode, kw)
        for b, n in enumerate(lengths):
            want = torch.tensor([alpha * v for v in ref(rows[b])], dtype=torch.float32)
            assert torch.allclose(out[b, :n], want, atol=1e-5), (mode, kw, b)
            assert (out[b, n:] == 0).all(), (mode, kw, b)  # padding scores never leak
    assert set(R.LEARNED_MODES) == {"prm", "clip", "delta", "clip_delta", "prm_normed", "prm_lenpen", "min"}
    for mode in R.LEARNED_MODES:  # every mode is a transform; K = 0 rows stay empty
        assert R.transform_step_rewards(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool), mode).shape == (2, 0)
    # the defaults are the paper's rules, bit for bit
    assert torch.equal(R.transform_step_rewards(scores, mask, "delta"), R.delta(scores, mask))
    assert torch.equal(R.transform_step_rewards(scores, mask, "clip_delta"), R.clip_delta(scores, mask, 0.5))
    with pytest.raises(ValueError):
        R.delta(scores, mask, last="first")
    with pytest.raises(ValueError):
        R.min_form(scores, mask, temperature=-1.0)


@pytest.mark.parametrize("seed", range(3))
def test_return_to_go_of_keep_and_min(seed):
    """Delta keep: the return-to-go from every step, the last included, is x_k. Min-form: it is the
    (soft) minimum of the step's suffix; a small T approaches the strict min, a large T the mean."""
    scores, mask, lengths = random_ragged(seed)
    for b, x in enumerate(_rows(scores, lengths)):
        if not x:
            continue
        assert naive_rtg(one_row(x, "delta", delta_last="keep")) == pytest.approx(x, abs=1e-5)
        strict = naive_rtg(one_row(x, "min"))
        assert strict == pytest.approx([min(x[k:]) for k in range(len(x))], abs=1e-5)
        cold = naive_rtg(one_row(x, "min", min_temperature=1e-3))
        assert cold == pytest.approx(strict, abs=1e-2)
        hot = naive_rtg(one_row(x, "min", min_temperature=1e4))
        assert hot == pytest.approx([sum(x[k:]) / len(x[k:]) for k in range(len(x))], abs=1e-3)
        assert all(s <= h + 1e-6 for s, h in zip(strict, hot))  # the softmin lies above the min


def continue_vs_answer_gaps(x, mode, **kw):
    """The per-token credit gap at each step boundary j (1 <= j < K), by loops: the return-to-go
    (GAE with gamma = lambda = 1, V = 0, Correct held fixed) of step j+1's tokens when step j+1 is
    followed by the rest of x ("continue") minus when step j+1 is the answer (x cut after j+1)."""
    gaps = []
    for j in range(1, len(x) - 1):  # 0-indexed: step j is "step j+1"; the continuation has >= 1 step after it
        cont = naive_rtg(one_row(x, mode, **kw))[j]
        answer = naive_rtg(one_row(x[: j + 1], mode, **kw))[j]
        gaps.append(cont - answer)
    return gaps


def test_delta_credit_gap_is_next_score_under_drop_and_zero_under_keep():
    x = [0.9, 0.35, 0.8, 0.62, 0.15, 0.7]
    eta = 0.5
    c = naive_clip(x, eta)
    nxt = x[1:-1]  # x_{j+1} for every boundary with a step after j+1
    assert continue_vs_answer_gaps(x, "delta") == pytest.approx(nxt, abs=1e-6)  # the paper's rule
    assert continue_vs_answer_gaps(x, "delta", delta_last="keep") == pytest.approx([0.0] * len(nxt), abs=1e-6)
    # Clip-Delta flips the bias: the gap is c_{j+1} <= 0, which favours answering early
    gaps = continue_vs_answer_gaps(x, "clip_delta", eta=eta)
    assert gaps == pytest.approx(c[1:-1], abs=1e-6) and all(g <= 0 for g in gaps) and min(gaps) < 0
    assert continue_vs_answer_gaps(x, "clip_delta", eta=eta, delta_last="keep") == pytest.approx([0.0] * len(nxt))
    # strict min-form: continuing can only lower the minimum, never raise it
    assert all(g <= 1e-6 for g in continue_vs_answer_gaps(x, "min"))
    # Clip-Delta's whole return is c_1 whatever K (K >= 2); Clip's falls with every step below eta
    assert all(sum(one_row(x[:K], "clip_delta", eta=eta)) == pytest.approx(c[0]) for K in range(2, len(x) + 1))
    assert sum(one_row(x, "clip", eta=eta)) < sum(one_row(x[:2], "clip", eta=eta))


def test_baselines_still_reward_padding_and_min_does_not():
    """PR-Normed's return is the mean step score: adding a step scored above the mean raises it.
    The length penalty's is sum_k x_k - c K: adding a step scored above c raises it. The strict
    min-form return from step 1 never rises when a step is added, wherever it goes."""
    x = [0.9, 0.4, 0.8, 0.6]
    mean = sum(x) / len(x)
    for ret_mode, kw in [("prm_normed", {}), ("prm_lenpen", dict(length_penalty=0.5))]:
        ret = sum(one_row(x, ret_mode, **kw))
        want = mean if ret_mode == "prm_normed" else sum(x) - 0.5 * len(x)
        assert ret == pytest.approx(want)
        padded = x + [x[0]] * 3  # repeat the best step (0.9 > the mean 0.675 and > c = 0.5)
        assert sum(one_row(padded, ret_mode, **kw)) > ret
        worse = x + [0.3]  # a step below both the mean and c lowers it
        assert sum(one_row(worse, ret_mode, **kw)) < ret
    for i in range(len(x) + 1):
        for v in (0.05, 0.5, 0.95):
            assert sum(one_row(x[:i] + [v] + x[i:], "min")) <= sum(one_row(x, "min")) + 1e-6


def test_truncation_policies_match_a_loop():
    success = torch.tensor([1.0, 1.0, 0.0, 1.0])
    values = torch.tensor([[0.3, -0.2], [0.5, 0.0], [0.1, 0.4], [0.0, 0.0]])  # (B, K) after alpha
    finished = torch.tensor([True, False, False, True])
    for policy in R.TRUNCATION_POLICIES:
        s, v = R.apply_truncation(success, values, finished, policy)
        for b in range(4):
            assert s[b].item() == (success[b].item() if finished[b] else 0.0)
            keep = finished[b] or policy == "zero-success"
            assert v[b].tolist() == (values[b].tolist() if keep else [0.0, 0.0]), (policy, b)
    with pytest.raises(ValueError):
        R.apply_truncation(success, values, finished, "bootstrap")


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
    for row in common.read_jsonl(os.path.join(ARITH_DIR, "test.jsonl"))[:20]:
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
# 5. Reward-model scoring: one batching routine

def test_score_responses_batching_does_not_change_scores(tiny_model_dir):
    """Batched, length-sorted scoring equals scoring each response alone, unpadded; steps given as
    lists score as their text does; PRM without steps -> [], ORM always one score; order kept."""
    qs = ["Compute 12 + 30 - 5.", "Compute 7 - 9.", "Compute 2.", "Compute 1 + 1 + 1."]
    rs = ["12 + 30 = 42\n\n42 - 5 = 37\n\nThe answer is \\boxed{37}.", "7 - 9 = -2\n\nThe answer is \\boxed{-2}.",
          "  \n\n ", "1 + 1 = 2\n\n\n\n2 + 1 = 4\n\n2 + 1 = 4\n\nThe answer is \\boxed{4}.  "]
    for kind in ("prm", "orm"):
        rm = R.load_reward_model(tiny_model_dir, kind=kind, step_tag="<step>", device="cpu")
        alone = []
        for q, r in zip(qs, rs):
            row = rm.encode(q, R.split_steps(r))
            m, kmask = rm.margins([row])  # (1, K)
            alone.append(torch.sigmoid(m[0][kmask[0]]).tolist() if row[1] else [])
        for bs in (1, 3, 16):
            got = R.score_responses(rm, qs, rs, batch_size=bs)
            assert [len(s) for s in got] == ([3, 2, 0, 4] if kind == "prm" else [1, 1, 1, 1])
            for a, b in zip(got, alone):
                assert a == pytest.approx(b, abs=1e-5)
        as_steps = R.score_responses(rm, qs, [R.split_steps(r) for r in rs], batch_size=2)
        for a, b in zip(as_steps, alone):
            assert a == pytest.approx(b, abs=1e-5)
        assert rm.score(qs, rs) == R.score_responses(rm, qs, rs, batch_size=rm.batch_size)
    with pytest.raises(ValueError, match="questions"):
        R.score_responses(rm, qs, rs[:2], batch_size=2)
