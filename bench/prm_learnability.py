"""
Can the arith PRM learn to check arithmetic at all? A short training probe (README figures for the
weak v2 verifier; an experiment, not a timed test).

prm_train.py's shipped recipe ends with a PRM that scores a corrupted step as high as the correct
one. Two explanations: the Math-Shepherd labels are too noisy (a wrong step is labeled "+" when one
of its 8 completions slips back onto the gold), or the model does not find a comparison circuit
from one bit per step. This script trains the shipped recipe's model (--init plus 2 identity layers,
all layers, AdamW, warmup + cosine) for --steps steps on the labeled file, in one of these ways:

  mc      the Math-Shepherd hard labels (label > 0), as prm_train.py does
  gold    exact labels from the arithmetic: step k is 1 while every "a op b = c" up to k is right
          (gold_labels), the noise-free target
  mc+lm   the mc labels plus an auxiliary next-token loss (weight --lm-coef) on the same inputs,
          so the policy's own digit predictions stay sharp while the head learns
  first   the mc labels up to the first "-" only (PRM800K's convention): the steps after a slip are
          locally right and wrong only through the carried value; they leave the loss
  dense   the mc labels, plus the same BCE at every response token with the label of the step the
          token belongs to (the slipped digit itself is supervised, not only the tag after it)
  implicit  the mc labels, the implicit form of prm_train.py --form implicit (--beta): no tag, no
          extra layers; step k's margin is beta * the sum of log pi / pi_ref up to step k's end
  fresh   not the labeled file: an endless balanced stream of the labeled file's correct solutions,
          half left clean, half with one random work step's result off by +-1 or +-10, cut after
          that step (labels 1 up to it, 0 on it). The easiest form of the task: if the model cannot
          learn the check from this, it cannot from Math-Shepherd labels either

and reports, every --eval-every steps, on up to 600 held-out solutions (prm_train's question hash):
step AUC against the MC labels and against the gold labels, and the step-2 corruption rate
(scripts/verifier.py's test: correct solutions, the result of step 2 plus 1; the fraction of
pairs where the corrupted step scores lower; 0.5 = blind). The step-0 line also gives the same
corruption test read from the *policy's own* token log-probabilities (the minimum over step 2's
tokens, no training at all): the independent reference that says whether the information is there.

Usage (one thread, about 0.6 s a step at 32 solutions; the labeled file of scripts/build_arith.sh):
    OMP_NUM_THREADS=1 python bench/prm_learnability.py --labels out/arith-labels.jsonl --mode gold
    OMP_NUM_THREADS=1 python bench/prm_learnability.py --labels out/arith-labels.jsonl --mode fresh \
        --lr 1e-3 --weight-decay 0.1 --steps 3000 --eval-every 250

Measured (README, "Reward models as verifiers"; labels of the v2 build): no tag-form mode learns to
check arithmetic in the budgets tried (corruption 0.44-0.63 at step 400-500, fresh included), while
the policy's own log-probabilities pass the corruption test in 99% of pairs and the implicit form
reaches 0.84 at step 400 (AUC against the exact labels 0.83 at step 800).
"""

import argparse
import json
import math
import os
import random
import re
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import common  # noqa: E402
import prm_train  # noqa: E402
import rewards  # noqa: E402
import verifier  # noqa: E402

EQ = re.compile(r"^(-?\d+) ([+-]) (-?\d+) = (-?\d+)$")


def gold_labels(steps):
    """1.0 for step k while every 'a op b = c' step up to k is right, then 0.0 (the first slip
    ruins the rest: the policy carries a wrong result on)."""
    ok, out = True, []
    for s in steps:
        m = EQ.match(s)
        if m:
            a, op, b, c = m.groups()
            ok = ok and int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        out.append(1.0 if ok else 0.0)
    return out


def forward(model, ref, tok, cfg, ids3, batch):
    """(B, K) margins of a batch of build_examples rows and the collated (ids, attn, tpos, tgt, tmask)."""
    ids, attn, tpos, tgt, tmask = prm_train.collate(batch, tok.pad_token_id)
    if ref is not None:  # the implicit form
        start = torch.tensor([e[3] for e in batch])
        return rewards.implicit_margins(model, ref, ids, attn, start, tpos, cfg.beta), (ids, attn, tpos, tgt, tmask)
    return rewards.tag_margins(model, None, ids, attn, tpos, ids3[1:]), (ids, attn, tpos, tgt, tmask)


