"""Tests for the chunked log-probs of ppo.policy_logprobs (values, entropies and gradients against
the naive full-vocabulary log_softmax; nothing of size (tokens, V) kept for the backward) and for
how every stage samples (docs/METHOD.md §6): sft's accuracy and evaluate's responses go through
common.generate, prm_train's labeling through common.sample, and all sample the plain softmax,
whatever the checkpoint's generation_config says."""

import pytest
import torch

import common
import evaluate
import ppo
import prm_train
import sft
from conftest import build_tiny_model

QUESTIONS = ["Compute 1 + 2.", "Compute 10 - 200 + 3000 - 4.", "Compute 5 - 6 + 7."]


# -----------------------------------------------------------------------------
# ppo.policy_logprobs: chunked head + softmax vs the naive full log_softmax

@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path_factory.mktemp("logp-model"), seed=5)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def ragged_batch(tok, lengths, T=9):
    """Left-padded prompts (B, P) + right-padded random responses of `lengths` -> (ids, attn, P, mask)."""
    ids, mask = ppo.encode(tok, QUESTIONS[:len(lengths)], "cpu")
    resp = torch.randint(2, len(tok), (len(lengths), T), generator=torch.Generator().manual_seed(0))
    rmask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]  # (B, T)
    return torch.cat([ids, resp], 1), torch.cat([mask, rmask.long()], 1), ids.shape[1], rmask


def naive_logprobs(model, ids, attn, P, temperature):
    """Per row, one forward of the unpadded sequence and the full log_softmax(logits / T):
    lists of (n_b,) log-probs and entropies."""
    logps, ents = [], []
    for b in range(ids.shape[0]):
        row = ids[b][attn[b].bool()][None]  # (1, p + n)
        p, n = int(attn[b, :P].sum()), int(attn[b, P:].sum())
        lp = torch.log_softmax(model(input_ids=row).logits[0, p - 1:p - 1 + n].float() / temperature, -1)  # (n, V)
        logps.append(lp.gather(-1, row[0, p:, None]).squeeze(-1))
        ents.append(-(lp.exp() * lp).sum(-1))
    return logps, ents


def test_chunked_logprobs_entropy_and_gradients_match_full_log_softmax(policy, monkeypatch):
    model, tok = policy
    monkeypatch.setattr(ppo, "LOGP_CHUNK", 5)  # 16 response tokens: chunks of 5, 5, 5, 1
    lengths = [7, 0, 9]  # ragged, one row empty
    ids, attn, P, mask = ragged_batch(tok, lengths)
    g = torch.Generator().manual_seed(1)
    w_logp, w_ent = torch.randn(mask.shape, generator=g), torch.randn(mask.shape, generator=g)  # (B, T)
    params = [p for p in model.parameters()]

    logp, ent = ppo.policy_logprobs(model, ids, attn, P, 0.7, entropy=True)  # (B, T) each
    got = torch.autograd.grad(((w_logp * logp + w_ent * ent) * mask).sum(), params)
    ref_logp, ref_ent = naive_logprobs(model, ids, attn, P, 0.7)
    want = torch.autograd.grad(sum((w_logp[b, :n] * ref_logp[b] + w_ent[b, :n] * ref_ent[b]).sum()
                                   for b, n in enumerate(lengths)), params)
    for b, n in enumerate(lengths):
        assert torch.allclose(logp[b, :n], ref_logp[b], atol=1e-5) and torch.allclose(ent[b, :n], ref_ent[b], atol=1e-5)
    assert (logp[~mask] == 0).all() and (ent[~mask] == 0).all()
    for x, y in zip(got, want):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4)

    # the rollout's calls: no grad, no entropy, same log-probs
    with torch.no_grad():
        assert torch.allclose(ppo.policy_logprobs(model, ids, attn, P, 0.7), logp, atol=1e-6)
    lp_only = ppo.policy_logprobs(model, ids, attn, P, 0.7)
    got = torch.autograd.grad((w_logp * lp_only * mask).sum(), params)
    ref_logp, _ = naive_logprobs(model, ids, attn, P, 0.7)
    want = torch.autograd.grad(sum((w_logp[b, :n] * ref_logp[b]).sum() for b, n in enumerate(lengths)), params)
    assert all(torch.allclose(x, y, atol=1e-5, rtol=1e-4) for x, y in zip(got, want))


