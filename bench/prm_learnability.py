"""
Can the arith PRM learn to check arithmetic at all? A short training probe (README figures for the
weak v2 verifier; an experiment, not a timed test).

prm_train.py's shipped recipe ends with a PRM that scores a corrupted step as high as the correct
one. Two explanations: the Math-Shepherd labels are too noisy (a wrong step is labeled "+" when one
of its 8 completions slips back onto the gold), or the model does not find a comparison circuit
from one bit per step. This script trains the shipped recipe's model (--init plus 2 identity layers,
all layers, AdamW, warmup + cosine) for --steps steps on the labeled file, in one of three ways:

  mc      the Math-Shepherd hard labels (label > 0), as prm_train.py does
  gold    exact labels from the arithmetic: step k is 1 while every "a op b = c" up to k is right
          (gold_labels), the noise-free target
  mc+lm   the mc labels plus an auxiliary next-token loss (weight --lm-coef) on the same inputs,
          so the policy's own digit predictions stay sharp while the head learns

and reports, every --eval-every steps, on up to 600 held-out solutions (prm_train's question hash):
step AUC against the MC labels and against the gold labels, and the step-2 corruption rate
(scripts/verifier.py's test: correct solutions, the result of step 2 plus 1; the fraction of
pairs where the corrupted step scores lower; 0.5 = blind).

Usage (one thread, about 0.6 s a step at 32 solutions; the labeled file of scripts/build_arith.sh):
    OMP_NUM_THREADS=1 python bench/prm_learnability.py --labels out/arith-labels.jsonl --mode gold
    OMP_NUM_THREADS=1 python bench/prm_learnability.py --labels out/arith-labels.jsonl --mode mc+lm

Measured (README, "Reward models as verifiers"; labels of the v2 build, evaluated at steps 200 and
400 of the 800-step schedule): neither gold labels nor the LM loss make the PRM check arithmetic
(at step 400: corruption 0.59-0.63, AUC against the exact labels 0.729-0.737 for all three).
"""

import argparse
import json
import math
import os
import re
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
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


def margins(model, tok, cfg, ids3, recs):
    """(list of per-step margins) for records, the scorer's own input text."""
    tag_id, pos_id, neg_id = ids3
    ex, _ = prm_train.build_examples(tok, recs, "prm", tag_id, False, cfg)
    ids, attn, tpos, _, _ = prm_train.collate(ex, tok.pad_token_id)
    m = rewards.tag_margins(model, None, ids, attn, tpos, (pos_id, neg_id))
    return [m[j, : len(e[2])].tolist() for j, e in enumerate(ex)]


@torch.no_grad()
def evaluate(model, tok, cfg, ids3, held):
    model.eval()
    scores = [s for i in range(0, len(held), 64) for s in margins(model, tok, cfg, ids3, held[i: i + 64])]
    flat = [x for s in scores for x in s]
    mc = [float(y > 0) for r in held for y in r["labels"]]
    gold = [y for r in held for y in gold_labels(r["steps"])]
    good = [r for r in held if r["correct"] == 1 and len(r["steps"]) > 2 and EQ.match(r["steps"][1])][:150]
    bad = [dict(r, steps=verifier.corrupt(r["steps"], 2, 1)) for r in good]
    a = [s[1] for s in margins(model, tok, cfg, ids3, good)]
    b = [s[1] for s in margins(model, tok, cfg, ids3, bad)]
    model.train()
    return {"auc_mc": prm_train.auc(flat, mc), "auc_gold": prm_train.auc(flat, gold),
            "corruption_lower": sum(y < x for x, y in zip(a, b)) / max(1, len(a))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", required=True, help="labeled JSONL (prm_train.py stage 1)")
    p.add_argument("--init", default="models/arith-policy")
    p.add_argument("--mode", default="mc", choices=("mc", "gold", "mc+lm"))
    p.add_argument("--lm-coef", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    recs = [json.loads(line) for line in open(a.labels)]
    train = [r for r in recs if not prm_train.is_eval_question(r["question"], 0.125)]
    held = [r for r in recs if prm_train.is_eval_question(r["question"], 0.125)][:600]
    if a.mode == "gold":
        train = [dict(r, labels=gold_labels(r["steps"])) for r in train]
    cfg = prm_train.Config(init=a.init, extra_layers=2)
    model, tok, ids3 = prm_train.build_model(cfg, "cpu")
    tag_id, pos_id, neg_id = ids3
    examples, _ = prm_train.build_examples(tok, train, "prm", tag_id, False, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(a.seed)
    head = model.get_output_embeddings()
    print(json.dumps({"step": 0, **evaluate(model, tok, cfg, ids3, held)}), flush=True)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        batch = [examples[i] for i in torch.randint(len(examples), (a.batch_size,), generator=gen).tolist()]
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
        lr = a.lr * min(1.0, step / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - 1) / a.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % a.eval_every == 0 or step == a.steps:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "s": round(time.time() - t0),
                              **evaluate(model, tok, cfg, ids3, held)}), flush=True)


if __name__ == "__main__":
    main()
