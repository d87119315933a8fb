"""
Supervised warm start (SFT): teach a causal LM to answer prompt -> solution, with the loss on the
solution tokens only. On real models this stage is optional (the paper starts RL from instruct
models, METHOD §1); in the arith world it produces the starting policy `models/arith-policy`.

Works with any Hugging Face causal LM (`--init` a local path or hub id), or a tiny Llama / Qwen2
built from a config with no download (`--init scratch --tokenizer data/arith/tokenizer`).

Algorithm (the numbers match comments in the code)
  1. Model and tokenizer: `--init scratch` builds a tiny Llama / Qwen2 from the size fields (seeded:
     the same init on every rank); anything else is loaded with common.load_model in fp32.
  2. Load the problems (common.load_problems) and tokenize each one as
        input  = build_prompt(question) + solution + EOS
        labels = -100 on the prompt, the token ids on solution + EOS
     (the prompt is built through common.build_prompt, as in every stage).
  3. AdamW (no weight decay on norms and biases), linear warmup then cosine decay to min_lr. Each
     step: draw `batch_size` examples (a seeded permutation per epoch, each rank its slice),
     right-pad, and minimise the token-level cross-entropy summed over all solution tokens of the
     optimizer batch divided by their count (micro-batches accumulate into one update).
  4. Every `eval_every` steps (and at the end): greedy accuracy on the first `eval_limit` problems
     of the eval split (common.generate, rewards.success_rewards: a response cut at max_new_tokens
     without EOS counts as wrong, METHOD §4). Print one decoded sample.
  5. Save the model + tokenizer with save_pretrained (generation_config carries pad/eos), and
     meta.json (resolved config, step, last metrics), BEFORE the final eval of step 4: an eval that
     fails cannot lose the run; meta.json then gets the eval's figures. metrics.jsonl has one line
     per logged step. Every row is checked at load (common.load_problems: file:line, --skip-bad).
  `--eval-only` runs 1 and skips 2-5: it reports greedy accuracy and sampling accuracy at
  temperature 1 (mean over `--eval-samples` samples per problem) of `--init` on the eval split
  (eval/greedy_accuracy, eval/sampling_accuracy), and saves nothing but metrics.jsonl.

Departures from the paper: none; this stage is not part of the method (METHOD §1).

Commands
  CPU, the shipped arith policy (0.54M-parameter Llama, 2 layers x 128, 1350 steps of 64 SFT
  demonstrations with slips, restatements and checks, data/arith/prepare.py; about 15 min on one
  core; scripts/build_arith.sh builds it with the reward models):
    python data/arith/prepare.py
    OMP_NUM_THREADS=1 python sft.py --train-split sft --out-dir models/arith-policy
  (NOTE: one thread is how the shipped weights were made; CPU matmuls are not bit-identical across
  thread counts, so another count gives slightly different weights and accuracy.)
  Measure a checkpoint (greedy + T=1 sampling on the arith validation split; --eval-split test
  for the final report):
    python sft.py --eval-only --init models/arith-policy --eval-limit 500 --eval-samples 4 --out-dir out/eval
  CPU smoke run (seconds):
    python sft.py --n-layer 1 --n-embd 32 --n-inner 64 --max-steps 20 --eval-limit 10 --out-dir out/sft-smoke
  One GPU, a real instruct model on GSM8K (optional warm start):
    python sft.py --init Qwen/Qwen2-1.5B-Instruct --dataset gsm8k --max-len 1024 --batch-size 64 \\
        --micro-batch-size 8 --lr 1e-5 --min-lr 1e-6 --max-steps 200 --eval-limit 200 \\
        --max-new-tokens 512 --eval-batch-size 32 --out-dir out/sft-gsm8k
  8 GPUs: the same with `torchrun --nproc_per_node=8 sft.py ...` (batch_size is global).

Expected result (--train-split sft, one thread): arithmetic "clicks" late, and where depends on the
CPU. On the AMD EPYC machine that built the shipped policy, greedy accuracy on the first 100
validation problems is 0.00 / 0.01 / 0.01 / 0.48 / 0.70 / 0.70 at steps 250..1250 and 1350; on an
Intel Xeon (the previous shipped set) 0.02 / 0.01 / 0.05 / 0.30 / 0.52 / 0.52. Reproducible from
--seed on one CPU setup (same thread count); not bit-reproducible across machines, thread counts,
GPU kernels or bf16. So scripts/build_arith.sh saves snapshots along the run (--save-steps) and
keeps the 1350-step end only if it is inside the 30-70% greedy band of the paper's instruct models,
else the snapshot nearest 50% (scripts/pick_policy.py). The shipped start is the AMD run's
1000-step snapshot: 47.0% greedy and 22.1% T=1 sampling on all 500 validation problems
(evaluate.py, 4 samples; the Xeon's 1350-step end: 55.2% / 30.7%). Sampling is far below greedy
because the demonstrations slip, which leaves room for RL. (--max-steps 1500 gives
models/arith-policy-v2, the reward models' base: 72.0% greedy on the AMD machine, 80.4% on the
Xeon.)

Shapes: B sequences in a micro-batch, L prompt + solution tokens, V vocabulary.
"""

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import common
import rewards
from common import field, print0