def test_backward_keeps_no_vocabulary_wide_tensor(policy, monkeypatch):
    """The memory claim on CPU: autograd saves no (tokens, V) tensor for the backward; each chunk's
    are recomputed there by ppo.ChunkedLogprobs (the old code saved the full (B, T, V)
    log-softmax). bench/bench_logprobs.py measures the bytes."""
    model, tok = policy
    monkeypatch.setattr(ppo, "LOGP_CHUNK", 4)
    ids, attn, P, mask = ragged_batch(tok, [9, 8, 9])
    V, saved = model.config.vocab_size, []
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:  # the head's weight (H, V) costs nothing
            saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp, ent = ppo.policy_logprobs(model, ids, attn, P, 0.7, entropy=True)
    ((logp + ent) * mask).sum().backward()
    assert model.config.hidden_size != V and saved
    assert not [s for s in saved if s[-1] == V], saved


def naive_head_logprobs(h, W, b, tokens, T, vocab_size):
    """The full log_softmax over the first vocab_size logits: (n,) log-probs and entropies."""
    lp = torch.log_softmax(torch.nn.functional.linear(h, W[:vocab_size], None if b is None else b[:vocab_size]) / T, -1)
    return lp.gather(-1, tokens[:, None]).squeeze(-1), -(lp.exp() * lp).sum(-1)


@pytest.mark.parametrize("bias", [False, True])
def test_fused_head_gradients_match_naive_in_float64(bias):
    """ChunkedLogprobs' hand-written backward (float64, chunks of 2 rows, a padding row past
    vocab_size) against autograd through the naive log_softmax and against finite differences:
    a weighted sum of log-probs and entropies, then log-probs alone (the entropy's gradient None)."""
    g = torch.Generator().manual_seed(0)
    n, H, V, vocab_size, T = 5, 4, 7, 6, 0.7
    h = torch.randn(n, H, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    tokens = torch.randint(0, vocab_size, (n,), generator=g)
    w_logp, w_ent = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    inputs = [x for x in (h, W, b) if x is not None]

    def fused(entropy):
        return ppo.ChunkedLogprobs.apply(h, W, b, tokens, 2, T, entropy, vocab_size)

    logp, ent = fused(True)
    ref_logp, ref_ent = naive_head_logprobs(h, W, b, tokens, T, vocab_size)
    assert logp.dtype == torch.float64
    assert torch.allclose(logp, ref_logp, atol=1e-12) and torch.allclose(ent, ref_ent, atol=1e-12)
    got = torch.autograd.grad((w_logp * logp + w_ent * ent).sum(), inputs)
    want = torch.autograd.grad((w_logp * ref_logp + w_ent * ref_ent).sum(), inputs)
    assert all(torch.allclose(x, y, atol=1e-12) for x, y in zip(got, want))
    assert (got[1][vocab_size:] == 0).all()  # the padding row gets no gradient

    for entropy in (True, False):  # log-probs only, whether or not the entropy was computed
        got = torch.autograd.grad((w_logp * fused(entropy)[0]).sum(), inputs)
        want = torch.autograd.grad((w_logp * naive_head_logprobs(h, W, b, tokens, T, vocab_size)[0]).sum(), inputs)
        assert all(torch.allclose(x, y, atol=1e-12) for x, y in zip(got, want))
    got = torch.autograd.grad((w_ent * fused(True)[1]).sum(), inputs)  # entropy only
    want = torch.autograd.grad((w_ent * naive_head_logprobs(h, W, b, tokens, T, vocab_size)[1]).sum(), inputs)
    assert all(torch.allclose(x, y, atol=1e-12) for x, y in zip(got, want))
    assert torch.autograd.gradcheck(lambda *x: ppo.ChunkedLogprobs.apply(*x, tokens, 2, T, True, vocab_size),
                                    (h, W, b))


def test_fused_head_grad_only_where_needed_and_tied_weights():
    """Only the inputs that need it get a gradient; a head tied to the input embedding gets the sum
    of both uses' gradients (autograd accumulates into the one Parameter)."""
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.Embedding(7, 4, dtype=torch.float64)
    h0, tokens = torch.randint(0, 7, (5,), generator=g), torch.randint(0, 6, (5,), generator=g)
    logp, ent = ppo.ChunkedLogprobs.apply(emb(h0), emb.weight, None, tokens, 2, 0.7, True, 6)
    (logp.sum() + ent.sum()).backward()
    want_emb = emb.weight.detach().clone().requires_grad_()
    lp, en = naive_head_logprobs(torch.nn.functional.embedding(h0, want_emb), want_emb, None, tokens, 0.7, 6)
    (lp.sum() + en.sum()).backward()
    assert torch.allclose(emb.weight.grad, want_emb.grad, atol=1e-12)

    h = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(7, 4, generator=g, dtype=torch.float64)  # frozen head
    logp, _ = ppo.ChunkedLogprobs.apply(h, W, None, tokens, 2, 0.7, False, 6)
    logp.sum().backward()
    assert h.grad is not None and W.grad is None


# -----------------------------------------------------------------------------
# sampling: one rule for every stage (docs/METHOD.md §5)

@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A tiny checkpoint whose generation_config asks for repetition_penalty 1.5, top_k 1 and no
    sampling (Qwen checkpoints ship such defaults), loaded as the stages load it. NOTE: untied random
    head: with tied embeddings a random model's greedy output just repeats the last token."""
    import json
    import os

    path = build_tiny_model(tmp_path_factory.mktemp("poisoned"), seed=3)
    model = common.load_model(path, dtype=torch.float32)
    head = torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.2
    model.lm_head.weight, model.config.tie_word_embeddings = torch.nn.Parameter(head), False
    model.save_pretrained(path)
    gen_path = os.path.join(path, "generation_config.json")
    with open(gen_path) as f:
        gen = json.load(f)
    gen.update(repetition_penalty=1.5, top_k=1, do_sample=False)  # by hand: save_pretrained may refuse it
    with open(gen_path, "w") as f:
        json.dump(gen, f)
    model, tok = common.load_model(path, dtype=torch.float32).eval(), common.load_tokenizer(path)
    assert (model.generation_config.repetition_penalty, model.generation_config.top_k) == (1.5, 1)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


@torch.no_grad()
def plain_softmax(model, tok, prompt, n, max_new_tokens, temperature):
    """The reference: n rows of `prompt`, one full forward per token, argmax (T = 0) or
    torch.multinomial on softmax(logits / T); each row cut after its first EOS. Returns
    [(tokens, finished)] per row."""
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]] * n)  # (n, L)
    eos = common.model_eos_ids(model, tok)
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids).logits[:, -1].float()  # (n, V)
        nxt = logits.argmax(-1) if temperature == 0 else torch.multinomial(torch.softmax(logits / temperature, -1), 1)[:, 0]
        ids = torch.cat([ids, nxt[:, None]], 1)
    out = []
    for row in ids[:, -max_new_tokens:].tolist():
        end = next((t for t, x in enumerate(row) if x in eos), None)
        out.append((row, False) if end is None else (row[:end + 1], True))
    return out


