"""Tests for reward-model scoring (rewards.py §5) and prm_train.py. Tiny local models, no downloads."""

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

import prm_train
import common
import rewards
from conftest import ARITH_TOKENIZER, ROOT, SHARED_DATA, build_tiny_model
from test_data import load_prepare

TAG = "<step>"
SOLUTION = "1 + 1 = 2\n\n2 + 1 = 3\n\nThe answer is \\boxed{3}."
QS = ["Compute 12 + 30 - 5.", "Compute 7 - 9.", "Compute 1 + 1 + 1."]
RS = ["12 + 30 = 42\n\n42 - 5 = 37\n\nThe answer is \\boxed{37}.",
      "7 - 9 = -2\n\nThe answer is \\boxed{-2}.",
      "1 + 1 = 2\n\n\n\n2 + 1 = 4\n\n2 + 1 = 4\n\nThe answer is \\boxed{4}.  "]


def naive_scores(model, tokenizer, question, steps, pos_id, neg_id, kind="prm"):
    """Reference: one full forward per prefix, P(pos) among {pos, neg} from the last logits."""
    out = []
    prompt = common.build_prompt(tokenizer, question)
    ks = range(len(steps)) if kind == "prm" else [len(steps) - 1]
    for k in ks:
        sep_tag = TAG if kind == "prm" else ""
        text = prompt + "".join(s + sep_tag + "\n\n" for s in steps[:k]) + steps[k] + TAG
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, -1].double()
        out.append(torch.softmax(logits[[pos_id, neg_id]], -1)[0].item())
    return out


@pytest.fixture(scope="module")
def rm(tiny_model_dir):
    return rewards.load_reward_model(tiny_model_dir, step_tag=TAG, device="cpu")


@pytest.fixture(scope="module")
def bpe_model_dir(tmp_path_factory):
    """A second tiny causal LM with a different tokenizer: byte-level BPE trained here on arith text,
    another chat template ("User: ...\\nAssistant:")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rows = common.load_problems("arith", "train", limit=300)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([r["question"] + "\n" + r["solution"] for r in rows], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>", TAG], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",
                                  additional_special_tokens=[TAG])
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\n' }}"
                         "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=None))
    out = str(tmp_path_factory.mktemp("bpe-model"))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def memo_policy(tmp_path_factory):
    """A tiny policy that learned to answer every question with SOLUTION (two steps + answer 3)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = build_tiny_model(tmp_path_factory.mktemp("memo-policy"), seed=0)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    seqs = [tok(common.build_prompt(tok, q) + SOLUTION, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            for q in QS]
    L = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (L - len(s)) for s in seqs])
    labels = torch.tensor([s + [-100] * (L - len(s)) for s in seqs])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(d)
    return d


# -----------------------------------------------------------------------------
# pure helpers

def test_auc_matches_pairwise_loop():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 30)
        s = [rng.choice([0.1, 0.2, 0.5, 0.7, rng.random()]) for _ in range(n)]
        y = [rng.random() < 0.5 for _ in range(n)]
        pos = [a for a, b in zip(s, y) if b]
        neg = [a for a, b in zip(s, y) if not b]
        if not pos or not neg:
            assert prm_train.auc(s, y) != prm_train.auc(s, y)  # NaN
            continue
        ref = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
        assert prm_train.auc(s, y) == pytest.approx(ref)


def test_mc_labels_matches_naive_loop():
    for hits, n, correct, self_ in [([3, 0, 8], 8, 1, True), ([3, 0, 8], 8, 0, True), ([1, 2], 4, 1, False), ([], 4, 1, True)]:
        ref = []
        for h in hits:
            rollouts = [1] * h + [0] * (n - h) + ([correct] if self_ else [])
            ref.append(sum(rollouts) / len(rollouts))
        assert prm_train.mc_labels(hits, n, correct, self_) == pytest.approx(ref + [float(correct)])


def test_hard_label_is_any_hit_soft_label_is_the_fraction(tiny_model_dir, rm):
    """Math-Shepherd: a step whose completions reach the gold 1 time in 4 has soft label 1/4 and
    hard label 1 ("some completion reaches the gold", not a 0.5 threshold)."""
    from transformers import AutoTokenizer

    # hand values: hits [1, 0, 4, 2] of N = 4 completions, an incorrect solution (last step 0)
    assert prm_train.mc_labels([1, 0, 4, 2], 4, 0, False) == pytest.approx([0.25, 0.0, 1.0, 0.5, 0.0])
    assert prm_train.mc_labels([1], 4, 0, True) == pytest.approx([0.2, 0.0])  # (1 + 0) / (4 + 1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tag_id = rewards.resolve_rm_tokens(tok, TAG, "+", "-")[0]
    rec = {"question": "Compute 1 + 1.", "steps": ["1 + 1 = 2", "2 + 0 = 2", "2 - 1 = 1", "The answer is \\boxed{1}."],
           "labels": [0.25, 0.0, 0.5, 0.0], "correct": 0}
    cfg = prm_train.Config()
    (hard,), _ = prm_train.build_examples(tok, [rec], "prm", tag_id, False, cfg)
    (soft,), _ = prm_train.build_examples(tok, [rec], "prm", tag_id, True, cfg)
    assert hard[2] == [1.0, 0.0, 1.0, 0.0]
    assert soft[2] == pytest.approx([0.25, 0.0, 0.5, 0.0])
    res = prm_train.evaluate_rm(rm, [rec])  # held-out accuracy / AUC are against the same hard labels
    assert res["eval/n_steps"] == 4 and res["eval/pos_frac"] == 0.5


