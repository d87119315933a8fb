r"""
PPO for math reasoning with the rewards of Gao et al. 2024 (arXiv 2410.15115): the success reward,
plus an optional learned term from an outcome (ORM) or process (PRM) reward model, with the Clip and
Delta fixes for PRM reward hacking. Formulas: docs/METHOD.md §1-§3; they live in rewards.py.

The per-token reward of a response (METHOD §1; k1 KL inside the reward, no KL term in the loss):
    r_t = Correct(q, s) [last token] + alpha * learned term [token ending each step] - beta * (logp_t - ref_logp_t)

Algorithm (the numbers match comments in the code)
  1. Rollout: `prompts_per_step` training questions (a seeded permutation per epoch; each rank its
     slice), prompts from common.build_prompt, `samples_per_prompt` samples each at `temperature`
     until EOS or `max_new_tokens`, with common.sample, our KV-cached loop over left-padded prompts
     (finished rows leave the batch). Old log-probs, reference log-probs and values: one forward
     pass each, log-probs in fp32.
  2. Rewards: Correct from rewards.success_rewards, 0 for a truncated response (--truncation below).
     The learned term (--reward orm | prm | clip | delta | clip_delta | prm_normed | prm_lenpen | min,
     with --eta, --delta-last, --length-penalty, --min-temperature; formulas in METHOD §2) from
     rewards.load_reward_model(...).score_tokens: P(correct) per step (PRM) or per response (ORM),
     transformed by rewards.transform_step_rewards, times alpha, placed by rewards.place_rewards on
     the token holding each step's last character (ORM and Correct: the last token). Then the KL
     penalty.
  3. Advantages: a separate critic (AutoModelForTokenClassification with 1 label, initialised from
     the policy with a zero head, or --critic). GAE(gamma, lam) with V = 0 after the last token;
     returns = advantages + values; advantages whitened over the global batch.
  4. PPO: `ppo_epochs` passes of `minibatches` optimizer steps (all samples of a question in the
     same minibatch); clipped policy loss and clipped value loss, summed over tokens and divided by
     the valid-token count of the global minibatch; grad-norm clipping. The first minibatch's
     ratio must be 1 (logged; a warning if not).
  5. Log one line per step (metrics.jsonl, optional wandb); greedy accuracy on the first
     `eval_limit` problems of the eval split (valid where the dataset has one) at step 0, every
     `eval_every` steps and at the end; decoded samples with their step scores every
     `sample_every` steps; a checkpoint (HF policy + critic, optimizers, RNG, meta.json with
     checksums) every `save_every` steps and at the end, after the weights were checked finite.
     --resume continues from it: on CPU, bit-identical to a run that was never stopped.
     One run per out_dir (a lock); a fresh run refuses a used out_dir unless --overwrite
     (README "Failure modes": crashes, a full disk, corrupt files, resume flags).

Where to change what: the algorithm is the section between the ALGORITHM and PLUMBING banners
(score: the rewards; compute_advantages; ppo_token_losses: the loss). Everything after the PLUMBING
banner samples, batches, shards, logs and saves, and changes no number.

Decisions (not in the paper)
  - --truncation zero-success (default): a response cut at max_new_tokens ends there with
    Correct = 0; its learned terms and KL still count (padding a solution into the limit loses the
    success reward). --truncation no-score (ReaLHF, the paper's authors' framework): no Correct and
    no learned term for it, KL kept (rewards.apply_truncation). ReaLHF also bootstraps the value at
    the cut; we do not (V = 0 after the last token under both). Logged as rollout/truncated_fraction.
  - The critic starts from the policy's weights. lam defaults to 1.0: the sparse end-of-response
    reward reaches every token (gamma = 1 keeps Delta's telescoping exact). Learning rates decay
    linearly to 0 (cleanrl's anneal_lr), so the final policy is not the noisiest point of the run.
  - Arith defaults (tuned on the arith world only): 64 questions x 1 sample per step (question
    diversity generalised better than 16 x 4 or 4 x 16 in our runs), lr 3e-5 (1e-4 degraded the
    greedy accuracy), 200 steps; max_new_tokens 160 leaves room to pad a ~70-token solution.
  - --fsdp shards the policy, critic and the frozen reference (forward only); the reward model is
    replicated. Generation under FSDP gathers the policy once per rollout and keeps it whole until
    the rollout ends: one all-gather instead of one per layer per token, at the cost of the
    unsharded bf16 policy in memory during generation (15 GB for a 7B).
  - Every random draw (data order, sampling noise, minibatch split) comes from a generator seeded by
    (seed, step), and a sample's noise is indexed by its global row: the data order, each row's
    noise, the minibatch split and the loss normalisation do not depend on the number of
    processes, and resuming needs only the step. The floating-point results do (summation order),
    as they do on the thread count: runs are not bit-identical across either (README, Stage 4).

Commands
  CPU, the arith world with the shipped checkpoints (6.5 min on 2 idle cores):
      python ppo.py                      # clip_delta
      python ppo.py --reward success     # the sparse success reward alone
      python ppo.py --reward prm         # the raw PRM reward (README: what it does to length)
      torchrun --nproc_per_node=2 ppo.py --fsdp --steps 4 --out-dir out/ppo-fsdp
  One GPU, Qwen2.5-Math-1.5B-Instruct on MATH with a Math-Shepherd PRM:
      python ppo.py --policy Qwen/Qwen2.5-Math-1.5B-Instruct --dataset math \
          --prm peiyi9979/math-shepherd-mistral-7b-prm --step-tag "ки" --max-new-tokens 1024 \
          --prompts-per-step 64 --samples-per-prompt 4 --minibatches 4 --micro-batch-size 2 \
          --lr 1e-6 --critic-lr 5e-6 --beta 0.05 --grad-ckpt --steps 300 --eval-limit 500 \
          --eval-every 25 --save-every 25 --grade-workers 8 --out-dir out/ppo-1.5b
      (1.5B policy + critic with AdamW ~50 GB, the 7B PRM 15 GB: tight on 80 GB; else 2 GPUs + --fsdp)
  8 GPUs, Qwen2.5-Math-7B-Instruct: the same flags with --micro-batch-size 4 and
      torchrun --nproc_per_node=8 ppo.py --fsdp --policy Qwen/Qwen2.5-Math-7B-Instruct --prompts-per-step 128 ...

Expected (README, "The arith world v3"): --reward success raises the greedy and the sampling
accuracy of the shipped start (valid 0.470 -> 0.524 greedy, 0.221 -> 0.312 sampling at seed 0, one
thread; 3 seeds in the README: +6.2 / +9.4 points); --reward prm pads the answers with restatements
(0.470 -> 0.524 valid greedy at 91 tokens against 71); --reward clip_delta keeps the length (0.534).
The greedy evals during training use the validation split (--eval-split auto); report the test
split once, with evaluate.py.

Shapes: B rows (responses) on this rank, P prompt tokens (left-padded), T response tokens
(right-padded), L = P + T, K steps, V vocabulary.
"""

import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
import warnings
from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import common
import rewards
from common import field, print0

REWARD_MODES = ("success", "orm") + rewards.LEARNED_MODES