@dataclass
class Config:
    # model
    init: str = field("scratch", "'scratch' (build from the size fields below) or a path / hub id of a causal LM")
    tokenizer: str = field("data/arith/tokenizer", "tokenizer dir / hub id for --init scratch (else the model's own)")
    arch: str = field("llama", "scratch architecture", choices=("llama", "qwen2"))
    n_layer: int = field(2, "scratch: transformer blocks")
    n_embd: int = field(128, "scratch: hidden size")
    n_head: int = field(4, "scratch: attention heads (n_embd must divide by it)")
    n_inner: int = field(512, "scratch: MLP intermediate size")
    # data
    dataset: str = field("arith", f"one of {', '.join(common.DATASETS)}, or a .jsonl path (rows need a solution)")
    train_split: str = field("train", "split to train on (data/<name>/<split>.jsonl)")
    eval_split: str = field("auto", "split to evaluate on: auto = valid where the dataset has one (arith), "
                            "else test")
    prompt: str = field("auto", "prompt format (common.build_prompt): auto | chat | cot | plain",
                        choices=common.PROMPTS)
    max_len: int = field(256, "max prompt + solution tokens; longer examples are dropped (count printed)")
    skip_bad: bool = field(False, "skip and count bad data rows (no question, gold or solution; an ungradable "
                           "gold; an overlong question) instead of stopping at the first with its file:line")
    # optimisation
    max_steps: int = field(1350, "optimizer steps")
    batch_size: int = field(64, "sequences per optimizer step, global (all ranks, all micro-batches)")
    micro_batch_size: int = field(64, "sequences per forward pass per rank")
    lr: float = field(3e-3, "peak learning rate")
    min_lr: float = field(3e-4, "cosine decay floor")
    warmup_steps: int = field(50, "linear warmup steps")
    weight_decay: float = field(0.0, "AdamW weight decay of the matrices (none on norms and biases)")
    grad_clip: float = field(1.0, "max grad norm (0 = off)")
    save_steps: list[int] = field([], "also save the model at these steps (before the last), each to "
                                  "<out-dir>/step-K (weights, tokenizer, meta.json): candidates for a "
                                  "checkpoint picked on validation (scripts/pick_policy.py)")
    # evaluation
    eval_every: int = field(250, "steps between greedy evals (0 = only at the end)")
    eval_limit: int = field(100, "eval problems: the first N of the eval split (0 = all)")
    eval_batch_size: int = field(250, "prompts per generate call")
    eval_samples: int = field(4, "--eval-only: T=1 samples per problem for sampling accuracy (0 = skip)")
    max_new_tokens: int = field(160, "generation budget in tokens; a response without EOS by then is wrong")
    eval_only: bool = field(False, "evaluate --init on the eval split (greedy + sampling) and exit")
    # runtime
    seed: int = field(1337, "seed of the scratch init, the data order and sampling")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    out_dir: str = field("out/sft", "where the checkpoint, meta.json and metrics.jsonl go")


# -----------------------------------------------------------------------------
# pure helpers

def tokenize_example(tokenizer, question, solution, max_len, prompt="auto"):
    """(input_ids, labels) for prompt + solution + EOS, labels -100 on the prompt; None if too long.

    NOTE: prompt and solution are tokenized separately and concatenated, so the boundary is exact
    for any tokenizer (BPE merges across it would blur which tokens are "solution").
    """
    prompt_ids = tokenizer(common.build_prompt(tokenizer, question, prompt), add_special_tokens=False)["input_ids"]
    sol_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt_ids + sol_ids
    if len(ids) > max_len:
        return None
    return ids, [-100] * len(prompt_ids) + sol_ids