def test_input_formats():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ARITH_TOKENIZER)
    steps = ["1 + 2 = 3", "The answer is \\boxed{3}."]
    text, spans = rewards.rm_input_text(tok, "Compute 1 + 2.", steps, TAG, "prm")
    assert text == "Q: Compute 1 + 2.\nA: 1 + 2 = 3<step>\n\nThe answer is \\boxed{3}.<step>"
    assert [text[a:b] for a, b in spans] == [TAG, TAG]
    text, spans = rewards.rm_input_text(tok, "Compute 1 + 2.", steps, TAG, "orm")
    assert text == "Q: Compute 1 + 2.\nA: 1 + 2 = 3\n\nThe answer is \\boxed{3}.<step>" and len(spans) == 1
    # the Math-Shepherd model card's format: "<question> Step 1: ... ки\nStep 2: ... ки"
    text, spans = rewards.rm_input_text(tok, "Q?", ["a", "Step 2: b"], "ки", "prm", "math-shepherd")
    assert text == "Q? Step 1: a ки\nStep 2: b ки" and [text[a:b] for a, b in spans] == ["ки", "ки"]


# -----------------------------------------------------------------------------
# scoring

def test_score_matches_one_forward_per_prefix(rm):
    scores = rm.score(QS, RS)
    for q, r, s in zip(QS, RS, scores):
        steps = rewards.split_steps(r)
        assert len(s) == len(steps)
        assert s == pytest.approx(naive_scores(rm.model, rm.tokenizer, q, steps, rm.pos_id, rm.neg_id), abs=1e-5)
    assert rm.score(["Compute 1."], [""]) == [[]]  # no steps, no scores


def test_orm_scores_once_at_the_end(tiny_model_dir):
    orm = rewards.load_reward_model(tiny_model_dir, kind="orm", step_tag=TAG, device="cpu")
    scores = orm.score(QS, RS)
    assert all(len(s) == 1 for s in scores)
    for q, r, s in zip(QS, RS, scores):
        ref = naive_scores(orm.model, orm.tokenizer, q, rewards.split_steps(r), orm.pos_id, orm.neg_id, "orm")
        assert s == pytest.approx(ref, abs=1e-5)


def test_score_invariances(rm, tiny_model_dir):
    base = rm.score(QS, RS)
    # batch composition and order: alone, reversed, batch size 1, mixed with other responses
    alone = [rm.score([q], [r])[0] for q, r in zip(QS, RS)]
    rev = rm.score(QS[::-1], RS[::-1])[::-1]
    mixed = rm.score(QS + ["Compute 5."] * 3, RS + ["5 + 0 = 5\n\n" * 6 + "The answer is \\boxed{5}."] * 3)[:3]
    for other in (alone, rev, rm.score(QS, RS, batch_size=1), mixed):
        for a, b in zip(base, other):
            assert a == pytest.approx(b, abs=1e-5)
    # right padding: extra pad columns do not move a margin
    rows = [rm.encode(q, rewards.split_steps(r)) for q, r in zip(QS, RS)]
    m1, k1 = rm.margins(rows)
    padded = [(ids + [rm.pad_id] * 17, pos) for ids, pos in rows]
    m2, k2 = rm.margins(padded)
    assert torch.equal(k1, k2) and torch.allclose(m1[k1], m2[k2], atol=1e-5)
    # dtype: float64 agrees with float32 to float tolerance, bfloat16 to bf16 tolerance
    for dtype, tol in ((torch.float64, 1e-5), (torch.bfloat16, 3e-2)):
        other = rewards.load_reward_model(tiny_model_dir, step_tag=TAG, device="cpu", dtype=dtype).score(QS, RS)
        for a, b in zip(base, other):
            assert a == pytest.approx(b, abs=tol)


def test_tag_found_by_offsets_not_by_id(rm):
    # a question that itself contains the tag text must not add or shift scores
    q = "Compute 1 + 2. <step> (sic)"
    s = rm.score([q], [RS[1]])[0]
    assert len(s) == 2
    assert s == pytest.approx(naive_scores(rm.model, rm.tokenizer, q, rewards.split_steps(RS[1]), rm.pos_id, rm.neg_id), abs=1e-5)


def test_mismatched_tokenizer_scoring(bpe_model_dir):
    """Policy: arith char tokenizer; PRM: byte-level BPE with another chat template. The PRM input is
    rebuilt from text and each score lands on the policy token ending its step."""
    from transformers import AutoTokenizer

    policy_tok = AutoTokenizer.from_pretrained(ARITH_TOKENIZER)
    prm = rewards.load_reward_model(bpe_model_dir, step_tag=TAG, device="cpu")
    assert len(prm.tokenizer) != len(policy_tok)
    response_ids = [policy_tok(r, add_special_tokens=False)["input_ids"] + [policy_tok.eos_token_id] for r in RS]
    values, end_idx, mask = prm.score_tokens(QS, policy_tok, response_ids)
    for b, (q, r) in enumerate(zip(QS, RS)):
        steps, ends = rewards.split_steps_with_ends(r)
        ref = naive_scores(prm.model, prm.tokenizer, q, steps, prm.pos_id, prm.neg_id)
        assert values[b][mask[b]].tolist() == pytest.approx(ref, abs=1e-5)
        # char tokenizer: the token holding the step's last char is exactly char_end - 1
        assert end_idx[b][mask[b]].tolist() == [e - 1 for e in ends]
    # the (B, K) triple plugs into place_rewards
    T = max(map(len, response_ids))
    rmask = torch.tensor([[t < len(ids) for t in range(T)] for ids in response_ids])
    rew = rewards.place_rewards(values, end_idx, mask, torch.zeros(len(RS)), rmask)
    assert rew.sum().item() == pytest.approx(values[mask].sum().item(), abs=1e-5)


def test_orm_tensors_go_on_last_token(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ARITH_TOKENIZER)
    orm = rewards.load_reward_model(tiny_model_dir, kind="orm", step_tag=TAG, device="cpu")
    ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in RS]
    values, end_idx, mask = orm.score_tokens(QS, tok, ids)
    assert mask.sum(1).tolist() == [1, 1, 1]
    assert end_idx[:, 0].tolist() == [len(i) - 1 for i in ids]


def test_missing_tokens_name_them(tiny_model_dir):
    # a tag outside the character vocabulary (several tokens are fine: read at the last one)
    with pytest.raises(ValueError, match=r"step tag 'ки'.*pos token 'plus'"):
        rewards.load_reward_model(tiny_model_dir, step_tag="ки", pos_token="plus", device="cpu")
    with pytest.raises(ValueError, match="neg token 'minus'"):
        rewards.load_reward_model(tiny_model_dir, step_tag=TAG, neg_token="minus", device="cpu")
    with pytest.raises(ValueError, match="no step tag"):  # not ours (no meta.json) and no tag given
        rewards.load_reward_model(tiny_model_dir, device="cpu")