@dataclasses.dataclass
class Config:
    # models and data
    policy: str = field("models/arith-policy", "starting policy (also the reference): dir or hub id")
    critic: str = field("", "critic init: '' = the policy's weights with a zero value head, else a dir")
    prm: str = field("models/arith-prm", "PRM dir or hub id (every mode but success and orm)")
    orm: str = field("models/arith-orm", "ORM dir or hub id (mode orm)")
    step_tag: str = field("", "reward-model step tag ('' = saved with our checkpoints; 'ки' Math-Shepherd)")
    dataset: str = field("arith", "training questions: arith | gsm8k | math | a .jsonl path (train split)")
    eval_dataset: str = field("", "greedy-eval set ('' = --dataset)")
    eval_split: str = field("auto", "split of the greedy evals: auto = valid where the dataset has one "
                            "(arith), else test; report the test split once, with evaluate.py")
    eval_limit: int = field(500, "greedy eval on the first N problems of the eval split (0 = none)")
    skip_bad: bool = field(False, "skip and count bad data rows (no question or gold, an ungradable gold, an "
                           "overlong question or prompt) instead of stopping at the first with its file:line")
    prompt: str = field("auto", "prompt format (common.build_prompt): auto | chat | cot | plain",
                        choices=common.PROMPTS)
    # reward (METHOD §2)
    reward: str = field("clip_delta", "reward mode (METHOD §2): success | orm | prm (x_k) | clip "
                        "(min(x_k - eta, 0)) | delta (x_k - x_{k+1}, Gao et al.) | clip_delta (delta of clip) | "
                        "prm_normed (x_k / K, the paper's PR-Normed) | prm_lenpen (x_k - length_penalty) | "
                        "min (return-to-go = min_{j>=k} x_j, PURE arXiv 2504.15275)", choices=REWARD_MODES)
    alpha: float = field(1.0, "weight of the learned reward term")
    eta: float = field(0.5, "Clip threshold: min(r - eta, 0)")
    delta_last: str = field("drop", "delta / clip_delta, last step: drop (the paper: d_K = 0) | keep (d_K = x_K)",
                            choices=rewards.DELTA_LAST)
    min_temperature: float = field(0.0, "min: 0 = strict min of the future step scores; T > 0 = softmin "
                                   "weights softmax(-x_j / T)")
    length_penalty: float = field(0.5, "prm_lenpen: subtracted from every step's score")
    truncation: str = field("zero-success", "a response without EOS: zero-success (Correct = 0, learned terms "
                            "kept) | no-score (ReaLHF: no Correct, no learned terms); KL kept in both",
                            choices=rewards.TRUNCATION_POLICIES)
    beta: float = field(0.02, "KL penalty per token (k1, inside the reward)")
    # rollout
    steps: int = field(200, "PPO steps (rollout + update)")
    prompts_per_step: int = field(64, "questions per step, global (all ranks)")
    samples_per_prompt: int = field(1, "samples per question")
    temperature: float = field(1.0, "sampling temperature, > 0 (PPO learns from samples; log-probs use the same one)")
    max_new_tokens: int = field(160, "response length limit in tokens; reaching it = truncation")
    # PPO
    ppo_epochs: int = field(2, "passes over the rollout batch")
    minibatches: int = field(2, "optimizer steps per epoch (global minibatch = batch / minibatches)")
    micro_batch_size: int = field(0, "rows per forward/backward per rank (0 = a whole minibatch)")
    lr: float = field(3e-5, "policy learning rate (AdamW)")
    critic_lr: float = field(1e-3, "critic learning rate")
    anneal_lr: bool = field(True, "decay both learning rates linearly to 0 at the last step (cleanrl)")
    gamma: float = field(1.0, "discount (1.0 keeps Delta's telescoping exact)")
    lam: float = field(1.0, "GAE lambda")
    cliprange: float = field(0.2, "policy ratio clip")
    cliprange_value: float = field(0.2, "value clip around the rollout values")
    max_grad_norm: float = field(1.0, "grad-norm clip per model (0 = off)")
    # runtime
    seed: int = field(0, "seed of data order, sampling and minibatches")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    fsdp: bool = field(False, "FSDP2 fully_shard per decoder layer (policy, critic, reference); needs torchrun")
    grad_ckpt: bool = field(False, "gradient checkpointing in policy and critic")
    grade_workers: int = field(1, "grading processes (1 = serial; MATH: the CPU count)")
    out_dir: str = field("out/ppo", "metrics.jsonl and ckpt/ go here")
    resume: bool = field(False, "continue from out_dir/ckpt with its saved config; only flags in RESUME_SAFE "
                         "(--steps, --eval-every, --save-every, --device, ...) may differ from the saved values")
    overwrite: bool = field(False, "a fresh run in an out_dir holding a previous run (metrics.jsonl, ckpt/) "
                            "deletes it first; without this (or --resume) such a run refuses to start")
    eval_every: int = field(50, "steps between greedy evals (0 = start and end only)")
    save_every: int = field(50, "steps between checkpoints (0 = end only)")
    sample_every: int = field(50, "steps between printed samples (0 = never)")
    wandb: str = field("", "wandb project ('' = off)")


@dataclasses.dataclass
class Runtime(common.Runtime):
    """common.Runtime plus PPO's per-rank sizes, derived once in setup() from the global config."""
    n_rows: int  # responses per step, all ranks: prompts_per_step x samples_per_prompt
    prompts: int  # questions per rank
    B: int  # responses per rank
    micro: int  # rows per forward / backward on this rank


# =============================================================================
# ALGORITHM: what a fork changes (METHOD §1-§3). The rewards (kl_rewards, score: step 2), the
# advantages (gae, masked_whiten, compute_advantages: step 3) and the loss (ppo_token_losses:
# step 4). The math helpers are pure and unit-tested against naive loops in test_ppo.py.
# =============================================================================

def all_sum(t):
    """Sum over ranks (a copy; identity without torch.distributed)."""
    t = t.clone()
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x, mask, eps=1e-8, distributed=False):
    """(x - mean) / std over the valid entries (of all ranks when `distributed`), 0 elsewhere."""
    m = mask.float()
    s = torch.stack([(x * m).sum(), m.sum()])
    s = all_sum(s) if distributed else s
    mean = s[0] / s[1].clamp(min=1)
    ss = ((x - mean) ** 2 * m).sum()
    ss = all_sum(ss) if distributed else ss
    var = ss / (s[1] - 1).clamp(min=1)  # unbiased, like torch.var
    return (x - mean) * torch.rsqrt(var + eps) * m


def kl_rewards(score_rewards, logp, ref_logp, mask, beta):
    """Score rewards minus beta * (logp - ref_logp) on every response token (EOS included), 0 on
    padding. Returns (total (B, T), kl (B, T))."""
    kl = (logp - ref_logp) * mask
    return (score_rewards - beta * kl) * mask, kl


def score(rm, tok, batch, ro, cfg, step):
    """2. Success on the last token and the learned term on step ends -> (B, T) score rewards."""
    t0 = time.time()
    resp_ids, texts = decode(tok, ro.resp, ro.lengths)
    statuses = []  # the grader's "ok" / "timeout" / "error" per row: counted in the step metrics
    try:  # NOTE: success_rewards never grades an unfinished row (0); --truncation decides the rest below
        success = rewards.success_rewards(texts, [p["answer"] for p in batch], ro.finished.tolist(),
                                          cfg.grade_workers, statuses=statuses)
    except ValueError as e:  # a gold answer the grader cannot parse (load_data checks them all first)
        raise common.RunError(f"step {step}, dataset {cfg.dataset!r}: {e}") from None
    success = torch.tensor(success, device=ro.mask.device)  # (B,)
    grading = {"timeouts": statuses.count("timeout"), "errors": statuses.count("error")}
    t1 = time.time()
    if rm is None:
        raw = torch.zeros(len(batch), 0, device=ro.mask.device)  # (B, K) with K = 0
        end_idx, kmask, values = raw.long(), raw.bool(), raw
    else:
        raw, end_idx, kmask = (x.to(ro.mask.device) for x in
                               rm.score_tokens([p["question"] for p in batch], tok, resp_ids))  # (B, K)
        values = raw if cfg.reward == "orm" else rewards.transform_step_rewards(
            raw, kmask, cfg.reward, cfg.eta, cfg.delta_last, cfg.min_temperature, cfg.length_penalty)
        values = cfg.alpha * values * kmask  # (B, K)
    success, values = rewards.apply_truncation(success, values, ro.finished, cfg.truncation)  # KL stays
    steps = [rewards.split_steps(x, rm.step_sep if rm else rewards.DEFAULT_STEP_SEP) for x in texts]
    return SimpleNamespace(texts=texts, steps=steps, success=success, raw=raw, kmask=kmask, values=values, grading=grading,
                           token=rewards.place_rewards(values, end_idx, kmask, success, ro.mask),  # (B, T)
                           perf={"perf/grade_s": t1 - t0, "perf/score_s": time.time() - t1})