def collate(examples, pad_id):
    """Right-pad a list of (ids, labels) into input_ids / attention_mask / labels, each (B, L)."""
    L = max(len(ids) for ids, _ in examples)
    B = len(examples)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)  # (B, L)
    labels = torch.full((B, L), -100, dtype=torch.long)  # (B, L)
    attn = torch.zeros((B, L), dtype=torch.long)  # (B, L)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attn[i, : len(ids)] = 1
    return input_ids, attn, labels


def sum_token_nll(logits, labels):
    """Summed next-token NLL over labelled positions, in fp32. logits (B, L, V), labels (B, L)."""
    logits = logits[:, :-1].float()  # (B, L-1, V) predicts token t+1
    target = labels[:, 1:]  # (B, L-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=-100, reduction="sum")


def lr_at(step, cfg):
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at cfg.max_steps (nanoGPT)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def batches(n_examples, batch_size, seed):
    """Step 3's data order: lists of batch_size example indices, from a seeded permutation per
    epoch. Global: every rank draws the same batch and trains on its own slice."""
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(n_examples, generator=gen).tolist(), 0
    while True:
        batch = []
        for _ in range(batch_size):
            if pos == len(order):  # new epoch, new seeded permutation
                order, pos = torch.randperm(n_examples, generator=gen).tolist(), 0
            batch.append(order[pos])
            pos += 1
        yield batch


# -----------------------------------------------------------------------------
# model