def margins(model, ref, tok, cfg, ids3, recs):
    """(list of per-step margins) for records, the scorer's own input text."""
    ex, _ = prm_train.build_examples(tok, recs, "prm", ids3[0], False, cfg)
    m, _ = forward(model, ref, tok, cfg, ids3, ex)
    return [m[j, : len(e[2])].tolist() for j, e in enumerate(ex)]


def corruption_pairs(held):
    """The verifier.py test on held-out data: 150 correct solutions and their step-2-plus-1 copies."""
    good = [r for r in held if r["correct"] == 1 and len(r["steps"]) > 2 and EQ.match(r["steps"][1])][:150]
    return good, [dict(r, steps=verifier.corrupt(r["steps"], 2, 1)) for r in good]


@torch.no_grad()
def evaluate(model, ref, tok, cfg, ids3, held):
    model.eval()
    scores = [s for i in range(0, len(held), 64) for s in margins(model, ref, tok, cfg, ids3, held[i: i + 64])]
    flat = [x for s in scores for x in s]
    mc = [float(y > 0) for r in held for y in r["labels"]]
    gold = [y for r in held for y in gold_labels(r["steps"])]
    good, bad = corruption_pairs(held)
    a = [s[1] for s in margins(model, ref, tok, cfg, ids3, good)]
    b = [s[1] for s in margins(model, ref, tok, cfg, ids3, bad)]
    model.train()
    return {"auc_mc": prm_train.auc(flat, mc), "auc_gold": prm_train.auc(flat, gold),
            "corruption_lower": sum(y < x for x, y in zip(a, b)) / max(1, len(a))}


@torch.no_grad()
def policy_corruption(policy, tok, held):
    """The corruption test scored by the policy itself: the minimum log-probability of step 2's
    tokens, in the policy's own format (prompt, steps joined by the blank line, no tags)."""
    def score(r):
        head = common.build_prompt(tok, r["question"]) + r["steps"][0] + "\n\n"
        n = len(tok.encode(head, add_special_tokens=False))
        ids = tok.encode(head + r["steps"][1], add_special_tokens=False)
        logp = torch.log_softmax(policy(torch.tensor([ids])).logits[0, :-1].float(), -1)
        return logp.gather(1, torch.tensor(ids[1:])[:, None])[n - 1:, 0].min().item()
    good, bad = corruption_pairs(held)
    return sum(score(y) < score(x) for x, y in zip(good, bad)) / max(1, len(good))


def first_error(examples):
    """Each (ids, tag positions, targets) cut after its first negative target."""
    cut = [next((k + 1 for k, y in enumerate(t) if y < 0.5), len(t)) for _, _, t in examples]
    return [(i, p[:c], t[:c]) for (i, p, t), c in zip(examples, cut)]


def fresh_batches(train, n, seed, build):
    """Endless batches of n: a correct solution either clean (all 1) or with one random work step's
    result off by +-1 / +-10 and cut after it (1 ... 1, 0)."""
    rng = random.Random(seed)
    good = [r for r in train if r["correct"] == 1 and len(r["steps"]) > 2]
    while True:
        out = []
        for _ in range(n):
            r = rng.choice(good)
            work = [k for k in range(1, len(r["steps"])) if EQ.match(r["steps"][k - 1])]
            if rng.random() < 0.5 or not work:
                out.append(dict(r, labels=[1.0] * len(r["steps"])))
                continue
            k = rng.choice(work)
            bad = verifier.corrupt(r["steps"], k, rng.choice([1, -1, 10, -10]))
            out.append(dict(r, steps=bad[:k], labels=[1.0] * (k - 1) + [0.0]))
        yield build(out)


def dense_loss(margin, batch, ids, tpos, tgt, tmask, answer_ids):
    """Mean BCE of every response token's margin (B, L) against the target of the step it belongs
    to: tokens after tag k-1 up to and including tag k are step k's."""
    L = ids.shape[1]
    ar = torch.arange(L)
    step_of = (ar[None, :, None] > tpos[:, None, :]).sum(-1).clamp(max=tpos.shape[1] - 1)  # (B, L)
    start = torch.tensor([response_start(e[0], answer_ids) for e in batch])
    last = tpos.gather(1, tmask.sum(1, keepdim=True) - 1)
    mask = (ar[None] >= start[:, None]) & (ar[None] <= last)
    loss = F.binary_cross_entropy_with_logits(margin, tgt.gather(1, step_of), reduction="none")
    return (loss * mask).sum() / mask.sum()