def gae(rewards_, values, mask, gamma, lam):
    """GAE on right-padded rows, all (B, T); mask is a prefix of each row.

    delta_t = r_t + gamma * V_{t+1} - V_t with V = 0 after a row's last token,
    A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages, returns = A + V), 0 off the mask.
    """
    m = mask.float()
    adv = torch.zeros_like(rewards_)
    last = torch.zeros_like(rewards_[:, 0])  # (B,) A_{t+1}
    for t in reversed(range(rewards_.shape[1])):
        nxt = values[:, t + 1] * m[:, t + 1] if t + 1 < rewards_.shape[1] else torch.zeros_like(last)
        last = (rewards_[:, t] + gamma * nxt - values[:, t] + gamma * lam * last) * m[:, t]  # 0 past the end
        adv[:, t] = last
    return adv, (adv + values) * m


def compute_advantages(token_rewards, values, mask, gamma, lam):
    """3. GAE, then the advantages whitened over the global batch (all ranks). Returns (advantages,
    returns), both (B, T); the returns are not whitened (they are the critic's targets)."""
    adv, returns = gae(token_rewards, values, mask, gamma, lam)  # (B, T)
    return masked_whiten(adv, mask, distributed=dist.is_initialized()), returns


def ppo_token_losses(logp, old_logp, adv, values, old_values, returns, mask, cliprange, cliprange_value):
    """4. Per-token clipped policy loss, clipped value loss and diagnostics, all (B, T), 0 off the
    mask (the CleanRL formulation)."""
    m = mask.float()
    ratio = torch.exp(logp - old_logp)  # (B, T) pi / pi_old
    # policy: the clipped surrogate; the max of the two losses is the min of the two objectives
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * ratio.clamp(1 - cliprange, 1 + cliprange)
    pg_loss = torch.maximum(pg_loss1, pg_loss2)
    # value: squared error, clipped around the rollout's values
    v_loss_unclipped = (values - returns) ** 2
    v_clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    v_loss_clipped = (v_clipped - returns) ** 2
    v_loss = 0.5 * torch.maximum(v_loss_unclipped, v_loss_clipped)
    # NOTE: old + (v - old) != v in floats: "clipped > unclipped" alone would flip on rounding noise
    v_clipfrac = (v_loss_clipped > v_loss_unclipped) & ((values - old_values).abs() > cliprange_value)
    return {"pg": pg_loss * m, "vf": v_loss * m, "clip": (pg_loss2 > pg_loss1).float() * m,
            "vclip": v_clipfrac.float() * m, "ratio": ratio * m,
            "approx_kl": ((ratio - 1) - (logp - old_logp)) * m}  # k3 estimator of KL(pi_old || pi)


# =============================================================================
# PLUMBING: data order, sampling, log-probs, FSDP, the update loop, metrics, checkpoints, setup.
# It decides which rows go where and in which order; the objective is the section above (the
# update loop only sums the per-token losses over the global minibatch, step 4). NOTE: the file is
# ~1,100 lines, over the 700 of the size guide: the manual (docstring) and Config are ~180 of them,
# and the sampler, chunked log-probs, FSDP and crash-safe checkpoint/resume code (~300) stay here so
# that one stage reads top to bottom; the reusable file-safety pieces live in common.py §7.
# =============================================================================