def build_scratch_model(cfg, tokenizer):
    """A tiny Llama / Qwen2 causal LM from a config (no download), ids from the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    sizes = dict(vocab_size=len(tokenizer), hidden_size=cfg.n_embd, intermediate_size=cfg.n_inner,
                  num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                  num_key_value_heads=cfg.n_head, max_position_embeddings=cfg.max_len,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=None, tie_word_embeddings=True, attention_dropout=0.0)
    if cfg.arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**sizes))
    if cfg.arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**sizes))
    raise ValueError(f"unknown --arch {cfg.arch!r} (expected llama or qwen2)")


MODEL_HINT = "pass --init scratch, a checkpoint directory or a hub id"


def load_model_and_tokenizer(cfg, device):
    """Step 1: the scratch model (build_scratch_model, seeded) or --init in fp32, and its tokenizer
    (pad = EOS where it has none; left padding side, saved with the checkpoint)."""
    if cfg.init == "scratch":
        tokenizer = common.load_tokenizer(cfg.tokenizer, "--tokenizer", MODEL_HINT)
        torch.manual_seed(cfg.seed)  # identical init on every rank
        model = build_scratch_model(cfg, tokenizer)
    else:
        tokenizer = common.load_tokenizer(cfg.init, "--init tokenizer", MODEL_HINT)
        model = common.load_model(cfg.init, "--init", MODEL_HINT, dtype=torch.float32)
    if tokenizer.pad_token_id is None:  # NOTE: masks never come from ids == pad, so pad = eos is safe
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # for generation; training pads by hand (right)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    eos = sorted(common.model_eos_ids(model, tokenizer))  # NOTE: every EOS id (Qwen: <|im_end|>, <|endoftext|>)
    model.generation_config.eos_token_id = eos[0] if len(eos) == 1 else eos
    if cfg.init == "scratch":  # plain model.generate() is greedy and long enough; a pretrained
        model.generation_config.do_sample = False  # model keeps its own defaults
        model.generation_config.max_new_tokens = cfg.max_new_tokens
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"model: {cfg.init} ({cfg.arch if cfg.init == 'scratch' else type(model).__name__}), "
           f"{n_params / 1e6:.2f}M parameters")
    return model.to(device), tokenizer


# -----------------------------------------------------------------------------
# data

def load_split(dataset, split, limit=None, skip_bad=False):
    """common.load_problems (every gold checked), with a missing file or a bad row as a RunError."""
    try:
        return common.load_problems(dataset, split, limit, skip_bad=skip_bad)
    except (OSError, ValueError) as e:
        raise common.RunError(str(e)) from None


def tokenize_dataset(tokenizer, rows, max_len, where, prompt="auto", skip_bad=False):
    """Step 2: (input_ids, labels) of every row that fits in max_len (the rest are counted). A row
    without a solution is a RunError naming its file:line, or with skip_bad skipped and counted."""
    examples, dropped, bad = [], 0, 0
    for i, row in enumerate(rows):
        if not isinstance(row.get("solution"), str) or not row["solution"].strip():
            if skip_bad:
                bad += 1
                continue
            raise common.RunError(f"{row.get('_where', f'{where}: row {i + 1}')}: no solution to train on "
                                  "(pass --skip-bad to skip such rows)")
        ex = tokenize_example(tokenizer, row["question"], row["solution"], max_len, prompt)
        if ex is None:
            dropped += 1
        else:
            examples.append(ex)
    if not examples:
        raise common.RunError(f"{where}: no training example fits in --max-len {max_len}")
    print0(f"train: {len(examples)} examples ({dropped} dropped, longer than max_len={max_len}"
           + (f"; {bad} skipped without a solution)" if bad else ")"))
    return examples


# -----------------------------------------------------------------------------
# evaluation

def accuracy(model, tokenizer, problems, max_new_tokens, temperature=0.0, samples=1, batch_size=250,
             prompt="auto"):
    """Mean success (rewards.success_rewards: EOS and the gold answer) over problems, and over
    `samples` draws each when sampling; also the (text, finished, success) of every response."""
    prompts = [common.build_prompt(tokenizer, p["question"], prompt) for p in problems] * samples
    golds = [p["answer"] for p in problems] * samples
    # NOTE: sort=False: batches in problem order, as sft.py has always drawn its samples
    gens = common.generate(model, tokenizer, prompts, max_new_tokens, temperature, batch_size=batch_size, sort=False)
    texts = [tokenizer.decode(g.tokens, skip_special_tokens=True) for g in gens]
    success = grade_counted(texts, golds, [g.finished for g in gens])
    return sum(success) / max(1, len(success)), list(zip(texts, [g.finished for g in gens], success))


def grade_counted(texts, golds, finished):
    """rewards.success_rewards, where a response the grader cannot grade (a timeout, an error, a
    gold it rejects) is wrong and counted in one printed line, never a crash (as in evaluate.py)."""
    statuses = []
    try:
        success = rewards.success_rewards(texts, golds, finished, statuses=statuses)
    except ValueError:  # a gold it cannot parse (load_problems checks them all): one pair at a time
        success, statuses = [], []
        for t, g, f in zip(texts, golds, finished):
            try:
                success += rewards.success_rewards([t], [g], [f], statuses=statuses)
            except ValueError:
                success.append(0.0)
                statuses.append("error")
    bad = len(statuses) - statuses.count("ok")
    if bad:
        print0(f"grading: {bad} of {len(statuses)} responses not graded ({statuses.count('timeout')} timeouts, "
               f"{statuses.count('error')} errors): counted wrong")
    return success


def truncated_fraction(responses):
    return sum(not finished for _, finished, _ in responses) / max(1, len(responses))


def eval_only(cfg, model, tokenizer, problems):
    """--eval-only (rank 0): greedy and T=1 sampling accuracy of --init, one metrics.jsonl row."""
    t0 = time.time()
    g_acc, g_resp = accuracy(model, tokenizer, problems, cfg.max_new_tokens, batch_size=cfg.eval_batch_size,
                             prompt=cfg.prompt)
    row = {"eval/n": len(problems), "eval/greedy_accuracy": g_acc, "eval/greedy_truncated": truncated_fraction(g_resp)}
    if cfg.eval_samples > 0:
        torch.manual_seed(cfg.seed)
        s_acc, _ = accuracy(model, tokenizer, problems, cfg.max_new_tokens, temperature=1.0,
                            samples=cfg.eval_samples, batch_size=cfg.eval_batch_size, prompt=cfg.prompt)
        row.update({"eval/sampling_accuracy": s_acc, "eval/samples": cfg.eval_samples})
    row["perf/eval_s"] = time.time() - t0
    common.MetricsLogger(cfg.out_dir, append=True).log(row, echo=True)


def eval_greedy(model, tokenizer, problems, cfg, step):
    """Step 4 (rank 0): greedy accuracy on the eval problems, and one decoded sample printed."""
    acc, resp = accuracy(model, tokenizer, problems, cfg.max_new_tokens, batch_size=cfg.eval_batch_size,
                         prompt=cfg.prompt)
    text, _, success = resp[0]
    print0(f"[step {step}] Q: {problems[0]['question']}\n  gold {problems[0]['answer']}"
           f"  correct {success == 1.0}\n  {text!r}")
    return {"eval/greedy_accuracy": acc, "eval/greedy_truncated": truncated_fraction(resp)}


# -----------------------------------------------------------------------------
# training

def make_optimizer(model, cfg):
    """Step 3: AdamW, weight decay on the matrices only (not on norms and biases)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