def test_two_class_head_prm_without_remote_code(tmp_path):
    """Qwen2.5-Math-PRM layout: Qwen2 backbone under "model.", head score.0 / score.2, separator
    <extra_0>; scored with AutoModel + the head read from safetensors."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    tok = AutoTokenizer.from_pretrained(ARITH_TOKENIZER)
    tok.add_special_tokens({"additional_special_tokens": [rewards.QWEN_PRM_TAG]})
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, architectures=["Qwen2ForProcessRewardModel"])
    backbone = Qwen2Model(cfg)
    head = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    sd = {"model." + k: v.contiguous() for k, v in backbone.state_dict().items()}
    sd.update({"score." + k: v.contiguous() for k, v in head.state_dict().items()})
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prm = rewards.load_reward_model(str(tmp_path), device="cpu")
    assert prm.input_format == "qwen-prm" and prm.step_tag == rewards.QWEN_PRM_TAG
    got = prm.score(QS[:2], RS[:2])
    for q, r, s in zip(QS[:2], RS[:2], got):
        steps = rewards.split_steps(r)
        text = prm.tokenizer.apply_chat_template(
            [{"role": "system", "content": rewards.QWEN_PRM_SYSTEM}, {"role": "user", "content": q},
             {"role": "assistant", "content": "".join(x + rewards.QWEN_PRM_TAG for x in steps)}], tokenize=False)
        ids = torch.tensor([prm.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            p = torch.softmax(head(backbone(ids).last_hidden_state), -1)[0, :, 1]
        tag_id = prm.tokenizer.convert_tokens_to_ids(rewards.QWEN_PRM_TAG)
        assert s == pytest.approx(p[ids[0] == tag_id].tolist(), abs=1e-5)


# -----------------------------------------------------------------------------
# labeling and training

def test_labeling_batches_all_prefixes_in_one_sampler_call(memo_policy, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(memo_policy)
    model = AutoModelForCausalLM.from_pretrained(memo_policy).eval()
    calls = []
    orig = common.sample

    def counting_sample(model, prompt_ids, *a, **kw):
        calls.append(prompt_ids.shape[0])  # sequences: prompts x samples each
        return orig(model, prompt_ids, *a, **kw)

    monkeypatch.setattr(common, "sample", counting_sample)
    problems = [{"question": QS[2], "answer": "3"}, {"question": QS[1], "answer": "-2"}]
    torch.manual_seed(0)
    recs, stats = prm_train.label_problems(model, tok, problems, samples_per_problem=2, completions=3,
                                           temperature=0.3, top_p=1.0, max_new_tokens=60, gen_batch=256,
                                           step_sep="\n\n", include_self=True)
    n_prefixes = sum(len(r["steps"]) - 1 for r in recs)
    assert calls == [2 * 2, n_prefixes * 3]  # one call for the solutions, ONE for all prefixes
    assert stats["rollouts"] == 4 + 3 * n_prefixes and stats["gen_tokens"] > 0
    assert len(recs) == 4 and n_prefixes > 0
    for r in recs:
        assert len(r["labels"]) == len(r["steps"]) and r["steps"] == rewards.split_steps(r["response"])
        assert r["labels"][-1] == r["correct"]
        if r["answer"] == "3" and r["correct"]:
            assert r["labels"] == [1.0] * len(r["steps"])  # its own continuation reaches the gold
        if r["answer"] == "-2":  # the policy only ever answers 3
            assert r["correct"] == 0 and max(r["labels"]) == 0.0


def test_sample_n_is_one_common_sample_call_seeded_from_torch(tiny_model_dir, monkeypatch):
    """sample_n: each text n times in a row, left-padded, in ONE common.sample call with a budget per
    row and a generator seeded by one draw of torch's global RNG (labels are a function of --seed).
    Row j is the naive loop on its own unpadded text: token t inverts the CDF of the softmax at
    U[t, j], U[t] = rand(rows) from that generator; ids without EOS, finished, and the token count
    with EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():  # NOTE: at init the next-token distribution is near uniform, so the draws
        model.get_input_embeddings().weight.mul_(3)  # would not depend on the prompt (tied: sharper)
    texts = [common.build_prompt(tok, q) + p for q, p in zip(QS[:2], ["12 + 30 = 42\n\n", ""])]
    budgets, n = [9, 14], 3
    calls, real = [], common.sample
    monkeypatch.setattr(common, "sample", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    torch.manual_seed(0)
    got, n_tok = prm_train.sample_n(model, tok, texts, n, budgets, 1.0, 1.0)
    assert calls == [[9, 9, 9, 14, 14, 14]]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(int(torch.randint(2 ** 62, ())))
    U = torch.stack([torch.rand(len(texts) * n, generator=g) for _ in range(max(budgets))])  # (T, rows)
    eos, ref = common.model_eos_ids(model, tok), []
    for j in range(len(texts) * n):
        ids = torch.tensor([tok(texts[j // n], add_special_tokens=False)["input_ids"]])
        row = []
        with torch.no_grad():
            for t in range(budgets[j // n]):
                probs = torch.softmax(model(input_ids=ids).logits[:, -1].float(), -1)  # (1, V)
                tok_t = int(common.inverse_cdf(probs, U[t, j][None]))
                if tok_t in eos:
                    break
                row.append(tok_t)
                ids = torch.cat([ids, torch.tensor([[tok_t]])], 1)
        ref.append((row, len(row) < budgets[j // n]))
    assert got == ref and n_tok == sum(len(ids) + fin for ids, fin in ref)
    assert len({tuple(ids) for ids, _ in got}) > 2  # the rows differ: each has its own noise
    torch.manual_seed(1)
    assert prm_train.sample_n(model, tok, texts, n, budgets, 1.0, 1.0)[0] != got  # another seed, other samples


def test_correct_solutions_skip_rollouts_with_exact_hard_labels(memo_policy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(memo_policy)
    model = AutoModelForCausalLM.from_pretrained(memo_policy).eval()
    problems = [{"question": QS[2], "answer": "3"}, {"question": QS[1], "answer": "-2"}]
    torch.manual_seed(0)
    recs, stats = prm_train.label_problems(model, tok, problems, 2, 3, 0.3, 1.0, 60, 256, "\n\n", True,
                                           mc_correct=False)
    rolled = [r for r in recs if not r["correct"]]
    assert stats["rollouts"] == 4 + 3 * sum(len(r["steps"]) - 1 for r in rolled)
    for r in recs:
        assert r["soft"] == (not r["correct"])
        if r["correct"]:
            assert r["labels"] == [1.0] * len(r["steps"])


@pytest.mark.parametrize("sep", ["\n\n", "\n"])
def test_mc_prefix_is_prompt_steps_and_separator(sep, monkeypatch):
    """The sampler gets prompt + steps 1..k joined by the separator + the separator (step 1b), with
    the budget left after the prefix; a step's label counts the finished completions that reach
    the gold (a truncated one with the right answer does not)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ARITH_TOKENIZER)
    solution = f"1 + 1 = 2{sep}2 + 1 = 4{sep}The answer is \\boxed{{4}}."  # wrong: the gold is 3
    hit, miss = "The answer is \\boxed{3}.", "The answer is \\boxed{4}."
    calls = []

    def scripted(model, tokenizer, texts, n, budgets, temperature, top_p):
        calls.append((list(texts), n, list(budgets)))
        if len(calls) == 1:  # 1a: the solution
            out = [(tokenizer(solution, add_special_tokens=False)["input_ids"], True)] * (len(texts) * n)
        else:  # 1c: per prefix one hit, one truncated hit, two misses
            out = [(tokenizer(t, add_special_tokens=False)["input_ids"], fin)
                   for _ in texts for t, fin in ((hit, True), (hit, False), (miss, True), (miss, True))]
        return out, sum(len(ids) + fin for ids, fin in out)

    monkeypatch.setattr(prm_train, "sample_n", scripted)
    problems = [{"question": "Compute 1 + 1 + 1.", "answer": "3"}]
    recs, _ = prm_train.label_problems(None, tok, problems, samples_per_problem=1, completions=4,
                                       temperature=1.0, top_p=1.0, max_new_tokens=60, gen_batch=256,
                                       step_sep=sep, include_self=False)
    assert len(calls) == 2 and calls[1][1] == 4
    prompt = "Q: Compute 1 + 1 + 1.\nA: "
    expected = {prompt + "1 + 1 = 2" + sep: 60 - len("1 + 1 = 2" + sep),  # char tokenizer: 1 token a char
                prompt + "1 + 1 = 2" + sep + "2 + 1 = 4" + sep: 60 - len("1 + 1 = 2" + sep + "2 + 1 = 4" + sep)}
    assert dict(zip(calls[1][0], calls[1][2])) == expected
    (r,) = recs
    assert r["steps"] == ["1 + 1 = 2", "2 + 1 = 4", "The answer is \\boxed{4}."] and r["correct"] == 0
    assert r["labels"] == pytest.approx([0.25, 0.25, 0.0])


def test_grow_layers_is_function_preserving(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(3, 90, (2, 17))
    with torch.no_grad():
        before = model(ids).logits
        prm_train.grow_layers(model, 2)
        after = model(ids).logits
    assert model.config.num_hidden_layers == 4 and torch.allclose(before, after, atol=1e-5)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, after, atol=1e-6)


def test_labels_resume_without_relabeling(memo_policy, tmp_path):
    out = tmp_path / "run"
    data = tmp_path / "problems.jsonl"
    with open(data, "w") as f:
        for i in range(4):
            f.write(json.dumps({"question": f"Compute {i} + 3.", "answer": "3"}) + "\n")
    args = ["--init", memo_policy, "--dataset", str(data), "--num-problems", "4", "--label-chunk", "2",
            "--samples-per-problem", "2", "--completions", "2", "--max-new-tokens", "60",
            "--label-only", "--out-dir", str(out)]
    prm_train.main(args)
    path = out / "labels.jsonl"
    lines = path.read_text().splitlines()
    assert sorted({json.loads(x)["id"] for x in lines}) == [0, 1, 2, 3] and len(lines) == 8
    # simulate a crash in the second chunk: keep chunk 1 and a torn half line
    path.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    prm_train.main(args)
    again = path.read_text().splitlines()
    assert again[:4] == lines[:4] and len(again) == 8  # chunk 1 kept as is, chunk 2 relabeled once
    assert sorted(json.loads(x)["id"] for x in again) == [0, 0, 1, 1, 2, 2, 3, 3]
    prm_train.main(args)  # nothing left to do
    assert path.read_text().splitlines() == again
    with pytest.raises(common.RunError, match="other settings"):
        prm_train.main(args[:-2] + ["--completions", "5", "--out-dir", str(out)])


def test_user_errors_are_one_line_run_errors(tmp_path):
    """Data and setting errors are RunErrors (run_main prints one line, exit 2) that say what to do;
    raw public data names the prepare script that converts it."""
    out = ["--out-dir", str(tmp_path / "out")]
    labeled = tmp_path / "labels.jsonl"
    labeled.write_text("".join(json.dumps(r) + "\n" for r in _toy_records(4)))
    raw_prm800k = tmp_path / "raw.jsonl"
    raw_prm800k.write_text(json.dumps({"question": {"problem": "q"}, "label": {"steps": []}}) + "\n")
    raw_ms = tmp_path / "ms.jsonl"
    raw_ms.write_text(json.dumps({"input": "q Step 1: a ки", "label": "q Step 1: a +"}) + "\n")
    cases = [(["--data", str(raw_prm800k)], "data/prm800k/prepare.py"),
             (["--data", str(raw_ms)], "data/math_shepherd/prepare.py"),
             (["--data", str(tmp_path / "missing.jsonl")], "not found"),
             (["--data", str(labeled), "--init", "models/arith-polcy"], "--init 'models/arith-polcy' not found"),
             (["--no-mc-correct", "--no-include-self"], "--include-self"),
             (["--train-only-extra"], "--extra-layers")]
    for args, msg in cases:
        with pytest.raises(common.RunError, match=msg):
            prm_train.main(args + out)
    prepared = tmp_path / "prepared.jsonl"  # what data/prm800k/prepare.py writes is read as is
    prm800k = load_prepare("prm800k")
    recs = [{"question": {"problem": "P"}, "label": {"finish_reason": "solution", "steps": [
        {"completions": [{"text": "x = 1", "rating": 1}], "chosen_completion": 0}]}}]
    prm800k.write_jsonl(str(prepared), prm800k.read_prm800k(recs))
    assert prm_train.read_records(str(prepared)) == [
        {"question": "P", "answer": None, "steps": ["x = 1"], "labels": [1.0], "correct": 1, "source": "prm800k"}]


def _toy_records(n):
    """Separable step labels: a step "a + b = c" is good when c is right."""
    rng = random.Random(0)
    recs = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        good = i % 2 == 0
        c = a + b if good else a + b + rng.randint(1, 3)
        recs.append({"question": f"Compute {a} + {b}.", "steps": [f"{a} + {b} = {c}", f"The answer is \\boxed{{{c}}}."],
                     "labels": [float(good)] * 2, "correct": int(good)})
    return recs


def test_training_run_saves_a_loadable_scorer(tiny_model_dir, tmp_path):
    """Subprocess smoke run of the stage on a labeled file: a few steps, a checkpoint that loads with
    AutoModelForCausalLM and with load_reward_model (tag read from meta.json), eval metrics saved."""
    from transformers import AutoModelForCausalLM

    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _toy_records(40)))
    for objective, kind in (("process", "prm"), ("outcome", "orm")):
        out = tmp_path / kind
        cmd = [sys.executable, os.path.join(ROOT, "prm_train.py"), "--init", tiny_model_dir, "--data", str(data),
               "--objective", objective, "--max-steps", "3", "--batch-size", "8", "--micro-batch-size", "4",
               "--eval-frac", "0.3", "--out-dir", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, res.stderr[-2000:]
        meta = json.loads((out / "meta.json").read_text())
        assert meta["reward_model"]["kind"] == kind and meta["reward_model"]["step_tag"] == TAG
        keys = ("eval/step_acc", "eval/step_auc") if kind == "prm" else ("eval/acc", "eval/auc")
        assert all(k in meta["eval"] for k in keys)
        AutoModelForCausalLM.from_pretrained(out)
        scorer = rewards.load_reward_model(str(out), kind=kind, device="cpu")
        s = scorer.score(QS, RS)
        assert [len(x) for x in s] == ([3, 2, 4] if kind == "prm" else [1, 1, 1])


def test_a_few_training_steps_learn_step_labels(tiny_model_dir):
    """The BCE at the tags has the right sign and target: 40 steps separate right from wrong steps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = prm_train.Config()
    tag_id, pos_id, neg_id = rewards.resolve_rm_tokens(tok, TAG, "+", "-")
    recs = _toy_records(32)
    examples, _ = prm_train.build_examples(tok, recs, "prm", tag_id, False, cfg)
    scorer = prm_train.TagScorer(model, (pos_id, neg_id))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    batch = prm_train.collate(examples, tok.pad_token_id)
    for _ in range(40):
        ids, attn, pos, tgt, tmask = batch
        loss = prm_train.bce_sum(scorer(ids, attn, pos), tgt, tmask) / tmask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    rm = rewards.RewardModel(model.eval(), tok, "prm", TAG, "+", "-", "chat", "\n\n", "cpu")
    res = prm_train.evaluate_rm(rm, recs)
    assert res["eval/step_auc"] > 0.9 and res["eval/step_acc"] > 0.8


def _bce(m, y):
    """Binary cross-entropy of one logit m against a (soft) target y, by hand."""
    p = 1.0 / (1.0 + math.exp(-m))
    return -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))


def test_bce_sum_ignores_padded_tags():
    """Ragged rows (4, 1, 2 real tags of K = 4), soft targets, garbage at the padded tags."""
    torch.manual_seed(0)
    lengths = [4, 1, 2]
    margins = 3 * torch.randn(3, 4)
    targets = torch.rand(3, 4)  # padded entries too: they must not matter
    mask = torch.tensor([[k < n for k in range(4)] for n in lengths])
    ref = sum(_bce(margins[b, k].item(), targets[b, k].item()) for b, n in enumerate(lengths) for k in range(n))
    assert prm_train.bce_sum(margins, targets, mask).item() == pytest.approx(ref, rel=1e-5)


def test_training_loss_over_ragged_batch_matches_per_row_loop(tiny_model_dir):
    """build_examples -> collate -> TagScorer -> bce_sum on rows with 3, 1 and 2 steps and soft
    labels equals a loop over the rows alone (one unpadded forward each, their own tags only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tag_id, pos_id, neg_id = rewards.resolve_rm_tokens(tok, TAG, "+", "-")
    recs = [{"question": QS[0], "steps": rewards.split_steps(RS[0]), "labels": [0.75, 0.125, 0.0], "correct": 0},
            {"question": QS[1], "steps": ["The answer is \\boxed{-2}."], "labels": [0.875], "correct": 1},
            {"question": QS[2], "steps": ["1 + 1 = 2", "The answer is \\boxed{2}."], "labels": [0.5, 0.375], "correct": 0}]
    examples, _ = prm_train.build_examples(tok, recs, "prm", tag_id, True, prm_train.Config())
    ids, attn, pos, tgt, tmask = prm_train.collate(examples, tok.pad_token_id)
    assert tmask.sum().item() == 6 and ids.shape[0] == 3
    with torch.no_grad():
        got = prm_train.bce_sum(prm_train.TagScorer(model, (pos_id, neg_id))(ids, attn, pos), tgt, tmask).item()
        ref = 0.0
        for (row_ids, row_pos, _), r in zip(examples, recs):
            logits = model(torch.tensor([row_ids])).logits[0].double()  # (L, V)
            for p, y in zip(row_pos, r["labels"]):
                ref += _bce((logits[p, pos_id] - logits[p, neg_id]).item(), y)
    assert got == pytest.approx(ref, rel=1e-4)


# --- the implicit form (prm_train.py --form implicit) -------------------------------------------

def naive_implicit(model, ref, tok, question, steps, beta, kind="prm"):
    """Reference: one unbatched forward of each model over the whole text; sum by hand, token by
    token, log p_model - log p_ref from the first response token to the token ending each step."""
    prompt = common.build_prompt(tok, question)
    ids = tok(prompt + "\n\n".join(steps), add_special_tokens=False)["input_ids"]
    start = len(tok(prompt, add_special_tokens=False)["input_ids"])
    ends = [len(tok(prompt + "\n\n".join(steps[: k + 1]), add_special_tokens=False)["input_ids"]) - 1
            for k in range(len(steps))]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        lr = torch.log_softmax(ref(torch.tensor([ids])).logits[0].double(), -1)
    out = []
    for e in (ends if kind == "prm" else ends[-1:]):
        m = sum(lp[t - 1, ids[t]].item() - lr[t - 1, ids[t]].item() for t in range(start, e + 1))
        out.append(1 / (1 + math.exp(-beta * m)))
    return out


def test_implicit_scores_match_a_token_by_token_sum(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "ref", seed=1)).eval()
    steps = [rewards.split_steps(r) for r in RS]
    for kind in ("prm", "orm"):
        rm = rewards.RewardModel(model, tok, kind, None, None, None, "chat", "\n\n", "cpu", ref=ref, beta=0.7)
        got = rm.score(QS, RS, batch_size=2)  # ragged batches: padding must not change a score
        for q, s, g in zip(QS, steps, got):
            want = naive_implicit(model, ref, tok, q, s, 0.7, kind)
            assert len(g) == len(want) and all(abs(a - b) < 1e-5 for a, b in zip(g, want))
        assert any(abs(x - 0.5) > 1e-3 for g in got for x in g)  # the two models differ
        assert rm.score(QS[:1], [""]) == ([[0.5]] if kind == "orm" else [[]])  # no steps: as the tag form
    same = rewards.RewardModel(model, tok, "prm", None, None, None, "chat", "\n\n", "cpu", ref=model, beta=0.7)
    assert all(abs(x - 0.5) < 1e-6 for g in same.score(QS, RS) for x in g)  # pi = pi_ref: every score 1/2


def test_logprob_readout_matches_the_implicit_margins(tiny_model_dir, tmp_path):
    """bench/logprob_readout.py's zero-training readout: its min cumulative sum is the min over steps
    of the implicit margin / beta (naive_implicit, an unbatched hand sum); without a reference, the
    log-probs are all <= 0, so it is the response's whole log-likelihood (summed here by hand)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import logprob_readout

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "ref", seed=1)).eval()
    for q, r in zip(QS, RS):
        steps = rewards.split_steps(r)
        want = min(math.log(x / (1 - x)) / 0.5 for x in naive_implicit(model, ref, tok, q, steps, 0.5))
        cum, step = logprob_readout.readouts(model, ref, tok, q, r, "\n\n")
        assert cum == pytest.approx(want, abs=1e-3)
        prompt = common.build_prompt(tok, q)
        ids = tok(prompt + "\n\n".join(steps), add_special_tokens=False)["input_ids"]
        start = len(tok(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        total = sum(lp[t - 1, ids[t]].item() for t in range(start, len(ids)))
        cum0, step0 = logprob_readout.readouts(model, None, tok, q, r, "\n\n")
        assert cum0 == pytest.approx(total, abs=1e-3) and total - 1e-3 <= step0 < 0


def test_a_few_implicit_training_steps_learn_step_labels(tiny_model_dir):
    """The implicit form's BCE has the right sign: 40 steps from pi = pi_ref separate the toy labels."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().requires_grad_(False)
    cfg = prm_train.Config(form="implicit")
    recs = _toy_records(32)
    examples, _ = prm_train.build_examples(tok, recs, "prm", None, False, cfg)
    scorer = prm_train.ImplicitScorer(model, ref, cfg.beta)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids, attn, pos, tgt, tmask = prm_train.collate(examples, tok.pad_token_id)
    start = torch.tensor([e[3] for e in examples])
    for _ in range(40):
        loss = prm_train.bce_sum(scorer(ids, attn, pos, start), tgt, tmask) / tmask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    rm = rewards.RewardModel(model.eval(), tok, "prm", None, None, None, "chat", "\n\n", "cpu", ref=ref, beta=cfg.beta)
    res = prm_train.evaluate_rm(rm, recs)
    assert res["eval/step_auc"] > 0.9 and res["eval/step_acc"] > 0.8


def _two_step_run(tiny_model_dir, tmp_path, form):
    """Train --form `form` for 2 steps on 40 toy records into tmp_path/prm (a subprocess).
    -> (the command without --out-dir, its env, the finished process)."""
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _toy_records(40)))
    base = [sys.executable, os.path.join(ROOT, "prm_train.py"), "--init", tiny_model_dir, "--data", str(data),
            "--form", form, "--max-steps", "2", "--batch-size", "8", "--micro-batch-size", "4", "--eval-frac", "0.3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(base + ["--out-dir", str(tmp_path / "prm")], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=env)
    return base, env, res


def test_implicit_training_run_saves_model_and_reference(tiny_model_dir, tmp_path):
    base, env, res = _two_step_run(tiny_model_dir, tmp_path, "implicit")
    out = tmp_path / "prm"
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())["reward_model"]
    assert meta["form"] == "implicit" and meta["beta"] == 0.5 and (out / "ref" / "config.json").exists()
    rm = rewards.load_reward_model(str(out), device="cpu")
    ref_w = rm.ref.get_input_embeddings().weight
    assert rm.ref is not rm.model and torch.equal(
        ref_w, rewards.load_reward_model(tiny_model_dir, step_tag=TAG, device="cpu").model.get_input_embeddings().weight)
    assert [len(x) for x in rm.score(QS, RS)] == [3, 2, 4]
    res = subprocess.run(base + ["--extra-layers", "2", "--out-dir", str(tmp_path / "bad")], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env=env)
    assert res.returncode == 2 and "--extra-layers must be 0" in res.stderr and "Traceback" not in res.stderr


def test_implicit_training_with_another_reference(tiny_model_dir, tmp_path):
    """--ref: pi_ref is that model (any size, --init's vocabulary), frozen and saved as ref/; the
    trained model is --init's. A reference with another vocabulary, or --ref without the implicit
    form, is a one-line error."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from safetensors.torch import load_file

    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _toy_records(40)))
    other = build_tiny_model(tmp_path / "other", seed=1, hidden=32, layers=1)
    base = [sys.executable, os.path.join(ROOT, "prm_train.py"), "--init", tiny_model_dir, "--data", str(data),
            "--max-steps", "1", "--batch-size", "8", "--micro-batch-size", "8", "--eval-frac", "0.3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "prm"
    res = subprocess.run(base + ["--form", "implicit", "--ref", other, "--out-dir", str(out)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    saved, want = load_file(str(out / "ref" / "model.safetensors")), load_file(os.path.join(other, "model.safetensors"))
    assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)
    trained = AutoModelForCausalLM.from_pretrained(str(out))
    assert trained.config.hidden_size == 64 and trained.config.num_hidden_layers == 2  # --init's network
    assert rewards.load_reward_model(str(out), device="cpu").ref.config.hidden_size == 32

    cfg = LlamaConfig(vocab_size=trained.config.vocab_size + 8, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "wide")
    for extra, msg in ((["--form", "implicit", "--ref", str(tmp_path / "wide")], "is not --init's"),
                       (["--ref", other], "only --form implicit has a reference")):
        res = subprocess.run(base + extra + ["--out-dir", str(tmp_path / "bad")], capture_output=True, text=True,
                             timeout=120, cwd=ROOT, env=env)
        assert res.returncode == 2 and msg in res.stderr and "Traceback" not in res.stderr, res.stderr[-800:]


# --- the likelihood form (prm_train.py --form likelihood) ---------------------------------------

def naive_likelihood(model, tok, question, steps, beta, offset):
    """Reference: one unbatched forward; each step's log-likelihood summed by hand over its tokens
    (step 1 from the first response token, step k from the token after step k-1's last), then the
    running minimum, then sigmoid(beta * min + offset)."""
    prompt = common.build_prompt(tok, question)
    ids = tok(prompt + "\n\n".join(steps), add_special_tokens=False)["input_ids"]
    bounds = [len(tok(prompt, add_special_tokens=False)["input_ids"])]
    bounds += [len(tok(prompt + "\n\n".join(steps[: k + 1]), add_special_tokens=False)["input_ids"])
               for k in range(len(steps))]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    out, low = [], float("inf")
    for a, b in zip(bounds, bounds[1:]):
        low = min(low, sum(lp[t - 1, ids[t]].item() for t in range(a, b)))
        out.append(1 / (1 + math.exp(-(beta * low + offset))))
    return out


def test_likelihood_scores_match_a_hand_sum(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rm = rewards.RewardModel(model, tok, "prm", None, None, None, "chat", "\n\n", "cpu", form="likelihood",
                             beta=0.02, offset=1.0)  # an untrained model: about -5 nats a token
    got = rm.score(QS, RS, batch_size=2)  # ragged batches: padding must not change a score
    for q, r, g in zip(QS, RS, got):
        want = naive_likelihood(model, tok, q, rewards.split_steps(r), 0.02, 1.0)
        assert len(g) == len(want) and g == pytest.approx(want, abs=1e-5)
        assert all(a >= b for a, b in zip(g, g[1:]))  # a prefix is as good as its worst step
    assert len({round(x, 4) for g in got for x in g}) > 3  # the steps read differently
    assert rm.score(QS[:1], [""]) == [[]]


def test_fit_logistic_matches_lbfgs():
    """prm_train.fit_logistic (hand-written Newton steps) against torch's L-BFGS on the same loss
    through autograd, and the loss's autograd gradient is zero at its answer (the loss is convex)."""
    g = torch.Generator().manual_seed(0)
    x = -torch.rand(400, generator=g, dtype=torch.float64) * 6
    y = torch.sigmoid(1.3 * x + 2.0 + torch.randn(400, generator=g, dtype=torch.float64))  # soft targets
    a, c = prm_train.fit_logistic(x.tolist(), y.tolist())

    def loss(w):
        z = w[0] * x + w[1]
        return (torch.nn.functional.softplus(z) - y * z).sum()

    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss(w)
        value.backward()
        return value

    opt.step(closure)
    assert (a, c) == pytest.approx(tuple(w.tolist()), abs=1e-5) and 0.5 < a < 3
    at = torch.tensor([a, c], dtype=torch.float64, requires_grad=True)
    loss(at).backward()
    assert at.grad.abs().max() < 1e-6


def test_likelihood_training_run_fits_and_saves(tiny_model_dir, tmp_path):
    """--form likelihood: (beta, offset) fitted on --init, saved in meta.json, read back by the
    loader; no ref/ folder; --objective outcome and --ref are one-line errors."""
    base, env, res = _two_step_run(tiny_model_dir, tmp_path, "likelihood")
    out = tmp_path / "prm"
    if res.returncode == 2 and "fitted beta" in res.stderr:  # an untrained init may rank the toy labels either way
        pytest.skip("the tiny init reads the toy labels backwards")
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())["reward_model"]
    assert meta["form"] == "likelihood" and meta["beta"] > 0 and not (out / "ref").exists()
    rm = rewards.load_reward_model(str(out), device="cpu")
    assert (rm.form, rm.beta, rm.offset) == ("likelihood", meta["beta"], meta["offset"])
    assert [len(x) for x in rm.score(QS, RS)] == [3, 2, 4]
    for extra, msg in ((["--objective", "outcome"], "--objective process"),
                       (["--ref", tiny_model_dir], "only --form implicit has a reference")):
        res = subprocess.run(base + extra + ["--out-dir", str(tmp_path / "bad")], capture_output=True, text=True,
                             timeout=120, cwd=ROOT, env=env)
        assert res.returncode == 2 and msg in res.stderr and "Traceback" not in res.stderr, res.stderr[-800:]


def test_save_steps_snapshots_are_the_run_stopped_there(tiny_model_dir, tmp_path):
    """--save-steps 0 1 in a 3-step run: step-0 holds --init's weights, step-1 the weights of a run
    stopped after 1 update (inside the warmup the learning rate does not depend on the run's length,
    and the data order does not either), each loadable as a reward model with the end's meta; the
    end is byte-identical to a run without snapshots (saving draws no random number). A step the run
    never reaches is a one-line error."""
    from safetensors.torch import load_file

    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _toy_records(40)))
    base = [sys.executable, os.path.join(ROOT, "prm_train.py"), "--init", tiny_model_dir, "--data", str(data),
            "--form", "implicit", "--batch-size", "8", "--micro-batch-size", "4", "--eval-frac", "0.3",
            "--warmup-steps", "10", "--lr", "1e-2"]
    run = lambda *a: subprocess.run(base + list(a), capture_output=True, text=True, timeout=120, cwd=ROOT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
    for args in (["--max-steps", "3", "--save-steps", "0", "1", "--out-dir", str(tmp_path / "snap")],
                 ["--max-steps", "3", "--out-dir", str(tmp_path / "plain")],
                 ["--max-steps", "1", "--out-dir", str(tmp_path / "one")]):
        res = run(*args)
        assert res.returncode == 0, res.stderr[-2000:]
    w = lambda d: load_file(os.path.join(d, "model.safetensors"))
    same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    snap = tmp_path / "snap"
    assert same(w(snap / "step-0"), w(tiny_model_dir))
    assert same(w(snap / "step-1"), w(tmp_path / "one"))
    assert not same(w(snap / "step-1"), w(snap))  # steps 2-3 moved on from it
    assert (snap / "model.safetensors").read_bytes() == (tmp_path / "plain" / "model.safetensors").read_bytes()
    end_meta = json.loads((snap / "meta.json").read_text())
    for k in (0, 1):
        meta = json.loads((snap / f"step-{k}" / "meta.json").read_text())
        assert meta["step"] == k and meta["reward_model"] == end_meta["reward_model"]
        assert (snap / f"step-{k}" / "ref" / "config.json").exists()
        assert [len(x) for x in rewards.load_reward_model(str(snap / f"step-{k}"), device="cpu").score(QS, RS)] == [3, 2, 4]
    res = run("--max-steps", "3", "--save-steps", "3", "--out-dir", str(tmp_path / "bad"))
    assert res.returncode == 2 and "--save-steps [3]" in res.stderr and "Traceback" not in res.stderr, res.stderr[-800:]


def test_pick_prm_rule():
    """scripts/pick_prm.choose: the highest within-problem AUC; a tie goes to the first listed; a
    candidate without an AUC never wins; None when none has one."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from pick_prm import choose

    assert choose({"end": 0.82, "s0": 0.885, "s150": 0.846}) == "s0"
    assert choose({"end": 0.894, "s0": 0.890}) == "end"
    assert choose({"end": 0.85, "s0": 0.86, "s1": 0.86}) == "s0"        # a tie: the first listed
    assert choose({"end": 0.86, "s0": 0.86}) == "end"
    assert choose({"end": None, "s0": 0.5}) == "s0"
    assert choose({"end": None}) is None


def test_pick_prm_scores_saved_samples_and_copies(tmp_path):
    """End to end on a hand-written samples file (one right and one slipped answer per question):
    each candidate's AUC is the share of questions whose right answer has the higher min step score
    (counted here from the scorer's step scores), a candidate listed twice ties with itself and the
    first is kept in place, the chosen one is copied to --out-dir with selection.json; --split test
    and a missing checkpoint are one-line errors."""
    import shutil

    prm = os.path.join(ROOT, "models", "arith-prm")
    rows = []
    for p, (a, b) in enumerate([(12, 30), (41, 8), (7, 25)]):
        for i, c in enumerate((a + b, a + b + 1)):
            rows.append({"problem": p, "kind": "sample", "sample": i, "question": f"Compute {a} + {b}.",
                         "response": f"{a} + {b} = {c}\n\nThe answer is \\boxed{{{c}}}.", "correct": c == a + b})
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = [sys.executable, os.path.join(ROOT, "scripts", "pick_prm.py"), "--samples-file", str(samples)]
    run = lambda *a: subprocess.run(script + list(a), capture_output=True, text=True, timeout=300, cwd=ROOT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
    kept = tmp_path / "kept"
    shutil.copytree(prm, kept)
    res = run("--candidates", str(kept), prm, "--out-dir", str(kept))
    assert res.returncode == 0, res.stderr[-2000:]
    sel = json.loads((kept / "selection.json").read_text())
    steps = rewards.load_reward_model(prm, device="cpu").score([r["question"] for r in rows], [r["response"] for r in rows])
    right, wrong = [min(x) for x in steps[0::2]], [min(x) for x in steps[1::2]]
    want = sum((r > w) + 0.5 * (r == w) for r, w in zip(right, wrong)) / 3
    assert sel["chosen"] == str(kept) and sel["within_problem_auc"] == {str(kept): want, prm: want}
    assert sel["best_of_n"][prm] == sum(r >= w for r, w in zip(right, wrong)) / 3 and sel["n_problems"] == 3
    res = run("--candidates", prm, "--out-dir", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == open(os.path.join(prm, "model.safetensors"), "rb").read()
    for args, msg in ((["--candidates", prm, "--split", "test"], "never on test"),
                      (["--candidates", str(tmp_path / "nope")], "no such checkpoint directory")):
        res = run(*args, "--out-dir", str(tmp_path / "bad"))
        assert res.returncode == 2 and msg in res.stderr and "Traceback" not in res.stderr, res.stderr[-800:]