@pytest.fixture
def only_common_generate(poisoned, monkeypatch):
    """Spies on common.generate and makes model.generate fail outside it: a stage that called
    model.generate itself (with the checkpoint's generation_config) fails the test."""
    model, _ = poisoned
    calls, inside = [], []
    real_generate, real_model_generate = common.generate, model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        inside.append(True)
        try:
            return real_generate(*args, **kwargs)
        finally:
            inside.pop()

    def guarded(*args, **kwargs):
        assert inside, "model.generate called outside common.generate"
        return real_model_generate(*args, **kwargs)

    monkeypatch.setattr(common, "generate", spy)
    monkeypatch.setattr(model, "generate", guarded)
    return calls


def test_the_checkpoint_config_would_change_the_samples(poisoned):
    """The poison bites: Hugging Face generate with the checkpoint's own config is not the plain
    softmax (so the stage tests below can fail)."""
    model, tok = poisoned
    prompt = common.build_prompt(tok, QUESTIONS[1])
    want = plain_softmax(model, tok, prompt, 1, 12, 0.0)[0]
    x = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    hf = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=12)[0, x.shape[1]:].tolist()
    assert hf[:len(want[0])] != want[0]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_sft_accuracy_samples_the_plain_softmax(poisoned, only_common_generate, temperature):
    model, tok = poisoned
    problem = {"question": QUESTIONS[1], "answer": "2799"}
    torch.manual_seed(7)
    _, got = sft.accuracy(model, tok, [problem], 12, temperature, samples=4, batch_size=8)
    torch.manual_seed(7)
    want = plain_softmax(model, tok, common.build_prompt(tok, problem["question"]), 4, 12, temperature)
    assert [(text, fin) for text, fin, _ in got] == [(tok.decode(t, skip_special_tokens=True), f) for t, f in want]
    assert only_common_generate and all(c.get("top_k", 0) == 0 and c.get("top_p", 1.0) == 1.0
                                        for c in only_common_generate)