def train_step(model, opt, mine, n_tok_global, cfg, rt, pad_id):
    """Step 3: one optimizer update from this rank's slice `mine` of the global batch, in
    micro-batches; the loss is the NLL summed over solution tokens / n_tok_global (all ranks).
    Returns (the NLL summed over all ranks, the grad norm before clipping)."""
    ddp = rt.world_size > 1
    accum = len(mine) // cfg.micro_batch_size
    model.train()
    loss_sum = 0.0
    for m in range(accum):
        input_ids, attn, labels = (t.to(rt.device) for t in collate(
            mine[m * cfg.micro_batch_size: (m + 1) * cfg.micro_batch_size], pad_id))  # (B, L) each
        # NOTE: DDP all-reduces only on the last micro-batch of the step
        ctx = model.no_sync() if ddp and m < accum - 1 else contextlib.nullcontext()
        with ctx, rt.amp:
            logits = model(input_ids=input_ids, attention_mask=attn).logits  # (B, L, V)
        nll = sum_token_nll(logits, labels)
        # NOTE: DDP averages gradients over ranks, so scale by world to get sum / global count
        loss = nll * rt.world_size / n_tok_global
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()}")
        loss.backward()
        loss_sum += nll.item()
    gnorm = float("nan")
    if cfg.grad_clip > 0:
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if ddp:  # every rank joins; the logged loss is the global token mean
        t = torch.tensor([loss_sum], dtype=torch.float64, device=rt.device)
        torch.distributed.all_reduce(t)
        loss_sum = t.item()
    return loss_sum, gnorm


def train(cfg, rt, model, tokenizer, examples, eval_problems, logger):
    """Steps 3-4: cfg.max_steps updates with periodic greedy evals; metrics.jsonl every 10 steps
    and at each eval. Returns the last step's metrics row, not yet logged (main saves the model,
    then evaluates it and logs the row)."""
    opt = make_optimizer(model, cfg)
    raw_model = model
    if rt.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[torch.device(rt.device).index] if rt.device.startswith("cuda") else None)
    per_rank = cfg.batch_size // rt.world_size
    draw = batches(len(examples), cfg.batch_size, cfg.seed)
    last, t_start = {}, time.time()
    bar = tqdm(range(cfg.max_steps), disable=not rt.master, desc="sft", dynamic_ncols=True)
    for step in bar:
        # 3. one optimizer step over the global batch; each rank its contiguous slice
        t0 = time.time()
        batch = [examples[i] for i in next(draw)]
        n_tok_global = sum(sum(t != -100 for t in lab[1:]) for _, lab in batch)  # loss normaliser
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum, gnorm = train_step(model, opt, batch[rt.rank * per_rank: (rt.rank + 1) * per_rank],
                                     n_tok_global, cfg, rt, tokenizer.pad_token_id)
        last = {"step": step + 1, "train/loss": loss_sum / max(1, n_tok_global), "train/lr": lr,
                "train/grad_norm": gnorm, "perf/step_s": time.time() - t0, "perf/elapsed_s": time.time() - t_start}
        bar.set_postfix(loss=f"{last['train/loss']:.3f}")

        # 4. periodic greedy eval on the first eval_limit problems (rank 0 only, no collectives inside);
        # the last step's eval and row come after the save (main), so a failing eval loses nothing
        if step + 1 == cfg.max_steps:
            break
        if step + 1 in cfg.save_steps and rt.master:  # a snapshot, as the end is saved; no RNG is drawn
            save(cfg, rt, raw_model, tokenizer, last, t_start, snapshot_step=step + 1)
        evaluated = bool(cfg.eval_every and (step + 1) % cfg.eval_every == 0)
        if evaluated:
            if rt.master:
                last.update(eval_greedy(raw_model, tokenizer, eval_problems, cfg, step + 1))
            common.barrier()
        if (step + 1) % 10 == 0 or evaluated:
            logger.log(last, echo=evaluated)
    return last


# -----------------------------------------------------------------------------
# main