def response_start(ids, answer_ids):
    """Index of the first response token: just after the first "A: " of the prompt."""
    n = len(answer_ids)
    return next((i + n for i in range(len(ids) - n + 1) if ids[i: i + n] == answer_ids), 0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", required=True, help="labeled JSONL (prm_train.py stage 1)")
    p.add_argument("--init", default="models/arith-policy")
    p.add_argument("--mode", default="mc", choices=("mc", "gold", "mc+lm", "first", "dense", "fresh", "implicit"))
    p.add_argument("--beta", type=float, default=0.5, help="--mode implicit: prm_train.py --beta")
    p.add_argument("--lm-coef", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    recs = [json.loads(line) for line in open(a.labels)]
    train = [r for r in recs if not prm_train.is_eval_question(r["question"], 0.125)]
    held = [r for r in recs if prm_train.is_eval_question(r["question"], 0.125)][:600]
    if a.mode == "gold":
        train = [dict(r, labels=gold_labels(r["steps"])) for r in train]
    implicit = a.mode == "implicit"
    cfg = prm_train.Config(init=a.init, extra_layers=0 if implicit else 2, form="implicit" if implicit else "tag",
                           beta=a.beta)
    model, tok, ids3 = prm_train.build_model(cfg, "cpu")
    tag_id, pos_id, neg_id = ids3
    ref = prm_train.build_model(prm_train.Config(init=a.init), "cpu")[0].eval() if implicit else None
    examples, _ = prm_train.build_examples(tok, train, "prm", tag_id, False, cfg)
    if a.mode == "first":
        examples = first_error(examples)
    stream = fresh_batches(train, a.batch_size, a.seed, lambda rs: prm_train.build_examples(
        tok, rs, "prm", tag_id, False, cfg)[0]) if a.mode == "fresh" else None
    answer_ids = tok.encode("A: ", add_special_tokens=False)  # where an arith response begins
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=a.weight_decay)
    gen = torch.Generator().manual_seed(a.seed)
    head = model.get_output_embeddings()
    policy = ref if implicit else prm_train.build_model(prm_train.Config(init=a.init), "cpu")[0].eval()
    print(json.dumps({"step": 0, "policy_logprob_corruption_lower": policy_corruption(policy, tok, held),
                      **evaluate(model, ref, tok, cfg, ids3, held)}), flush=True)
    del policy
    t0 = time.time()
    for step in range(1, a.steps + 1):
        if stream is None:
            batch = [examples[i] for i in torch.randint(len(examples), (a.batch_size,), generator=gen).tolist()]
        else:
            batch = next(stream)
        if implicit:
            m, (ids, attn, tpos, tgt, tmask) = forward(model, ref, tok, cfg, ids3, batch)
            loss = prm_train.bce_sum(m, tgt, tmask) / tmask.sum()
        else:  # the tag form, by hand: the hidden states are shared with the auxiliary losses below
            ids, attn, tpos, tgt, tmask = prm_train.collate(batch, tok.pad_token_id)
            hidden = model.base_model(input_ids=ids, attention_mask=attn,
                                      position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
            h = hidden.gather(1, tpos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, K, H)
            logit = h @ head.weight[[pos_id, neg_id]].T
            loss = prm_train.bce_sum(logit[..., 0] - logit[..., 1], tgt, tmask) / tmask.sum()
        total = loss
        if a.mode == "mc+lm":  # next-token loss on every real token, the tags neither read nor predicted
            target = ids[:, 1:]
            keep = attn[:, 1:].bool() & (target != tag_id) & (ids[:, :-1] != tag_id)
            ce = F.cross_entropy(head(hidden[:, :-1]).flatten(0, 1), target.flatten(), reduction="none")
            total = loss + a.lm_coef * (ce * keep.flatten()).sum() / keep.sum()
        if a.mode == "dense":
            every = hidden @ head.weight[[pos_id, neg_id]].T
            total = loss + dense_loss(every[..., 0] - every[..., 1], batch, ids, tpos, tgt, tmask, answer_ids)
        lr = a.lr * min(1.0, step / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - 1) / a.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % a.eval_every == 0 or step == a.steps:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "s": round(time.time() - t0),
                              **evaluate(model, ref, tok, cfg, ids3, held)}), flush=True)


if __name__ == "__main__":
    main()