def test_prm_labeling_samples_the_plain_softmax(poisoned, monkeypatch):
    """prm_train's labels come from common.sample, never model.generate (so never the checkpoint's
    generation_config): the solutions (step 1a, the first sampler call) are the plain-softmax loop
    that inverts each row's CDF at U[t, row], U[t] = rand(rows) from a generator seeded by one draw
    of torch's global RNG."""
    model, tok = poisoned
    problem = {"question": QUESTIONS[1], "answer": "2799"}
    cfg = prm_train.Config()
    calls, real_sample = [], common.sample
    monkeypatch.setattr(common, "sample", lambda *a, **k: calls.append(k) or real_sample(*a, **k))
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("model.generate called"))
    torch.manual_seed(7)
    records, stats = prm_train.label_problems(model, tok, [problem], 4, 2, 0.7, cfg.top_p, 12, 64, "\n", True)
    torch.manual_seed(7)
    g = torch.Generator().manual_seed(int(torch.randint(2 ** 62, ())))
    U = torch.stack([torch.rand(4, generator=g) for _ in range(12)])  # (T, rows)
    ids = torch.tensor([tok(common.build_prompt(tok, problem["question"]), add_special_tokens=False)["input_ids"]] * 4)
    with torch.no_grad():
        for t in range(12):  # one full forward per token, no cache
            probs = torch.softmax(model(input_ids=ids).logits[:, -1].float() / 0.7, -1)  # (4, V)
            ids = torch.cat([ids, common.inverse_cdf(probs, U[t])[:, None]], 1)
    eos, want = common.model_eos_ids(model, tok), []
    for row in ids[:, -12:].tolist():
        end = next((t for t, x in enumerate(row) if x in eos), None)
        want.append((row, False) if end is None else (row[:end], True))
    assert [(r["response"], r["finished"]) for r in records] == [
        (tok.decode(t, skip_special_tokens=True), f) for t, f in want]
    assert len(calls) == stats["gen_calls"] and all(c["top_p"] == 1.0 for c in calls)


def test_evaluate_samples_the_plain_softmax(poisoned, only_common_generate):
    model, tok = poisoned
    cfg = evaluate.Config(greedy=True, samples=3, temperature=0.7, max_new_tokens=12, batch_size=8)
    torch.manual_seed(7)
    jobs, gens = evaluate.generate_responses(model, tok, [QUESTIONS[1]], cfg)
    prompt = common.build_prompt(tok, QUESTIONS[1])
    want = plain_softmax(model, tok, prompt, 1, 12, 0.0)  # greedy first: no random draw
    torch.manual_seed(7)
    want += plain_softmax(model, tok, prompt, 3, 12, 0.7)
    assert jobs == [(0, "greedy", 0)] + [(0, "sample", j) for j in range(3)]
    assert [tuple(g) for g in gens] == want
    assert len(only_common_generate) == 2 and all(c.get("top_k", 0) == 0 and c.get("top_p", 1.0) == 1.0
                                                  for c in only_common_generate)


def test_logprobs_leave_out_vocabulary_padding_rows(policy):
    """With vocab_size < the embedding's rows (Qwen2.5: 151,665 tokens, 151,936 rows), log-probs and
    entropies are those of softmax over the real vocabulary only, the distribution `sample` draws from."""
    model, tok = policy
    ids, attn, P, mask = ragged_batch(tok, [6, 3])
    V, k = model.config.vocab_size, model.config.vocab_size - 7  # pretend the last 7 rows are padding
    ids = ids.clamp(max=k - 1)  # every real token is below k
    logp, ent = ppo.policy_logprobs(model, ids, attn, P, 0.7, entropy=True, vocab_size=k)
    for b in range(ids.shape[0]):
        row = ids[b][attn[b].bool()][None]
        p, n = int(attn[b, :P].sum()), int(attn[b, P:].sum())
        logits = model(input_ids=row).logits[0, p - 1:p - 1 + n, :k].float() / 0.7  # (n, k) by hand
        lp = torch.log_softmax(logits, -1)
        assert torch.allclose(logp[b, :n], lp.gather(-1, row[0, p:, None]).squeeze(-1), atol=1e-5)
        assert torch.allclose(ent[b, :n], -(lp.exp() * lp).sum(-1), atol=1e-5)
    full = ppo.policy_logprobs(model, ids, attn, P, 0.7)
    assert V > k and not torch.allclose(full[mask], logp[mask], atol=1e-5)  # the padding rows do matter