def check_config(cfg):
    """Flags that cannot work -> one-line RunError, before anything is loaded."""
    for name in ("max_steps", "batch_size", "micro_batch_size", "max_len", "eval_batch_size", "max_new_tokens"):
        common.require(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 1")
    for name in ("warmup_steps", "eval_every", "eval_limit", "eval_samples", "weight_decay", "grad_clip"):
        common.require(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 0")
    bad = [k for k in cfg.save_steps if not 1 <= k < cfg.max_steps]
    common.require(not bad, f"--save-steps {bad}: each must be in 1..{cfg.max_steps - 1} (the last step is "
                   "saved to --out-dir anyway)")
    common.require(cfg.lr > 0 and cfg.min_lr >= 0, f"--lr {cfg.lr} / --min-lr {cfg.min_lr}: need lr > 0 and min-lr >= 0")


def save(cfg, rt, model, tokenizer, last, t_start, snapshot_step=None):
    """Step 5 (rank 0): the unwrapped model + tokenizer, and meta.json (written atomically), to
    out_dir; with snapshot_step K (--save-steps), the same to out_dir/step-K, so that a snapshot the
    build picks as the start says what made it."""
    path = cfg.out_dir if snapshot_step is None else os.path.join(cfg.out_dir, f"step-{snapshot_step}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    meta = {"config": asdict(cfg), "step": snapshot_step or cfg.max_steps, "metrics": last,
            "n_params": sum(p.numel() for p in model.parameters()), "train_wall_s": time.time() - t_start,
            "torch_threads": torch.get_num_threads(), "world_size": rt.world_size,
            "command": "python " + " ".join(sys.argv)}
    if snapshot_step is not None:
        meta["snapshot_of"] = cfg.out_dir
    common.atomic_write(os.path.join(path, "meta.json"), json.dumps(meta, indent=2).encode())
    return meta


def main(argv=None):
    cfg = common.parse_config(Config, argv)
    check_config(cfg)
    rt = common.setup_runtime(cfg.device, cfg.seed)
    print0("config: " + json.dumps(asdict(cfg)))

    # 1. model and tokenizer; the eval problems
    model, tokenizer = load_model_and_tokenizer(cfg, rt.device)
    cfg.eval_split = common.eval_split(cfg.dataset, cfg.eval_split)
    eval_problems = common.check_prompt_lengths(
        tokenizer, load_split(cfg.dataset, cfg.eval_split, cfg.eval_limit or None, cfg.skip_bad),
        common.max_prompt_tokens(model), f"{cfg.dataset}/{cfg.eval_split}", cfg.skip_bad, cfg.prompt)
    if not eval_problems:
        raise common.RunError(f"no eval problems in {cfg.dataset!r} (split {cfg.eval_split})")
    if cfg.eval_only:
        if rt.master:
            eval_only(cfg, model, tokenizer, eval_problems)
        return

    # 2. the training set, tokenized; per-rank sizes
    if cfg.batch_size % (rt.world_size * cfg.micro_batch_size):
        raise common.RunError(f"--batch-size {cfg.batch_size} must divide by world_size {rt.world_size} x "
                              f"--micro-batch-size {cfg.micro_batch_size}")
    accum = cfg.batch_size // (rt.world_size * cfg.micro_batch_size)
    print0(f"per rank: {cfg.batch_size // rt.world_size} sequences/step = {accum} micro-batches "
           f"of {cfg.micro_batch_size}")
    examples = tokenize_dataset(tokenizer, load_split(cfg.dataset, cfg.train_split, skip_bad=cfg.skip_bad),
                                cfg.max_len, f"{cfg.dataset}/{cfg.train_split}", cfg.prompt, cfg.skip_bad)

    # 3.-4. train with periodic evals; a fresh metrics.jsonl
    t_start = time.time()
    logger = common.MetricsLogger(cfg.out_dir)
    last = train(cfg, rt, model, tokenizer, examples, eval_problems, logger)

    # 5. save (the unwrapped model) + meta.json FIRST, then the final eval: an eval that fails (a bad
    # row, out of memory) cannot lose the trained weights
    if rt.master:
        meta = save(cfg, rt, model, tokenizer, last, t_start)
        print0(f"saved {cfg.out_dir} ({time.time() - t_start:.0f} s); final eval")
        last.update(eval_greedy(model, tokenizer, eval_problems, cfg, cfg.max_steps))
        logger.log(last, echo=True)
        meta["metrics"] = last
        common.atomic_write(os.path.join(cfg.out_dir, "meta.json"), json.dumps(meta, indent=2).encode())
    common.barrier()


if __name__ == "__main__":
    common.run_main(main)