def minibatch_ids(n_prompts, minibatches, samples, gen):
    """The minibatch of every global row. All samples of a prompt share a minibatch (the gradients
    of their shared prefix then cancel within one optimizer step); each aligned chunk of
    `minibatches` prompts is a random permutation of 0..M-1. NOTE: every rank holds whole chunks, so
    global minibatch m takes the same rows whatever the world size (a global shuffle would not)."""
    ids = torch.argsort(torch.rand(n_prompts // minibatches, minibatches, generator=gen), dim=1).flatten()
    return ids.repeat_interleave(samples)


def problem_indices(step, n, n_problems, seed):
    """The n problem ids of `step`: a seeded permutation per epoch, consumed in order, so the data
    position is a function of the step alone."""
    perms = {e: torch.randperm(n_problems, generator=torch.Generator().manual_seed(seed * 7919 + e))
             for e in range(step * n // n_problems, ((step + 1) * n - 1) // n_problems + 1)}
    return [int(perms[i // n_problems][i % n_problems]) for i in range(step * n, (step + 1) * n)]


def checkpoint_note(out_dir):
    """What is on disk when a run stops: the step of out_dir/ckpt, which holds finite weights (every
    save follows check_finite_weights), or that there is none yet."""
    ckpt = os.path.join(out_dir, "ckpt")
    try:
        with open(os.path.join(ckpt, "meta.json")) as f:
            return f"the checkpoint of step {json.load(f)['step']} in {ckpt} is left intact"
    except (OSError, ValueError, KeyError, TypeError):
        return f"no checkpoint in {ckpt} yet"


def check_finite(name, t, step, out_dir):
    """Stop, on every rank together, when t holds NaN or inf."""
    if all_sum((~torch.isfinite(t)).any().float().reshape(1)).item() > 0:
        raise common.RunError(f"step {step}: non-finite {name}; stopping ({checkpoint_note(out_dir)})")


def check_finite_weights(models, optims, step, cfg, rt):
    """After every optimizer step, on every rank together: stop when a parameter or an optimizer state
    of a trained model holds NaN or inf, before a save could write it over the good checkpoint
    (a --lr far too high gives NaN within a step or two). One fused isfinite pass per tensor and one
    host sync for all of them: cheap next to the step. Finite but absurd weights are the lr's
    business, not an error."""
    bad = {name: common.nonfinite_names(list(models[name].named_parameters()) +
                                        common.optimizer_tensors(optims[name])) for name in models}
    if all_sum(torch.tensor([float(len(b)) for b in bad.values()], device=rt.device)).sum().item() > 0:
        what = "; ".join(f"{name}: {', '.join(b[:3])}{' ...' if len(b) > 3 else ''}" for name, b in bad.items() if b)
        raise common.RunError(f"step {step}: NaN or inf in the weights after an optimizer step ({what or 'on another rank'};"
                              f" --lr {cfg.lr:g} / --critic-lr {cfg.critic_lr:g} too high?); stopping "
                              f"({checkpoint_note(cfg.out_dir)})")


def explained_variance(values, returns, mask):
    """1 - Var[returns - values] / Var[returns] over the valid tokens of all ranks (a diagnostic of
    the critic: 1 = it predicts the returns, 0 = no better than their mean, < 0 = worse). NaN when
    the returns are constant, as in CleanRL."""
    m = mask.float()
    err = (returns - values) * m  # (B, T)
    s = all_sum(torch.stack([m.sum(), (returns * m).sum(), err.sum()]))
    n = s[0].clamp(min=1)
    ss = all_sum(torch.stack([((returns - s[1] / n) ** 2 * m).sum(), ((err - s[2] / n) ** 2 * m).sum()]))
    return float("nan") if ss[0] == 0 else (1 - ss[1] / ss[0]).item()


# -----------------------------------------------------------------------------
# models: FSDP, sampling, log-probs, values

def shard(model, device, bf16):
    """FSDP2: fully_shard every decoder layer, then the root (which moves the shards to `device`)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for layer in model.base_model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    return fully_shard(model, mesh=mesh, mp_policy=mp)


@contextlib.contextmanager
def gathered(model):
    """Under FSDP, all-gather the whole model once and keep it until the block ends: the token loop
    then runs with no collective, so ranks may stop generating at different lengths."""
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def trim(ids, attn, P):
    """Drop columns that are padding in every row (left of the longest prompt, right of the longest
    response): (B, L) -> (B, P' + T'), and P'. Callers pad their (B, T') outputs back to T."""
    p, end = int(attn[:, :P].sum(1).max()), P + int(attn[:, P:].sum(1).max())
    return ids[:, P - p:end], attn[:, P - p:end], p


@contextlib.contextmanager
def head_inputs(model):
    """Inside the block, the model's forward skips its output head (lm_head) and appends the head's
    input, the final hidden states, to the yielded list. NOTE: a hook rather than a call of the base
    model: under FSDP2 only the root's forward gathers the root's weights (embeddings, norm, head)."""
    hidden = []

    def keep_and_skip(head, args):
        hidden.append(args[0])
        return (args[0][..., :0, :],) + args[1:]  # (B, 0, H): the head computes no logits

    handle = model.get_output_embeddings().register_forward_pre_hook(keep_and_skip)
    try:
        yield hidden
    finally:
        handle.remove()


LOGP_CHUNK = 256  # tokens per (chunk, V) fp32 block in ChunkedLogprobs: 156 MB at V = 151,936


def token_logprobs(z, tokens, entropy):
    """From fp32 logits z (c, V), already divided by T: log-probs of `tokens` (c,), lse = log sum_j
    exp z_j (c,) and, if asked, entropies (c,; else 0). log p_j = z_j - lse; H = lse - E_p[z]."""
    lse = z.logsumexp(-1)  # (c,)
    logp = z.gather(-1, tokens[:, None]).squeeze(-1) - lse  # (c,)
    if not entropy:
        return logp, lse, torch.zeros_like(logp)
    p = z.sub(lse[:, None]).exp_()  # (c, V) softmax(z)
    return logp, lse, lse - p.mul_(z).sum(-1)


class ChunkedLogprobs(torch.autograd.Function):
    """Fused output head + log-softmax: log-probs of `tokens` (n,) and entropies (n,; 0 unless
    `entropy`) under p = softmax(z), z = (h @ W[:vocab_size].T + b) / T, the sampling distribution,
    in fp32; h (n, H), head weight W (V, H), bias b (V,) or None. vocab_size: len(tokenizer); the
    embedding's padding rows past it are left out, as the sampler never emits them.

    Both passes make z one chunk of rows at a time and drop it; autograd keeps only h, W, b, tokens
    and two (n,) vectors, lse and H. The backward recomputes z and p, then, as d logp/dz_j =
    onehot_j - p_j and dH/dz_j = -p_j (z_j - E_p[z]) with E_p[z] = lse - H:
        dz = g_logp (onehot - p) - g_H p (z - lse + H),  dlogits = dz / T,
        grad_h = dlogits @ W,  grad_W = dlogits.T @ h,  grad_b = dlogits.sum(0).
    Matmuls run in the autocast dtype when autocast is on (as the head would), else in W's dtype;
    the softmax in fp32 (fp64 for a float64 head, as in the gradient test); in place, at most two
    (chunk, V) fp32 buffers live at once.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, tokens, chunk, temperature=1.0, entropy=False, vocab_size=None):
        dev = h.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
        acc = torch.promote_types(dt, torch.float32)  # the softmax's dtype
        logp, lse, ent = (torch.empty(len(h), dtype=acc, device=h.device) for _ in range(3))  # (n,)
        with torch.autocast(dev, enabled=False):
            w, b = weight[:vocab_size].to(dt), None if bias is None else bias[:vocab_size].to(dt)  # (V, H), (V,)
            for i in range(0, len(h), chunk):
                z = F.linear(h[i:i + chunk].to(dt), w, b).to(acc).div_(temperature)  # (c, V)
                logp[i:i + chunk], lse[i:i + chunk], ent[i:i + chunk] = token_logprobs(z, tokens[i:i + chunk], entropy)
        ctx.save_for_backward(h, weight, bias, tokens, lse, ent)
        ctx.args = chunk, temperature, entropy, vocab_size, dt, acc
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        return logp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp, g_ent):
        h, weight, bias, tokens, lse, ent = ctx.saved_tensors
        chunk, temperature, entropy, vocab_size, dt, acc = ctx.args
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if g_logp is None and (g_ent is None or not entropy) or not (need_h or need_w or need_b):
            return (None,) * 8
        a = torch.zeros_like(lse) if g_logp is None else g_logp / temperature  # (n,) g_logp / T
        bt = None if g_ent is None or not entropy else g_ent / temperature  # (n,) g_H / T
        grad_h = torch.empty_like(h) if need_h else None  # (n, H)
        grad_w = torch.zeros_like(weight) if need_w else None  # (V_rows, H); padding rows stay 0
        grad_b = torch.zeros_like(bias) if need_b else None
        with torch.autocast(h.device.type, enabled=False):
            w, b = weight[:vocab_size].to(dt), None if bias is None else bias[:vocab_size].to(dt)
            V = len(w)
            for i in range(0, len(h), chunk):
                s = slice(i, i + chunk)
                hc = h[s].to(dt)  # (c, H)
                z = F.linear(hc, w, b).to(acc).div_(temperature)  # (c, V), as in the forward
                p = z.sub(lse[s, None]).exp_()  # (c, V) softmax
                if bt is None:  # dz / T = a onehot - a p
                    p.mul_(-a[s, None])
                else:  # dz / T = a onehot - p (a + bt (z - lse + H)): z becomes -(a + bt (z - lse + H))
                    torch.addcmul((bt[s] * (lse[s] - ent[s]) - a[s])[:, None], z, -bt[s, None], out=z)
                    p.mul_(z)
                del z
                p.scatter_add_(-1, tokens[s, None], a[s, None])  # + a onehot: p is now dlogits (c, V)
                dl = p.to(dt)
                if need_h:
                    grad_h[s] = dl @ w  # (c, H)
                if need_w and grad_w.dtype == dt:
                    grad_w[:V].addmm_(dl.T, hc)  # (V, H) += (V, c) @ (c, H), in place
                elif need_w:  # autocast: a (V, H) product in dt per chunk, summed in W's dtype
                    grad_w[:V] += dl.T @ hc
                if need_b:
                    grad_b[:V] += dl.sum(0)
                del p, dl
        return grad_h, grad_w, grad_b, None, None, None, None, None


def policy_logprobs(model, ids, attn, P, temperature, entropy=False, vocab_size=None):
    """fp32 log-probs (B, T) of the response tokens ids[:, P:] at `temperature` (and their
    entropies (B, T)); 0 where attn is 0. vocab_size: len(tokenizer), as in `sample`: the
    distribution is the sampler's, over the real vocabulary only.

    NOTE: memory. Full-vocabulary fp32 logits and log-softmax for the whole batch would cost about
    five (B, T, V) fp32 tensors in forward + backward (6 GB at V = 151,936, B x T = 4 x 512). We keep
    the final hidden states (n, H) of the n response tokens and run the head and the softmax on
    LOGP_CHUNK tokens at a time in ChunkedLogprobs, whose backward recomputes each chunk's logits and
    softmax itself, so no (chunk, V) tensor outlives its chunk (bench/bench_logprobs.py).
    """
    from torch.distributed.fsdp import FSDPModule

    B, T = ids.shape[0], ids.shape[1] - P
    ids, attn, P = trim(ids, attn, P)
    t = ids.shape[1] - P
    with head_inputs(model) as hidden:
        model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
              logits_to_keep=t + 1)
    keep = attn[:, P:].bool()  # (B, t) response tokens
    h, tokens = hidden[0][:, :-1][keep], ids[:, P:][keep]  # (n, H) predicts (n,)
    fsdp = isinstance(model, FSDPModule)
    if fsdp:  # NOTE: the root may have resharded after its forward; the head runs after it, and again
        model.unshard()  # in the backward, whose final callback reduce-scatters its gradient and reshards
    head = model.get_output_embeddings()  # under FSDP2, now holding the unsharded weight
    logp, ent = ChunkedLogprobs.apply(h, head.weight, head.bias, tokens, LOGP_CHUNK,  # (n,) each
                                      temperature=max(temperature, 1e-6), entropy=entropy,
                                      vocab_size=vocab_size)
    if fsdp and not torch.is_grad_enabled():  # no backward will reshard it
        model.reshard()

    def per_row(x):  # (n,) -> (B, T), 0 off the response tokens
        return F.pad(torch.zeros(B, t, device=h.device).masked_scatter(keep, x), (0, T - t))

    return (per_row(logp), per_row(ent)) if entropy else per_row(logp)


def critic_values(critic, ids, attn, P):
    """fp32 V(prompt + response[:t]) for every response token t, (B, T)."""
    T = ids.shape[1] - P
    ids, attn, P = trim(ids, attn, P)
    v = critic(input_ids=ids, attention_mask=attn,
               position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits[:, P - 1:-1, 0].float()
    return F.pad(v, (0, T - v.shape[1]))


@torch.no_grad()
def batched(fn, n, micro):
    """torch.cat of fn(rows) over row slices of `micro`."""
    return torch.cat([fn(slice(i, i + micro)) for i in range(0, n, micro)])


def encode(tok, questions, device, prompt="auto"):
    enc = tok([common.build_prompt(tok, q, prompt) for q in questions], return_tensors="pt", padding=True,
              add_special_tokens=False)  # the chat template already holds any special tokens
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def decode(tok, responses, lengths):
    ids = [r[:n].tolist() for r, n in zip(responses, lengths.tolist())]
    return ids, [tok.decode(x, skip_special_tokens=True) for x in ids]


# -----------------------------------------------------------------------------
# stages

def step_batch(problems, step, cfg, rt):
    """1. This rank's slice of the step's questions, each repeated samples_per_prompt times."""
    idx = problem_indices(step - 1, cfg.prompts_per_step, len(problems), cfg.seed)
    idx = idx[rt.rank * rt.prompts:(rt.rank + 1) * rt.prompts]
    return [problems[i] for i in idx for _ in range(cfg.samples_per_prompt)]


def rollout(policy, ref, critic, tok, eos_ids, questions, cfg, rt, step):
    """1. Sample this rank's rows and recompute old / reference log-probs and values."""
    prompt_ids, prompt_mask = encode(tok, questions, rt.device, cfg.prompt)  # (B, P)
    gen = torch.Generator(device=rt.device).manual_seed(cfg.seed * 1_000_003 + step)
    rows = torch.arange(rt.B, device=rt.device) + rt.rank * rt.B  # global row indices
    policy.eval(), critic.eval()
    t0 = time.time()
    with gathered(policy), rt.amp:
        resp, lengths, finished = common.sample(policy, prompt_ids, prompt_mask, cfg.max_new_tokens, cfg.temperature,
                                                eos_ids, tok.pad_token_id, gen, rows, rt.n_rows, len(tok))  # (B, T)
    t1 = time.time()
    T, P = resp.shape[1], prompt_ids.shape[1]
    mask = torch.arange(T, device=rt.device)[None] < lengths[:, None]  # (B, T) response_mask, EOS included
    ids, attn = torch.cat([prompt_ids, resp], 1), torch.cat([prompt_mask, mask.long()], 1)  # (B, L)
    with rt.amp:
        old_logp = batched(lambda s: policy_logprobs(policy, ids[s], attn[s], P, cfg.temperature,
                                                     vocab_size=len(tok)), rt.B, rt.micro)
        ref_logp = batched(lambda s: policy_logprobs(ref, ids[s], attn[s], P, cfg.temperature,
                                                     vocab_size=len(tok)), rt.B, rt.micro)
        values = batched(lambda s: critic_values(critic, ids[s], attn[s], P), rt.B, rt.micro) * mask
    return SimpleNamespace(ids=ids, attn=attn, P=P, resp=resp, mask=mask, lengths=lengths, finished=finished,
                           vocab_size=len(tok), old_logp=old_logp, ref_logp=ref_logp, values=values,
                           perf={"perf/generate_s": t1 - t0, "perf/forward_s": time.time() - t1})


def set_learning_rates(optims, cfg, step):
    """Linear decay to 0 at the last step (cleanrl's anneal_lr), a function of the step alone (resume-safe)."""
    frac = 1 - (step - 1) / cfg.steps if cfg.anneal_lr else 1.0
    for name, lr in (("policy", cfg.lr), ("critic", cfg.critic_lr)):
        for group in optims[name].param_groups:
            group["lr"] = lr * frac


def optimizer_step(models, optims, cfg, rt):
    """One step of each model: average the gradients over ranks (plain data parallel; FSDP reduces
    them itself), clip their norm, step, zero."""
    for name in ("policy", "critic"):
        if not cfg.fsdp and rt.world_size > 1:
            for p in models[name].parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= rt.world_size
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(models[name].parameters(), cfg.max_grad_norm)
        optims[name].step()
        optims[name].zero_grad(set_to_none=True)


STATS = ("pg_loss", "v_loss", "pg_clipfrac", "v_clipfrac", "approx_kl", "entropy", "ratio", "tokens")


def ppo_update(models, optims, ro, adv, returns, cfg, rt, step):
    """4. PPO epochs over minibatches. Returns the global sums of STATS over every token the update
    saw ({name: 0-d tensor}) and the mean ratio of the first minibatch."""
    policy, critic = models["policy"], models["critic"]
    policy.train(), critic.train()
    set_learning_rates(optims, cfg, step)
    sums = {k: torch.zeros((), device=rt.device) for k in STATS}
    first_ratio = None
    for epoch in range(cfg.ppo_epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + epoch + 17)
        mb_of_row = minibatch_ids(cfg.prompts_per_step, cfg.minibatches, cfg.samples_per_prompt, g)
        mb_of_row = mb_of_row[rt.rank * rt.B:(rt.rank + 1) * rt.B]  # (B,)
        for m in range(cfg.minibatches):
            rows = (mb_of_row == m).nonzero().squeeze(-1).to(rt.device)  # (mb,)
            n_tok = all_sum(ro.mask[rows].sum().float())  # valid tokens of the global minibatch
            for i in range(0, len(rows), rt.micro):
                r = rows[i:i + rt.micro]
                with rt.amp:
                    logp, ent = policy_logprobs(policy, ro.ids[r], ro.attn[r], ro.P, cfg.temperature, entropy=True,
                                                vocab_size=getattr(ro, "vocab_size", None))
                    v = critic_values(critic, ro.ids[r], ro.attn[r], ro.P)  # (mb, T) each
                L = ppo_token_losses(logp, ro.old_logp[r], adv[r], v, ro.values[r], returns[r], ro.mask[r],
                                     cfg.cliprange, cfg.cliprange_value)
                # NOTE: gradients are averaged over ranks, so world / global count gives the exact
                # token mean over the global minibatch, whatever the split into ranks and micro-batches
                loss = (L["pg"].sum() + L["vf"].sum()) * rt.world_size / n_tok
                check_finite("loss", loss.detach(), step, cfg.out_dir)
                loss.backward()
                with torch.no_grad():
                    for k, x in (("pg_loss", L["pg"]), ("v_loss", L["vf"]), ("pg_clipfrac", L["clip"]),
                                 ("v_clipfrac", L["vclip"]), ("approx_kl", L["approx_kl"]),
                                 ("entropy", ent * ro.mask[r]), ("ratio", L["ratio"]), ("tokens", ro.mask[r].float())):
                        sums[k] += x.sum()
            if first_ratio is None:  # same weights as the rollout: 1 up to float noise
                first_ratio = (all_sum(sums["ratio"]) / all_sum(sums["tokens"])).item()
            optimizer_step(models, optims, cfg, rt)
            check_finite_weights(models, optims, step, cfg, rt)
    return dict(zip(STATS, all_sum(torch.stack([sums[k] for k in STATS])))), first_ratio


@torch.no_grad()
def greedy_accuracy(policy, tok, eos_ids, problems, cfg, rt):
    """Greedy accuracy on `problems`, split over ranks; a truncated response is wrong (success_rewards)."""
    mine, correct = problems[rt.rank::rt.world_size], 0.0
    policy.eval()
    with gathered(policy), rt.amp:
        for i in range(0, len(mine), rt.B):
            chunk = mine[i:i + rt.B]
            ids, mask = encode(tok, [p["question"] for p in chunk], rt.device, cfg.prompt)
            resp, lengths, fin = common.sample(policy, ids, mask, cfg.max_new_tokens, 0.0, eos_ids, tok.pad_token_id,
                                               vocab_size=len(tok))
            correct += sum(rewards.success_rewards(decode(tok, resp, lengths)[1], [p["answer"] for p in chunk],
                                                   fin.tolist(), cfg.grade_workers))
    s = all_sum(torch.tensor([correct, float(len(mine))], device=rt.device))
    return (s[0] / s[1].clamp(min=1)).item()


def step_metrics(step, ro, sc, token_rewards, kl, returns, stats, first_ratio, cfg, rt):
    """5. The metrics row of a step, averaged over the global batch (per response or per token)."""
    names = ("success", "learned", "kl_penalty", "total", "ref_kl", "tokens", "steps", "truncated", "rows",
             "repeated", "grade_timeouts", "grade_errors")
    mine = (sc.success.sum(), sc.values.sum(), (-cfg.beta * kl).sum(), token_rewards.sum(), kl.sum(),
            ro.lengths.sum(), sum(len(s) for s in sc.steps), (~ro.finished).sum(), rt.B,
            sum(rewards.repeated_steps(s) for s in sc.steps), sc.grading["timeouts"], sc.grading["errors"])
    r = dict(zip(names, all_sum(torch.tensor([float(x) for x in mine], device=rt.device))))
    n, n_tok = r["rows"], stats["tokens"].clamp(min=1)
    row = {"reward/success": r["success"] / n, "reward/learned": r["learned"] / n,
           "reward/kl": r["kl_penalty"] / n, "reward/total": r["total"] / n, "policy/ref_kl": r["ref_kl"] / n,
           "policy/loss": stats["pg_loss"] / n_tok, "policy/clipfrac": stats["pg_clipfrac"] / n_tok,
           "policy/approx_kl": stats["approx_kl"] / n_tok, "policy/entropy": stats["entropy"] / n_tok,
           "policy/first_ratio": first_ratio, "value/loss": stats["v_loss"] / n_tok,
           "value/clipfrac": stats["v_clipfrac"] / n_tok,
           "value/explained_variance": explained_variance(ro.values, returns, ro.mask),
           "rollout/response_tokens": r["tokens"] / n, "rollout/steps_per_response": r["steps"] / n,
           "rollout/repeated_step_fraction": r["repeated"] / r["steps"].clamp(min=1),
           "rollout/truncated_fraction": r["truncated"] / n, "rollout/accuracy": r["success"] / n,
           # responses the grader cut (time bound) or failed on, graded 0: a silent reward collapse shows here
           "reward/grade_timeouts": r["grade_timeouts"], "reward/grade_errors": r["grade_errors"]}
    return {"step": step, **{k: float(v) for k, v in row.items()}}


# -----------------------------------------------------------------------------
# checkpoints: out_dir/ckpt/{policy,critic}/ (HF format), optimizers.pt, rng.pt, meta.json

def full_state(model, optim):
    """Full (unsharded) model and optimizer state dicts on CPU; collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_model_state_dict(model, options=o)
    # NOTE: named_parameters() lists a tied weight once; the FSDP state dict would repeat lm_head
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in sd.items() if k in names}, get_optimizer_state_dict(model, optim, options=o)


def save_checkpoint(out_dir, models, optims, tok, cfg, step, metrics, master):
    """Every rank gathers; rank 0 writes ckpt.tmp and swaps it in (common.swap_in: every file and
    directory fsynced, then two renames). Guarantees (README "Failure modes"): a kill or a power loss
    at any point leaves a whole checkpoint (the previous or the new one; common.recover_swap repairs
    a kill between the renames), leftovers of a killed save or deletion never block a later one,
    and a failed write (a full disk) is one line with the partial ckpt.tmp deleted. meta.json lists
    the sha256 of every other file, verified by --resume. The weights were checked finite after the
    last optimizer step (check_finite_weights)."""
    states = {name: full_state(models[name], optims[name]) for name in models}
    if master:
        tmp, final = os.path.join(out_dir, "ckpt.tmp"), os.path.join(out_dir, "ckpt")
        common.recover_swap(final)  # a leftover ckpt.tmp / ckpt.old / trash of a killed save
        try:
            write_checkpoint(tmp, states, models, tok, cfg, step, metrics)
            metrics_file = os.path.join(out_dir, "metrics.jsonl")
            if os.path.exists(metrics_file):  # its rows up to this step survive a power loss too
                common.fsync_file(metrics_file)
            common.swap_in(tmp, final)
        except (OSError, RuntimeError) as e:  # NOTE: torch.save reports a full disk as a RuntimeError
            msg = common.write_error(tmp, e)
            with contextlib.suppress(OSError):
                common.remove_tree(tmp)
            raise common.RunError(f"step {step}: cannot save the checkpoint: {msg}; "
                                  f"{checkpoint_note(out_dir).replace('left intact', 'kept')}") from None
    common.barrier()


def write_checkpoint(tmp, states, models, tok, cfg, step, metrics):
    """The files of a checkpoint in `tmp`: {policy,critic}/ (HF format), optimizers.pt, rng.pt and
    meta.json (config, step, data position, metrics, the sha256 of every other file)."""
    for name, (sd, _) in states.items():
        models[name].save_pretrained(os.path.join(tmp, name), state_dict=sd)
        tok.save_pretrained(os.path.join(tmp, name))
        path = os.path.join(tmp, name, "config.json")  # NOTE: FSDP2 renames the class FSDP<Name>
        with open(path) as f:
            conf = json.load(f)
        conf["architectures"] = [a.removeprefix("FSDP") for a in conf.get("architectures") or []]
        with open(path, "w") as f:
            json.dump(conf, f, indent=2)
    torch.save({name: o for name, (_, o) in states.items()}, os.path.join(tmp, "optimizers.pt"))
    torch.save(torch.get_rng_state(), os.path.join(tmp, "rng.pt"))
    files = common.file_digests(tmp)  # (before meta.json exists)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"config": dataclasses.asdict(cfg), "step": step, "data_position": step * cfg.prompts_per_step,
                   "metrics": metrics, "files": files}, f, indent=2)


def load_optimizers(ckpt, models, optims, master):
    """Verify every checkpoint file against the sha256 in meta.json (rank 0), then rank 0 reads the
    full optimizer states and broadcasts them into the (sharded) optimizers; every rank restores the
    RNG. A damaged file is one RunError naming it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    state = None
    if master:
        digests = read_meta(ckpt).get("files")
        if digests is None:
            print0(f"WARNING {ckpt}/meta.json lists no checksums (saved by an older version): files not verified")
        else:
            common.verify_digests(ckpt, digests)
        state = common.torch_load(os.path.join(ckpt, "optimizers.pt"), "optimizer states")
        if not isinstance(state, dict) or set(state) != set(models):
            raise common.RunError(f"{ckpt}/optimizers.pt: expected the states of {sorted(models)}; the checkpoint is corrupt")
    o = StateDictOptions(full_state_dict=True, broadcast_from_rank0=dist.is_initialized())
    for name in models:
        try:
            set_optimizer_state_dict(models[name], optims[name], state[name] if master else {}, options=o)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise common.RunError(f"{ckpt}/optimizers.pt: the {name} state does not fit the model "
                                  f"({common.first_line(e)}); the checkpoint is corrupt") from None
        bad = common.nonfinite_names(common.optimizer_tensors(optims[name]))
        if bad:
            raise common.RunError(f"{ckpt}/optimizers.pt: NaN or inf in the {name} state ({', '.join(bad[:3])})")
    rng = common.torch_load(os.path.join(ckpt, "rng.pt"), "RNG state")
    try:
        torch.set_rng_state(rng)
    except (TypeError, RuntimeError) as e:
        raise common.RunError(f"{ckpt}/rng.pt: not an RNG state ({common.first_line(e)}); the checkpoint is corrupt") from None


# -----------------------------------------------------------------------------
# main: setup, models, the training loop

# Flags --resume may change: how long, how often to evaluate / save / print, where and how to run.
# Any other flag given with a value unlike the saved one would change what the run is (e.g. a new
# --policy swaps the KL reference mid-run) and is refused.
RESUME_SAFE = {"steps", "eval_every", "save_every", "sample_every", "eval_limit", "eval_dataset", "eval_split", "wandb",
               "grade_workers", "device", "micro_batch_size", "grad_ckpt", "fsdp", "out_dir", "resume", "overwrite"}
META_KEYS = {"config", "step", "data_position", "metrics", "files"}


def read_meta(ckpt):
    """ckpt/meta.json as a dict with a config dict and an int step; one RunError if it is not."""
    path = os.path.join(ckpt, "meta.json")
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise common.RunError(f"{path}: not valid JSON ({getattr(e, 'msg', None) or common.first_line(e)}); the "
                              "checkpoint is corrupt: restore it, or start again with --overwrite") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("config"), dict) and type(meta.get("step")) is int
            and meta["step"] >= 0):
        raise common.RunError(f"{path}: expected an object with a config object and an integer step; the "
                              "checkpoint is corrupt: restore it, or start again with --overwrite")
    return meta


def resumed_config(cfg, given):
    """--resume: the checkpoint's config and its step. Flags given now must equal the saved values
    unless they are in RESUME_SAFE; saved keys this version does not know are ignored with a warning."""
    ckpt = os.path.join(cfg.out_dir, "ckpt")
    if common.is_master():
        common.recover_swap(ckpt)  # killed mid-swap: ckpt.old back to ckpt; leftovers deleted
    elif not os.path.exists(ckpt):  # rank 0 may not have repaired it yet
        ckpt += ".old"
    if not os.path.exists(os.path.join(ckpt, "meta.json")):
        raise common.RunError(f"--resume: no checkpoint at {ckpt} (run without --resume"
                              f"{', with --overwrite,' if os.path.exists(cfg.out_dir) else ''} to start again)")
    meta = read_meta(ckpt)
    saved = dict(meta["config"])
    if "prm_step_tag" in saved:  # a checkpoint written before --prm-step-tag became --step-tag
        saved["step_tag"] = saved.pop("prm_step_tag")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(saved) - set(fields)) + [f"meta.{k}" for k in sorted(set(meta) - META_KEYS)]
    if unknown:
        print0(f"WARNING {ckpt}/meta.json: ignoring keys this version does not know (a newer version saved it?): "
               f"{', '.join(unknown)}")
    saved = {k: saved[k] if k in saved else common._default(f) for k, f in fields.items()}
    conflicts = [f"--{k.replace('_', '-')} {getattr(cfg, k)!r} (saved: {saved[k]!r})"
                 for k in sorted(given - RESUME_SAFE) if getattr(cfg, k) != saved[k]]
    if conflicts:
        raise common.RunError(f"--resume: these flags would change the saved run: {', '.join(conflicts)}; drop "
                              "them, or start a new run in another --out-dir (safe to change: "
                              f"{', '.join('--' + k.replace('_', '-') for k in sorted(RESUME_SAFE - {'resume', 'overwrite', 'out_dir'}))})")
    return Config(**{**saved, **{k: getattr(cfg, k) for k in given}, "resume": True}), meta["step"]


def setup(cfg, given):
    """The (resumed) config, the runtime and the per-rank sizes, checked for exact division and
    printed. Returns (cfg, rt, start step). Rank 0 first takes out_dir (common.claim_out_dir: a lock
    held for the run; a fresh run refuses a previous run's out_dir unless --overwrite)."""
    if common.is_master():
        common.claim_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite)
    cfg, start = resumed_config(cfg, given) if cfg.resume else (cfg, 0)
    if cfg.reward not in REWARD_MODES:  # argparse checks the flag; this catches an edited meta.json
        raise common.RunError(f"--reward {cfg.reward!r}: expected one of {', '.join(REWARD_MODES)}")
    if cfg.fsdp and "RANK" not in os.environ:
        raise common.RunError("--fsdp needs torchrun (e.g. torchrun --nproc_per_node=2 ppo.py --fsdp)")
    base = common.setup_runtime(cfg.device, cfg.seed, amp=not cfg.fsdp)  # FSDP casts to bf16 itself
    common.barrier()  # rank 0 has repaired or cleared out_dir before any rank reads it
    world, n_rows = base.world_size, cfg.prompts_per_step * cfg.samples_per_prompt
    B = n_rows // world
    if cfg.prompts_per_step % (world * cfg.minibatches) or (B // cfg.minibatches) % (cfg.micro_batch_size or 1):
        raise common.RunError(f"sizes do not divide: prompts_per_step {cfg.prompts_per_step} by world size {world} x "
                              f"minibatches {cfg.minibatches}, or rows per rank and minibatch {B // cfg.minibatches} "
                              f"by micro_batch_size {cfg.micro_batch_size}")
    rt = Runtime(**vars(base), n_rows=n_rows, prompts=cfg.prompts_per_step // world, B=B,
                 micro=cfg.micro_batch_size or B // cfg.minibatches)
    print0(f"sizes: {n_rows} rows/step ({cfg.prompts_per_step} prompts x {cfg.samples_per_prompt}); "
           f"per rank {B} rows, minibatch {B // cfg.minibatches}, micro-batch {rt.micro}")
    print0("config: " + json.dumps(dataclasses.asdict(cfg)))
    return cfg, rt, start


def check_config(cfg):
    """Flags that cannot work -> one-line RunError, right after parsing (before any model or file)."""
    for name in ("prompts_per_step", "samples_per_prompt", "max_new_tokens", "ppo_epochs", "minibatches"):
        common.require(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 1")
    for name in ("steps", "micro_batch_size", "eval_limit", "eval_every", "save_every", "sample_every",
                 "grade_workers", "lr", "critic_lr", "beta", "max_grad_norm"):
        common.require(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 0")
    common.require(0 < cfg.temperature < float("inf"), f"--temperature {cfg.temperature}: must be > 0 (PPO trains "
                   "on samples of the policy at this temperature; greedy decoding has no log-probs to learn from)")
    common.require(0 <= cfg.gamma <= 1 and 0 <= cfg.lam <= 1, f"--gamma {cfg.gamma} / --lam {cfg.lam}: must be in [0, 1]")
    common.require(cfg.cliprange > 0 and cfg.cliprange_value > 0,
                   f"--cliprange {cfg.cliprange} / --cliprange-value {cfg.cliprange_value}: must be > 0")
    common.require(not os.path.exists(cfg.out_dir) or os.path.isdir(cfg.out_dir),
                   f"--out-dir {cfg.out_dir!r} is a file, not a directory")
    if cfg.wandb:
        import importlib.util
        common.require(importlib.util.find_spec("wandb") is not None,
                       "--wandb needs the wandb package (pip install wandb), or leave --wandb empty")


def load_data(cfg):
    """Training problems and the greedy-eval problems (none when eval_limit is 0), every row checked
    (common.load_problems): a bad gold is found here, with its file:line, not at the step that
    draws it."""
    try:
        problems = common.load_problems(cfg.dataset, "train", skip_bad=cfg.skip_bad)
        eval_set = cfg.eval_dataset or cfg.dataset
        split = common.eval_split(eval_set, cfg.eval_split)
        eval_problems = common.load_problems(eval_set, split, limit=cfg.eval_limit,
                                             skip_bad=cfg.skip_bad) if cfg.eval_limit else []
    except (OSError, ValueError) as e:
        raise common.RunError(str(e)) from None
    common.require(problems, f"no training problems in {cfg.dataset!r} (train split)")
    print0(f"data: {len(problems)} train / {len(eval_problems)} eval problems ({split} split); reward {cfg.reward}")
    return problems, eval_problems


class Models(NamedTuple):
    tok: object  # the policy's tokenizer, left padding
    eos_ids: set  # every token id that ends a response
    policy: torch.nn.Module  # trained
    critic: torch.nn.Module  # trained
    ref: torch.nn.Module  # frozen copy of the starting policy
    rm: object  # frozen rewards.RewardModel, None for --reward success

    def trained(self):
        return {"policy": self.policy, "critic": self.critic}


def reward_model_source(cfg):
    """(kind, resolved source, path as given, hint) of --reward's reward model, None for success; a
    missing local path is a RunError here, before anything is loaded."""
    if cfg.reward == "success":
        return None
    kind = "orm" if cfg.reward == "orm" else "prm"
    path, hint = getattr(cfg, kind), f"train it with prm_train.py (see README) or pass --{kind} DIR_OR_HUB_ID"
    return kind, common.model_source(path, kind.upper(), hint), path, hint


def load_reward_model(source, cfg, rt):
    """The PRM (or ORM for --reward orm), frozen and replicated on every rank; None for success."""
    if source is None:
        return None
    kind, local, path, hint = source
    try:
        return rewards.load_reward_model(local, kind=kind, step_tag=cfg.step_tag or None, device=rt.device)
    except (OSError, ValueError) as e:
        raise common.RunError(f"cannot load {kind.upper()} from {path!r} ({str(e).splitlines()[0]}): {hint}") from None


def load_models(cfg, rt):
    """Policy and critic (trained), reference and reward model (frozen), each sharded or moved to the
    device right after loading (one full model in CPU memory at a time)."""
    from transformers import AutoModelForTokenClassification

    def place(model, trained):
        if trained and cfg.grad_ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return shard(model, rt.device, rt.bf16) if cfg.fsdp else model.to(rt.device)

    hint = "train it with sft.py (see README) or pass --policy DIR_OR_HUB_ID"
    common.model_source(cfg.policy, "policy", hint)  # fail fast, before loading anything
    rm_source = reward_model_source(cfg)
    ckpt = os.path.join(cfg.out_dir, "ckpt")
    init = os.path.join(ckpt, "policy") if cfg.resume else cfg.policy
    tok = common.load_tokenizer(init, "policy", hint)
    tok.padding_side = "left"
    if tok.pad_token_id is None:  # NOTE: masks never come from ids == pad, so pad = EOS is safe
        tok.pad_token = tok.eos_token
    load = common.load_checkpoint_model if cfg.resume else common.load_model  # resume: keys, shapes, finite
    policy = common.no_dropout(load(init, "policy", hint, dtype=torch.float32))
    eos_ids = common.model_eos_ids(policy, tok)
    print0(f"policy {cfg.policy}: {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters")
    policy = place(policy, True)
    ref = place(common.load_model(cfg.policy, "policy", hint, dtype=rt.dtype).eval().requires_grad_(False), False)
    critic = common.no_dropout(load(
        os.path.join(ckpt, "critic") if cfg.resume else cfg.critic or cfg.policy, "critic",
        "pass --critic DIR saved by ppo.py or leave it empty", cls=AutoModelForTokenClassification,
        num_labels=1, dtype=torch.float32))
    if not cfg.resume and not cfg.critic:
        critic.score.weight.data.zero_()  # V = 0 at the start: no random value noise
        if critic.score.bias is not None:
            critic.score.bias.data.zero_()
    critic = place(critic, True)
    return Models(tok, eos_ids, policy, critic, ref, load_reward_model(rm_source, cfg, rt))


def evaluate(m, problems, cfg, rt, step):
    t0 = time.time()
    acc = greedy_accuracy(m.policy, m.tok, m.eos_ids, problems, cfg, rt)
    print0(f"step {step}: eval/greedy_accuracy {acc:.4f} on {len(problems)} eval problems ({time.time() - t0:.1f}s)")
    return acc


def print_step(row, cfg):
    print0(f"step {row['step']}/{cfg.steps} | success {row['reward/success']:.3f} learned "
           f"{row['reward/learned']:+.3f} kl {row['policy/ref_kl']:.3f} | len {row['rollout/response_tokens']:.0f} "
           f"steps {row['rollout/steps_per_response']:.1f} rep {row['rollout/repeated_step_fraction']:.2f} trunc "
           f"{row['rollout/truncated_fraction']:.2f} | pg {row['policy/loss']:+.4f} vf {row['value/loss']:.4f} "
           f"ev {row['value/explained_variance']:.2f} clip {row['policy/clipfrac']:.3f} "
           f"ent {row['policy/entropy']:.3f} | {row['perf/step_s']:.1f}s")


def print_samples(batch, sc, rm, n=2):
    """The first n responses of this rank with their success and the reward model's raw step scores."""
    for b in range(min(n, len(batch))):
        scores = " ".join(f"{x:.2f}" for x in sc.raw[b][sc.kmask[b]].tolist()) if rm else "-"
        print0(f"--- sample | {batch[b]['question']} gold {batch[b]['answer']} | success "
               f"{sc.success[b].item():.0f} | {rm.kind if rm else 'rm'} scores [{scores}]\n{sc.texts[b]}")


def train(cfg, rt, start, problems, eval_problems, m, optims, logger):
    """Steps start + 1 .. cfg.steps of the algorithm in the docstring (numbered as there)."""
    if start == 0 and eval_problems:
        logger.log({"step": 0, "eval/greedy_accuracy": evaluate(m, eval_problems, cfg, rt, 0)})
    for step in tqdm(range(start + 1, cfg.steps + 1), disable=not rt.master or not sys.stderr.isatty(), desc="ppo"):
        t_step = time.time()
        # 1. rollout: this rank's questions, samples_per_prompt rows each
        batch = step_batch(problems, step, cfg, rt)
        ro = rollout(m.policy, m.ref, m.critic, m.tok, m.eos_ids, [p["question"] for p in batch], cfg, rt, step)

        # 2. rewards: success + learned term (score rewards), then the KL penalty on every token
        sc = score(m.rm, m.tok, batch, ro, cfg, step)
        token_rewards, kl = kl_rewards(sc.token, ro.old_logp, ro.ref_logp, ro.mask, cfg.beta)  # (B, T)
        check_finite("rewards", token_rewards, step, cfg.out_dir)
        check_finite("values", ro.values, step, cfg.out_dir)

        # 3. advantages: GAE, then whitening over the global batch
        adv, returns = compute_advantages(token_rewards, ro.values, ro.mask, cfg.gamma, cfg.lam)  # (B, T)
        check_finite("advantages", adv, step, cfg.out_dir)

        # 4. PPO update
        t0 = time.time()
        stats, first_ratio = ppo_update(m.trained(), optims, ro, adv, returns, cfg, rt, step)
        if abs(first_ratio - 1) > 1e-3:
            print0(f"WARNING step {step}: first-minibatch ratio {first_ratio:.5f} != 1 "
                   "(dropout on, or the rollout and training forwards differ)")
        perf = {**ro.perf, **sc.perf, "perf/update_s": time.time() - t0}

        # 5. log, evaluate, print samples, save
        row = step_metrics(step, ro, sc, token_rewards, kl, returns, stats, first_ratio, cfg, rt)
        if eval_problems and (step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0)):
            t0 = time.time()
            row["eval/greedy_accuracy"] = evaluate(m, eval_problems, cfg, rt, step)
            perf["perf/eval_s"] = time.time() - t0
        row.update(perf, **{"perf/step_s": time.time() - t_step})
        logger.log(row)
        print_step(row, cfg)
        if cfg.sample_every and step % cfg.sample_every == 0:
            print_samples(batch, sc, m.rm)
        if step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0):
            save_checkpoint(cfg.out_dir, m.trained(), optims, m.tok, cfg, step, row, rt.master)
    ckpt = os.path.join(cfg.out_dir, "ckpt")
    print0(f"done: {cfg.steps} steps; " + (f"checkpoint in {ckpt}" if os.path.isdir(ckpt) else
                                           "no checkpoint written (no training step was run)"))


def main(argv=None):
    cfg, given = common.parse_config(Config, argv, with_given=True)
    check_config(cfg)
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")  # FSDP2 + HF outputs: harmless
    try:
        cfg, rt, start = setup(cfg, given)
        problems, eval_problems = load_data(cfg)
        m = load_models(cfg, rt)
        # prompts longer than the policy's positions: an error naming the row (or skipped, --skip-bad)
        problems, eval_problems = (common.check_prompt_lengths(m.tok, ps, common.max_prompt_tokens(m.ref), where,
                                                               cfg.skip_bad, cfg.prompt)
                                   for ps, where in ((problems, "train"), (eval_problems, "eval")))
        common.require(problems, "no training problem left after --skip-bad")
        optims = {"policy": torch.optim.AdamW(m.policy.parameters(), lr=cfg.lr, weight_decay=0.0),
                  "critic": torch.optim.AdamW(m.critic.parameters(), lr=cfg.critic_lr, weight_decay=0.0)}
        if cfg.resume:
            load_optimizers(os.path.join(cfg.out_dir, "ckpt"), m.trained(), optims, rt.master)
            print0(f"resumed from {os.path.join(cfg.out_dir, 'ckpt')} at step {start}")
        # metrics.jsonl, trimmed to the checkpoint's step on resume (rows after it are redone)
        logger = common.MetricsLogger(cfg.out_dir, resume_step=start if cfg.resume else None,
                                      wandb_project=cfg.wandb or None, config=cfg, master=rt.master)
        try:
            train(cfg, rt, start, problems, eval_problems, m, optims, logger)
        finally:
            logger.close()
    finally:
        common.unlock_out_dir(cfg.out_dir)  # (the process's end releases it too, a SIGKILL included)


if __name__ == "__main__":
    common.run_main(main)
