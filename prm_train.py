"""
Process and outcome reward models (PRM / ORM) trained on automatic step labels (Math-Shepherd).

A PRM here is a plain causal LM that scores a step by P(pos) / (P(pos) + P(neg)) read from its
logits at a step tag placed right after the step: the Math-Shepherd format (Wang et al. 2024,
arXiv 2312.08935), which is how the PRM of Gao et al. 2024 (arXiv 2410.15115) was built. An ORM is
the same model with one tag after the whole solution. A trained checkpoint is an ordinary
AutoModelForCausalLM directory plus meta.json["reward_model"] (tag, label tokens, input format, step
separator), which rewards.load_reward_model reads; the input text comes from rewards.rm_input_text,
so training and scoring cannot drift apart. Format ("chat", the default):

    build_prompt(question) + step_1 + TAG + "\\n\\n" + step_2 + TAG + ... + step_K + TAG    (PRM)
    build_prompt(question) + step_1 + "\\n\\n" + ... + step_K + TAG                       (ORM)

Data: step-labeled JSONL, one solution per line. Stage 1 writes it; data/prm800k/prepare.py and
data/math_shepherd/prepare.py convert the public data sets to it; --data reads only this schema:

    {"question": str, "steps": [str, ...], "labels": [float in [0, 1], one per step],
     "correct": 0 | 1 | null, ...}      optional: "answer"; from stage 1 also "id" (problem index),
                                        "sample", "response", "finished" (EOS seen), "soft" (bool)

  labels[k] is the soft label of step k (a Monte-Carlo fraction, or a human rating mapped to
  [0, 1]); the hard target is labels[k] > 0. "correct" is the ORM target (null: not used by the
  ORM). "soft": false marks labels set without rollouts (1d). No step contains the separator.

Algorithm
  1. Label (skipped with --data): Math-Shepherd Monte-Carlo labels, resumable. For chunks of
     `label_chunk` problems (the unit of resume):
     a. sample `samples_per_problem` solutions per problem from --policy at `temperature`, batched
        (every sample of stage 1 comes from common.sample, the KV-cached sampler of ppo.py's
        rollouts: plain softmax, a budget per row, finished rows leave the batch; see sample_n);
     b. split each into steps (METHOD §3); every step but the last gives a prefix
        = prompt + response up to the end of step k + separator;
     c. sample `completions` continuations of every prefix: a whole batch of prefixes goes through
        ONE sampler call (each prefix `completions` times; about gen_batch sequences; longest
        prefixes first; each row's budget is max_new_tokens minus its prefix's response tokens);
     d. soft label of step k = fraction of rollouts from its prefix that end (EOS) with the gold
        answer; hard label = soft > 0 ("some completion reaches the gold", Math-Shepherd). The last
        step's label is the solution's own correctness, which is also the ORM label. Correct
        solutions skip c (--no-mc-correct, the default): counting the solution itself as a
        rollout, all their hard labels are 1 already;
     e. append the chunk's records to the labeled JSONL; a rerun skips the problems already there.
  2. Train (PRM or ORM, BCE at the tags):
     a. read the labeled records (--data, or stage 1's file) and hold out `eval_frac` of the
        questions (by a hash of the question text, so no question is in both sides);
     b. load --init (grown by --extra-layers), add the tag as a special token when it cannot be read
        as text (its row starts at the mean row; the embedding never shrinks), and build the inputs
        with rewards.rm_input_text: PRM a tag after every step, ORM one tag at the end;
     c. binary cross-entropy with logits on m = logit(pos) - logit(neg) at every tag (hard or soft
        targets), summed over the tags of the optimizer batch / their count. AdamW, linear warmup
        then cosine decay.
  3. Save and evaluate:
     a. save_pretrained (model + tokenizer) + meta.json (config, reward_model block, metrics);
     b. evaluate the SAVED checkpoint (rewards.load_reward_model) on the held-out questions: PRM
        step-level accuracy (threshold 0.5 vs hard label) and AUC; ORM accuracy and AUC against
        correctness. Printed, appended to metrics.jsonl and written into meta.json.

Departures from Math-Shepherd / the paper [decisions, flags]
  - The sampled solution itself is one of the rollouts of each of its prefixes (it is a genuine
    policy continuation of every prefix), so a step's soft label is (hits + correct) / (N + 1)
    (--no-include-self for the plain N-completion estimate). The paper does not give N; we use
    N = 8 on arith.
  - PRM800K (data/prm800k/prepare.py --neutral): rating 1 -> 1, -1 -> 0, neutral 0 -> 1 by default
    ("not wrong"); the trajectory follows the chosen completion and stops at the first -1 step.
  - Correct solutions are not rolled out by default (--no-mc-correct): their hard labels are 1
    exactly (see 1d); soft labels then exist only for incorrect solutions.
  - --extra-layers / --train-only-extra: the reward model is the policy plus identity-initialised
    layers on top (grow_layers); --train-only-extra trains only those.

The implicit form (--form implicit; Yuan et al. 2024, arXiv 2412.01981; our addition, METHOD §5)
  No tag and no extra layers: the reward model is --init itself, trained, and a frozen copy of
  --init is its reference pi_ref (saved in <out_dir>/ref). Its input is the policy's own text
  (build_prompt(question) + steps joined by the separator); the margin after step k is
      m_k = beta * sum_{first response token <= t <= last token of step k} log pi(y_t) - log pi_ref(y_t)
  (rewards.implicit_margins), trained with the same BCE on the same labels as 2c; an ORM reads
  only the last step's m. It starts at m = 0 (every score 1/2) from a model that already predicts
  every digit: the shipped arith ORM uses it (and the PRM did, up to the likelihood form below),
  because the tag form never learned to check arithmetic at this scale (README, "Reward models as
  verifiers").
  --ref DIR freezes another model (same vocabulary, any size) as pi_ref instead: the margins then
  start at the contrast beta * sum log pi_init - log pi_ref, not at 0. On arith, --init the v2 start
  and --ref the v3 start read 0.858 within-problem AUC on valid before training, 0.862 after (the
  shipped PRM: 0.853); README, "Reward models as verifiers" (bench/logprob_readout.py).

The likelihood form (--form likelihood; our addition, PRM only)
  No tag and no reference: the reward model is --init itself, and step k's margin is
      m_k = beta * min_{j <= k} S_j + offset,   S_j = sum of log pi(y_t) over step j's tokens
  (rewards.likelihood_margins; step j's tokens run from the token after step j-1's last one, the
  separator included). A prefix is as good as its worst step, so m never rises along a response, as
  Monte-Carlo labels never rise after a slip. Before training, (beta, offset) are fitted once to the
  training targets on --init's own S (fit_logistic, a two-parameter logistic regression) and then
  kept; training moves only the network, with the same BCE on the same labels. So training starts
  from --init's own reading of each step instead of from "every step 1/2", as the implicit form does.
  Why: on arith the v2 start's untrained step log-likelihood already ranks right above wrong answers
  to one question better than any trained PRM (README, "A contrast reference"). The cost: a step's
  S falls with its length (nats are summed), so under RL a longer step reads worse.

Commands
  CPU, the shipped arith PRM and ORM (scripts/build_arith.sh runs exactly this: labels on 2 ranks
  14-23 min, then the two trainings side by side, about 16 min for the ORM's 6 epochs (the PRM's 3:
  9 min), on 2 cores;
  OMP_NUM_THREADS=1 keeps every stage bit-reproducible on one machine):
    export OMP_NUM_THREADS=1
    torchrun --standalone --nproc_per_node=2 prm_train.py --init models/arith-policy --label-only \\
        --labels-path out/arith-labels.jsonl --num-problems 4096 --samples-per-problem 4 --completions 8
    cat out/arith-labels.jsonl.rank0 out/arith-labels.jsonl.rank1 > out/arith-labels.jsonl
    python prm_train.py --init models/arith-policy-v2 --data out/arith-labels.jsonl --form likelihood \\
        --lr 3e-4 --min-lr 3e-5 --epochs 3 --soft-labels --save-steps 0 150 450 900 --out-dir models/arith-prm
    (then scripts/pick_prm.py keeps whichever of the end and the snapshots in models/arith-prm/step-N
    ranks the start's own answers best on valid: how far training helps is not stable across CPUs)
    python prm_train.py --init models/arith-policy-v2 --data out/arith-labels.jsonl --form implicit \\
        --beta 0.5 --lr 3e-4 --min-lr 3e-5 --epochs 2 --objective outcome --out-dir models/arith-orm
  (the labels come from the start policy, models/arith-policy; the reward models start from
  models/arith-policy-v2, the same SFT run to 1500 steps, which reads arithmetic better: on the held-
  out labels, AUC 0.79 vs 0.74 and step-2 corruption 0.85 vs 0.55 at step 400 of a short probe,
  bench/prm_learnability.py --init)
  (the tag-form models/arith-prm-tag and arith-orm-tag: --extra-layers 2 --lr 3e-4 --min-lr 3e-5
  --epochs 4 instead of the --form / --epochs above)
  One GPU, a Qwen2.5-Math PRM from a policy's own samples on MATH (labels, then training):
    python prm_train.py --init Qwen/Qwen2.5-Math-1.5B-Instruct --dataset math --split train \\
        --num-problems 7500 --samples-per-problem 8 --completions 8 --max-new-tokens 1024 \\
        --gen-batch 512 --step-tag "ки" --lr 1e-5 --min-lr 1e-6 --batch-size 64 --micro-batch-size 4 \\
        --max-len 2048 --out-dir out/prm-math
  8 GPUs: `torchrun --nproc_per_node=8 prm_train.py ...` (labels: each rank its chunks, one JSONL
  per rank; training: DDP, batch_size is global).
  Public step labels instead of sampling (convert once, then train on the file):
    python data/math_shepherd/prepare.py                 # peiyi9979/Math-Shepherd (online)
    python data/prm800k/prepare.py --source path/to/prm800k/data/phase2_train.jsonl
    python prm_train.py --init <model> --data data/math_shepherd/train.jsonl --out-dir out/prm-ms

Expected result (arith, scripts/build_arith.sh on the AMD EPYC machine that built the shipped set):
the likelihood PRM prints the fitted beta 0.2816, offset -0.0354 and ends at held-out step AUC
0.837 (solution AUC by the min step 0.878); scripts/pick_prm.py then keeps its step-0 snapshot (the
fitted scale, no update: held-out 0.833 / 0.871, valid within-problem AUC 0.869 against the end's
0.829), which is models/arith-prm. The implicit ORM: held-out solution AUC 0.798. On test the
shipped PRM scores a step-2 slip lower in 94% of pairs, ranks a question's right answers above its
wrong ones with AUC 0.866, and best-of-8 by it is 13.4 points above greedy at T = 0.5 (at T = 1:
AUC 0.809, best-of-8 +5.8; README, "The arith world v3"). The previous set (an Intel Xeon's
policies): the 3-epoch end kept, held-out 0.890 / 0.924, beta 0.4765, offset 0.7115; test 95%,
0.874, +13.4; the implicit PRM it replaced: 0.844 / 0.874, 88%, 0.806, +8.4. The tag form
(--extra-layers 2, the v2 models/arith-*-tag): 0.742 / 0.711 / 0.678 and ORM 0.666 on the v2
labels, weak verifiers that never learned to check the arithmetic. Gate before PPO: held-out step AUC >= 0.75.

Shapes: B sequences, L input tokens, K step tags per sequence (right-padded, with a bool mask).
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import common
import rewards
from common import RunError, field, print0


@dataclass
class Config:
    # model
    init: str = field("models/arith-policy", "causal LM the reward model starts from (checkpoint dir or hub id)")
    objective: str = field("process", "process: PRM, a tag after every step; outcome: ORM, one tag at the end",
                           choices=("process", "outcome"))
    step_tag: str = field("<step>", "step tag; added as a special token when it cannot be read as text in "
                          "--input-format (rewards.tag_read_id)")
    pos_token: str = field("+", "label token read as 'good' at the tag")
    neg_token: str = field("-", "label token read as 'bad' at the tag")
    input_format: str = field("chat", "reward-model input text (see rewards.rm_input_text)",
                              choices=("chat", "math-shepherd"))
    form: str = field("tag", "tag: P(pos) read at a step tag (Math-Shepherd, the paper's PRM); implicit: step k's "
                      "margin is beta * the sum of log pi/pi_ref over the response up to step k, pi_ref = --init "
                      "or --ref (no tag, no extra layers; docstring 'The implicit form'); likelihood: beta * the "
                      "lowest per-step sum of log pi among steps 1..k + offset, beta and offset fitted to the "
                      "labels on --init before training (PRM only; docstring 'The likelihood form')",
                      choices=("tag", "implicit", "likelihood"))
    beta: float = field(0.5, "--form implicit: the scale of the log-ratio sum (--form likelihood fits its own)")
    ref: str = field("", "--form implicit: the reference pi_ref, frozen ('' = --init as it was, margins start at "
                     "0); another model with --init's vocabulary starts them at the two models' log-prob contrast")
    extra_layers: int = field(0, "decoder layers appended to --init, starting as the identity (grow_layers)")
    train_only_extra: bool = field(False, "freeze the --init layers and embeddings; train the extra layers "
                                          "and the final norm (needs --extra-layers > 0)")
    step_sep: str = field("\n\n", "step separator (METHOD §3); PRM training and RL must use the same one")
    # data: automatic labels (stage 1) or a step-labeled file
    data: str = field("", "train on this step-labeled JSONL instead of labeling (schema in the docstring; "
                          "data/prm800k and data/math_shepherd prepare.py write it)")
    labels_path: str = field("", "labeled JSONL to write / resume (default <out_dir>/labels.jsonl)")
    label_only: bool = field(False, "stop after stage 1 (labels)")
    policy: str = field("", "sampler for the labels (default: --init)")
    dataset: str = field("arith", "problems to label: arith | gsm8k | math | math500 | path.jsonl")
    split: str = field("train", "split of --dataset")
    prompt: str = field("auto", "prompt format (common.build_prompt): auto | chat | cot | plain; "
                        "also the PRM input's prompt (saved in meta.json)", choices=common.PROMPTS)
    num_problems: int = field(1024, "problems to label (the first N of the split)")
    skip_bad: bool = field(False, "skip and count bad rows of --dataset (no question or gold, an ungradable gold, "
                           "an overlong question or prompt) instead of stopping at the first with its file:line")
    samples_per_problem: int = field(4, "solutions sampled per problem (M)")
    completions: int = field(8, "Monte-Carlo completions per step prefix (N)")
    include_self: bool = field(True, "count the sampled solution as one rollout of each of its prefixes")
    mc_correct: bool = field(False, "also roll out prefixes of CORRECT solutions (needed for their soft labels)")
    temperature: float = field(1.0, "sampling temperature for solutions and completions")
    top_p: float = field(1.0, "nucleus sampling for solutions and completions (1.0 = off)")
    max_new_tokens: int = field(160, "response budget in tokens; a rollout without EOS within it is wrong (METHOD §4)")
    gen_batch: int = field(256, "sequences per sampler call (prefixes x completions)")
    label_chunk: int = field(32, "problems per chunk, the unit written to the JSONL and resumed")
    # training
    soft_labels: bool = field(False, "BCE targets: the soft labels instead of hard 0/1 (label > 0)")
    eval_frac: float = field(0.125, "held-out fraction of the questions (by a hash of the question)")
    epochs: float = field(4.0, "passes over the training examples (ignored when --max-steps > 0)")
    max_steps: int = field(0, "optimizer steps (0 = from --epochs)")
    batch_size: int = field(32, "sequences per optimizer step, global (all ranks, all micro-batches)")
    micro_batch_size: int = field(32, "sequences per forward pass per rank")
    lr: float = field(3e-3, "peak learning rate (arith; about 1e-5 for billion-parameter models)")
    min_lr: float = field(3e-4, "cosine decay floor")
    warmup_steps: int = field(20, "linear warmup steps")
    weight_decay: float = field(0.0, "AdamW weight decay of the matrices")
    grad_clip: float = field(1.0, "max gradient norm (0 = off)")
    save_steps: list[int] = field([], "also save the reward model after these optimizer steps (0 = before the "
                                  "first: --init as the chosen form reads it), each to <out_dir>/step-N, "
                                  "loadable as the end is; candidates for scripts/pick_prm.py")
    max_len: int = field(512, "inputs longer than this many tokens are dropped (count printed)")
    eval_batch_size: int = field(64, "sequences per forward pass in the held-out evaluation")
    # runtime
    seed: int = field(1337, "seed of sampling, initialisation and data order")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    out_dir: str = field("out/prm", "checkpoint, meta.json, metrics.jsonl (and labels.jsonl by default)")


def policy_positions(path):
    """max_position_embeddings of the model at `path` (its config only), None if unknown."""
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(common.model_source(path, "--policy", MODEL_HINT)),
                       "max_position_embeddings", None)
    except (OSError, ValueError):
        return None


def check_config(cfg):
    """Settings that cannot work together, or sizes that cannot work -> one-line RunError."""
    for name in ("num_problems", "samples_per_problem", "max_new_tokens", "gen_batch", "label_chunk",
                 "batch_size", "micro_batch_size", "max_len", "eval_batch_size"):
        common.require(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 1")
    for name in ("completions", "extra_layers", "max_steps", "warmup_steps", "weight_decay", "grad_clip"):
        common.require(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 0")
    common.require(0 < cfg.temperature < float("inf"), f"--temperature {cfg.temperature}: must be > 0 "
                   "(Monte-Carlo labels need sampled completions)")
    common.require(0 < cfg.top_p <= 1, f"--top-p {cfg.top_p}: must be in (0, 1]")
    common.require(0 <= cfg.eval_frac < 1, f"--eval-frac {cfg.eval_frac}: must be in [0, 1)")
    if cfg.form == "implicit":
        common.require(cfg.extra_layers == 0 and not cfg.train_only_extra,
                       "--form implicit: the model is --init itself (its reference); --extra-layers must be 0")
        common.require(cfg.input_format == "chat", "--form implicit reads the policy's own text: --input-format chat")
        common.require(0 < cfg.beta < float("inf"), f"--beta {cfg.beta}: must be > 0")
    elif cfg.form == "likelihood":
        common.require(cfg.extra_layers == 0 and not cfg.train_only_extra,
                       "--form likelihood: the model is --init itself; --extra-layers must be 0")
        common.require(cfg.input_format == "chat", "--form likelihood reads the policy's own text: --input-format chat")
        common.require(cfg.objective == "process", "--form likelihood is a PRM form (the min over steps): "
                       "--objective process")
    if cfg.form != "implicit":
        common.require(not cfg.ref, f"--ref {cfg.ref}: only --form implicit has a reference")
    common.require(cfg.epochs > 0 or cfg.max_steps > 0, "need --epochs > 0 or --max-steps > 0")
    common.require(all(k >= 0 for k in cfg.save_steps), f"--save-steps {cfg.save_steps}: each must be >= 0")
    common.require(cfg.lr > 0 and cfg.min_lr >= 0, f"--lr {cfg.lr} / --min-lr {cfg.min_lr}: need lr > 0 and min-lr >= 0")
    if not cfg.mc_correct and not cfg.include_self:
        raise RunError("--no-mc-correct needs --include-self (it is what makes those labels exactly 1)")
    if cfg.train_only_extra and not cfg.extra_layers:
        raise RunError("--train-only-extra needs --extra-layers > 0")


# -----------------------------------------------------------------------------
# pure helpers

def auc(scores, labels):
    """ROC AUC = P(score of a random positive > score of a random negative), ties count 1/2.

    Mann-Whitney with average ranks, O(n log n). NaN when one class is absent.
    """
    pairs = sorted(zip(scores, labels), key=lambda x: x[0])
    n_pos = sum(1 for _, y in pairs if y)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + 1 + j) / 2  # ranks i+1..j share their mean
        rank_sum += avg_rank * sum(1 for _, y in pairs[i:j] if y)
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def mc_labels(hits, completions, correct, include_self):
    """Soft step labels from Monte-Carlo hits. hits[k] = completions of prefix k (every step but the
    last) that reached the gold; the last step's label is the solution's own correctness."""
    extra = 1 if include_self else 0
    soft = [(h + extra * int(correct)) / (completions + extra) for h in hits]
    return soft + [float(correct)]


def is_eval_question(question, eval_frac):
    """Held-out split by a hash of the question text: stable across runs, files and orders."""
    h = int(hashlib.sha1(question.encode("utf-8")).hexdigest()[:8], 16) / 16 ** 8
    return h < eval_frac


def lr_at(step, cfg, max_steps):
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at max_steps (nanoGPT)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    ratio = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


# -----------------------------------------------------------------------------
# step-labeled records (the schema in the docstring)

def has_labels(record, kind):
    """Usable as a PRM example (one label per step) or an ORM example (correctness known)."""
    if kind == "prm":
        return bool(record.get("steps")) and len(record["labels"]) == len(record["steps"])
    return record.get("correct") is not None


def read_records(path):
    """Step-labeled records of a JSONL file (the schema in the docstring).

    Every data error is a one-line RunError naming the file; raw PRM800K / Math-Shepherd rows name
    the prepare script that converts them."""
    convert = ("convert public data first: python data/prm800k/prepare.py --source FILE, or "
               "python data/math_shepherd/prepare.py")
    if not os.path.isfile(path):
        raise RunError(f"step-labeled data {path!r} not found (a JSONL file; {convert})")
    try:
        lines = common.read_jsonl(path, with_lines=True)
    except (OSError, ValueError) as e:
        raise RunError(f"{e}: step-labeled data must be JSONL ({convert})") from None
    if not lines:
        raise RunError(f"{path}: no records")
    rows = [r for _, r in lines]
    for n, r in lines:  # n: the line number
        if isinstance(r.get("label"), dict) and "steps" in r["label"]:
            raise RunError(f"{path}: raw PRM800K rows; convert them: python data/prm800k/prepare.py --source {path}")
        if isinstance(r.get("input"), str) and isinstance(r.get("label"), str):
            raise RunError(f"{path}: raw Math-Shepherd rows; convert them: "
                           f"python data/math_shepherd/prepare.py --source {path}")
        if not (isinstance(r.get("question"), str) and isinstance(r.get("steps"), list)
                and isinstance(r.get("labels"), list)):
            raise RunError(f"{path}:{n}: not a step-labeled record (keys {sorted(r)}; expected question, "
                           "steps, labels, correct)")
        number = (int, float)
        if (not all(isinstance(x, str) for x in r["steps"])
                or not all(isinstance(y, number) for y in r["labels"])
                or not (r.get("correct") is None or isinstance(r["correct"], number))):
            raise RunError(f"{path}:{n}: steps must be strings, labels numbers and correct a boolean, a number "
                           "or null")
    common.warn_math_test_leak(path, rows)
    return rows


def read_labels_resumable(path):
    """Records of a labeled JSONL being written (stage 1 resumes from it), read line by line.

    LF or CRLF line ends. A corrupt line anywhere (not UTF-8, not JSON, not a record with an "id")
    is skipped and counted, with one warning naming file:line; the records after it are kept. Only
    the LAST line, when it has no newline, can be a partial write (a crash mid-append): unparsable,
    it is truncated away (its problem is labelled again); parsable, it is kept and the missing
    newline is added, so the next append starts on a clean line.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else the unterminated last line
    rows, bad = [], []

    def parse(raw):
        try:
            row = json.loads(raw.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
            return None
        return row if isinstance(row, dict) and "id" in row else None

    for lineno, raw in enumerate(lines, 1):
        if raw.strip():
            row = parse(raw)
            (bad.append(lineno) if row is None else rows.append(row))
    if tail.strip():
        row = parse(tail)
        with open(path, "rb+") as f:
            if row is None:  # torn by a crash mid-write: cut it off
                f.truncate(len(data) - len(tail))
                print0(f"{path}:{len(lines) + 1}: torn last line (a partial write) removed; its problem is labelled again")
            else:
                rows.append(row)
                f.seek(0, 2)
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
    if bad:
        shown = ", ".join(f"{path}:{n}" for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
        print0(f"WARNING: skipped {len(bad)} corrupt line(s) of labeled records ({shown}); their problems "
               "are labelled again")
    return rows


def drop_partial_problems(path, rows, samples_per_problem):
    """The ids of the problems with all their samples in `rows`; the records of the other problems
    (a chunk cut by a crash, a corrupt line) are removed from the file (atomically), so that
    relabelling them adds no duplicate."""
    samples = {}
    for r in rows:
        samples.setdefault(r["id"], set()).add(r.get("sample"))
    done = {i for i, s in samples.items() if len(s) >= samples_per_problem}
    if len(done) < len(samples):
        kept = [r for r in rows if r["id"] in done]
        common.atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))
        print0(f"{path}: {len(samples) - len(done)} problem(s) with only part of their samples; their "
               f"{len(rows) - len(kept)} record(s) removed, to be labelled again")
    return done


# -----------------------------------------------------------------------------
# 1. automatic labels (Math-Shepherd Monte-Carlo completions)

def sample_n(model, tokenizer, texts, n, budgets, temperature, top_p):
    """n sampled continuations of every text in ONE common.sample call (a left-padded batch).

    budgets[i]: max new tokens for text i, per row: a row stops at its own budget or EOS and leaves
    the batch (and KV cache) at once, unlike Hugging Face generate, which keeps finished rows and
    runs to the longest budget (README, bench/bench_prm.py). Plain softmax at `temperature`; top_p
    < 1 is nucleus sampling (common.nucleus). Returns len(texts) * n tuples (token ids without EOS,
    finished) in repeat_interleave order (text 0's n samples first), and the generated-token count
    (up to and including EOS). The noise comes from a generator seeded by one draw of torch's global
    RNG, so the samples are a function of torch.manual_seed (prm_train seeds it per chunk), and a
    row's draws depend on its index in the call only (common.sample).
    """
    eos = sorted(common.model_eos_ids(model, tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts for _ in range(n)]
    device = next(model.parameters()).device
    x, attn = common.left_pad(ids, pad_id)  # (B, P)
    gen = torch.Generator(device=device).manual_seed(int(torch.randint(2 ** 62, ())))
    model.eval()
    resp, lengths, finished = common.sample(model, x.to(device), attn.to(device),
                                            [b for b in budgets for _ in range(n)], temperature, eos, pad_id,
                                            gen, vocab_size=len(tokenizer), top_p=top_p)
    out = [(resp[i, :n_i - fin].tolist(), bool(fin))
           for i, (n_i, fin) in enumerate(zip(lengths.tolist(), finished.tolist()))]
    return out, int(lengths.sum())


def label_problems(model, tokenizer, problems, samples_per_problem, completions, temperature, top_p,
                   max_new_tokens, gen_batch, step_sep, include_self, bar=None, mc_correct=True,
                   prompt="auto"):
    """Steps 1a-1d for a list of problems -> (records, stats). Every sample is one batched sample_n
    call (common.sample); stats: gen_tokens (up to and including EOS), gen_s, gen_calls, rollouts;
    correctness is rewards.success_rewards (a rollout without EOS is wrong, METHOD §4).

    mc_correct=False skips the rollouts of correct solutions: with include_self each of their prefixes
    already has a rollout that reaches the gold (the solution itself), so their hard labels are exactly
    1 without sampling; their soft labels are unknown, written as 1.0, and the record says "soft": false.
    """
    stats = {"gen_tokens": 0, "gen_s": 0.0, "gen_calls": 0, "rollouts": 0}

    def run(texts, n, budgets):
        t0 = time.time()
        res, n_tok = sample_n(model, tokenizer, texts, n, budgets, temperature, top_p)
        stats["gen_tokens"] += n_tok
        stats["gen_s"] += time.time() - t0
        stats["gen_calls"] += 1
        stats["rollouts"] += len(res)
        return res

    # 1a. M solutions per problem
    prompts = [common.build_prompt(tokenizer, p["question"], prompt) for p in problems]
    per_call = max(1, gen_batch // samples_per_problem)
    sols = []  # (problem index, text, finished)
    for s in range(0, len(prompts), per_call):
        res = run(prompts[s: s + per_call], samples_per_problem, [max_new_tokens] * len(prompts[s: s + per_call]))
        for j, (ids, fin) in enumerate(res):
            sols.append((s + j // samples_per_problem, tokenizer.decode(ids, skip_special_tokens=True), fin))
    # 1b. step prefixes (every step but the last)
    jobs = []  # (solution index, step index, prefix text after the prompt, token budget)
    split = []
    correct = [int(c > 0) for c in rewards.success_rewards(
        [text for _, text, _ in sols], [problems[pi]["answer"] for pi, _, _ in sols], [fin for *_, fin in sols])]
    for si, (pi, text, fin) in enumerate(sols):
        steps, ends = rewards.split_steps_with_ends(text, step_sep)
        split.append(steps)
        if correct[si] and not mc_correct:
            continue
        for k in range(len(steps) - 1):
            prefix = text[: ends[k]] + step_sep
            used = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
            jobs.append((si, k, prefix, max(1, max_new_tokens - used)))
    if bar is not None:
        bar.total = (bar.total or 0) + len(jobs)
        bar.refresh()
    # 1c. N completions per prefix, a batch of prefixes per sampler call (longest first: less padding)
    hits = {}
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][2]))
    per_call = max(1, gen_batch // completions)
    for s in range(0, len(order), per_call):
        chunk = [jobs[i] for i in order[s: s + per_call]]
        texts = [prompts[sols[si][0]] + prefix for si, _, prefix, _ in chunk]
        res = run(texts, completions, [b for *_, b in chunk])
        prefixes = [prefix for _, _, prefix, _ in chunk for _ in range(completions)]  # res order
        golds = [problems[sols[si][0]]["answer"] for si, *_ in chunk for _ in range(completions)]
        ok = rewards.success_rewards([p + tokenizer.decode(ids, skip_special_tokens=True)
                                      for p, (ids, _) in zip(prefixes, res)], golds, [fin for _, fin in res])
        for j, (si, k, _, _) in enumerate(chunk):
            hits[(si, k)] = int(sum(ok[j * completions: (j + 1) * completions]))
        if bar is not None:
            bar.update(len(chunk))
    # 1d. labels
    records = []
    for si, (pi, text, fin) in enumerate(sols):
        p, steps = problems[pi], split[si]
        rolled = mc_correct or not correct[si]
        if rolled:
            labels = mc_labels([hits[(si, k)] for k in range(len(steps) - 1)], completions, correct[si],
                               include_self) if steps else []
        else:
            labels = [1.0] * len(steps)
        records.append({"id": p.get("_id", pi), "sample": si % samples_per_problem,
                        "question": p["question"], "answer": p["answer"], "response": text,
                        "finished": bool(fin), "steps": steps, "labels": labels, "correct": correct[si],
                        "soft": rolled})
    return records, stats


# -----------------------------------------------------------------------------
# 2. train: model, inputs (2b) and loss (2c)

def grow_layers(model, n):
    """Append n decoder layers that start as the identity: copies of the last layer with the output
    projections of their attention and MLP branches zeroed, so the grown model computes exactly what
    --init did (tested). NOTE: why: a verifier must compare the policy's own prediction of a digit
    (formed in the LAST layer at the previous position) with the digit written; a model as deep as
    the policy cannot route that to the tag, new layers on top can. Llama / Qwen2 / Mistral layouts.
    """
    import copy

    layers = getattr(model.base_model, "layers", None)
    if layers is None or not hasattr(layers[-1], "self_attn") or not hasattr(layers[-1], "mlp"):
        raise RunError(f"--extra-layers supports Llama-style decoders, not {type(model).__name__}")
    for _ in range(n):
        new = copy.deepcopy(layers[-1])
        for proj in (new.self_attn.o_proj, new.mlp.down_proj):
            torch.nn.init.zeros_(proj.weight)
            if proj.bias is not None:
                torch.nn.init.zeros_(proj.bias)
        new.self_attn.layer_idx = len(layers)
        layers.append(new)
    model.config.num_hidden_layers = len(layers)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types) + [model.config.layer_types[-1]] * n
    return model


def build_examples(tokenizer, records, kind, tag_id, soft, cfg):
    """(ids, tag positions, targets) per record, inputs from rewards.rm_input_text (the scorer's own);
    --form implicit: (ids, step-end positions, targets, first response token) from rewards.implicit_input.

    PRM targets: the soft MC fractions, or hard = 1 when the fraction is > 0 (some rollout reached the
    gold: Math-Shepherd's hard estimate, not a 0.5 threshold). ORM target: the solution's correctness.
    Records without usable labels are skipped; inputs longer than cfg.max_len are dropped and counted.
    """
    examples, dropped = [], 0
    add_special = cfg.input_format == "math-shepherd" or not getattr(tokenizer, "chat_template", None)
    for r in records:
        if not has_labels(r, kind):
            continue
        if kind == "prm":
            targets = [float(y) if soft else float(y > 0) for y in r["labels"]]
        else:
            targets = [float(r["correct"])]
        if cfg.form != "tag":  # implicit, likelihood: (ids, step ends, targets, first response token)
            ids, pos, start = rewards.implicit_input(tokenizer, r["question"], r["steps"], kind, cfg.step_sep,
                                                     cfg.prompt, add_special)
            example = (ids, pos, targets, start)
        else:
            text, spans = rewards.rm_input_text(tokenizer, r["question"], r["steps"], cfg.step_tag, kind,
                                                cfg.input_format, cfg.step_sep, cfg.prompt)
            ids, pos = rewards.encode_rm_input(tokenizer, text, spans, tag_id, add_special)
            example = (ids, pos, targets)
        if len(ids) > cfg.max_len:
            dropped += 1
            continue
        examples.append(example)
    return examples, dropped


def collate(examples, pad_id):
    """Right-pad -> input_ids (B, L), attention_mask (B, L), tag_pos (B, K), targets (B, K), tag_mask (B, K)."""
    B = len(examples)
    L = max(len(e[0]) for e in examples)
    K = max(len(e[1]) for e in examples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    pos = torch.zeros(B, K, dtype=torch.long)
    tgt = torch.zeros(B, K, dtype=torch.float)
    tmask = torch.zeros(B, K, dtype=torch.bool)
    for b, (i, p, t) in enumerate(e[:3] for e in examples):
        ids[b, : len(i)] = torch.tensor(i)
        attn[b, : len(i)] = 1
        pos[b, : len(p)] = torch.tensor(p)
        tgt[b, : len(t)] = torch.tensor(t)
        tmask[b, : len(t)] = True
    return ids, attn, pos, tgt, tmask


class TagScorer(torch.nn.Module):
    """The causal LM read at the tags: forward -> (B, K) margins logit(pos) - logit(neg).

    A module only so DDP can wrap it (gradients of the LM are synced through this forward)."""

    def __init__(self, model, label_ids):
        super().__init__()
        self.model, self.label_ids = model, tuple(label_ids)

    def forward(self, input_ids, attention_mask, tag_pos):
        return rewards.tag_margins(self.model, None, input_ids, attention_mask, tag_pos, self.label_ids)


class ImplicitScorer(torch.nn.Module):
    """--form implicit: forward -> (B, K) margins beta * sum of log pi / pi_ref up to each step end."""

    def __init__(self, model, ref, beta):
        super().__init__()
        self.model, self.beta = model, beta
        self.__dict__["ref"] = ref  # NOTE: not a submodule: frozen, never synced, never saved with the model

    def forward(self, input_ids, attention_mask, tag_pos, start):
        return rewards.implicit_margins(self.model, self.ref, input_ids, attention_mask, start, tag_pos, self.beta)


class LikelihoodScorer(torch.nn.Module):
    """--form likelihood: forward -> (B, K) margins beta * min_{j <= k} (log pi summed over step j) + offset."""

    def __init__(self, model, beta, offset):
        super().__init__()
        self.model, self.beta, self.offset = model, beta, offset

    def forward(self, input_ids, attention_mask, tag_pos, start):
        return rewards.likelihood_margins(self.model, input_ids, attention_mask, start, tag_pos, self.beta,
                                          self.offset)


def fit_logistic(x, y, iters=100):
    """(a, c) minimising the binary cross-entropy of sigmoid(a * x + c) against targets y in [0, 1]
    (soft targets allowed), by Newton's method in float64. x, y: 1-D sequences of the same length."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    X = torch.stack([x, torch.ones_like(x)], 1)  # (N, 2)
    w = torch.zeros(2, dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(X @ w)
        grad = X.T @ (p - y)
        hess = X.T @ (X * (p * (1 - p))[:, None]) + 1e-9 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if step.abs().max() < 1e-10:
            break
    return float(w[0]), float(w[1])


@torch.no_grad()
def calibrate_likelihood(model, examples, pad_id, device, batch_size=64):
    """--form likelihood, before training: fit (beta, offset) of sigmoid(beta * m + offset) to the
    training targets, m = --init's lowest per-step log-likelihood so far (likelihood_margins at 1, 0)."""
    model.eval()
    xs, ys = [], []
    for s in range(0, len(examples), batch_size):
        chunk = examples[s: s + batch_size]
        ids, attn, pos, tgt, tmask = (t.to(device) for t in collate(chunk, pad_id))
        start = torch.tensor([e[3] for e in chunk], device=device)
        m = rewards.likelihood_margins(model, ids, attn, start, pos, 1.0, 0.0)
        xs += m[tmask].tolist()
        ys += tgt[tmask].tolist()
    return fit_logistic(xs, ys)


def bce_sum(margins, targets, tag_mask):
    """Summed binary cross-entropy with logits over real tags, fp32. All (B, K)."""
    loss = F.binary_cross_entropy_with_logits(margins.float(), targets, reduction="none")  # (B, K)
    return (loss * tag_mask).sum()


# -----------------------------------------------------------------------------
# 3b. held-out evaluation (of the saved checkpoint)

def evaluate_rm(rm, records, batch_size=64):
    """PRM: step accuracy (0.5 threshold vs hard label) + step AUC, and solution AUC of the min step
    score vs correctness; ORM: accuracy + AUC vs correctness. Scores come from
    rewards.score_responses on the record's own steps (no re-split), with the scorer's input format."""
    recs = [r for r in records if has_labels(r, rm.kind)]
    scores = rewards.score_responses(rm, [r["question"] for r in recs], [r["steps"] for r in recs], batch_size)
    targets = [[float(y > 0) for y in r["labels"]] if rm.kind == "prm" else [float(r["correct"])] for r in recs]
    correct = [r.get("correct") for r in recs]
    flat_s = [x for s in scores for x in s]
    flat_y = [y for t in targets for y in t]
    acc = sum((s > 0.5) == (y > 0.5) for s, y in zip(flat_s, flat_y)) / max(1, len(flat_y))
    if rm.kind == "prm":
        sol = [(min(s), c) for s, c in zip(scores, correct) if c is not None and s]
        return {"eval/n_solutions": len(recs), "eval/n_steps": len(flat_y),
                "eval/pos_frac": sum(flat_y) / max(1, len(flat_y)), "eval/step_acc": acc,
                "eval/step_auc": auc(flat_s, flat_y),
                "eval/solution_auc_min": auc([a for a, _ in sol], [c for _, c in sol])}
    return {"eval/n_solutions": len(recs), "eval/pos_frac": sum(flat_y) / max(1, len(flat_y)),
            "eval/acc": acc, "eval/auc": auc(flat_s, flat_y)}


# -----------------------------------------------------------------------------
# the stages 1-3 and main (plumbing: files, loops, devices; the algorithm is in the helpers above)

LABEL_KEYS = ("policy", "init", "dataset", "split", "samples_per_problem", "completions", "include_self",
              "mc_correct", "temperature", "top_p", "max_new_tokens", "step_sep", "seed", "label_chunk", "prompt")
MODEL_HINT = "pass a checkpoint directory (e.g. models/arith-policy, made by python sft.py) or a hub id"


def check_label_settings(path, settings):
    """A labeled file resumes only under the settings that began it (saved next to it)."""
    settings_path = path + ".settings.json"
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            old = json.load(f)
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise RunError(f"{path} was labeled with other settings {diff}; delete it or use them")
    else:
        with open(settings_path, "w") as f:
            json.dump(settings, f, indent=2)


def label(cfg, rt, logger, labels_path):
    """Stage 1: Monte-Carlo labels, chunk by chunk; each rank labels its own chunks into its own
    file, and a rerun skips the problems already there."""
    mine = labels_path if rt.world_size == 1 else f"{labels_path}.rank{rt.rank}"
    os.makedirs(os.path.dirname(os.path.abspath(mine)), exist_ok=True)
    check_label_settings(mine, {k: getattr(cfg, k) for k in LABEL_KEYS})
    done = drop_partial_problems(mine, read_labels_resumable(mine), cfg.samples_per_problem)
    try:
        problems = common.load_problems(cfg.dataset, cfg.split, limit=cfg.num_problems, skip_bad=cfg.skip_bad)
    except (OSError, ValueError) as e:
        raise RunError(f"--dataset {cfg.dataset!r}: {e}") from None
    if not problems:
        raise RunError(f"--dataset {cfg.dataset!r} (split {cfg.split}): no problems to label")
    problems = common.check_prompt_lengths(common.load_tokenizer(cfg.policy or cfg.init, "--policy", MODEL_HINT),
                                           problems, policy_positions(cfg.policy or cfg.init),
                                           f"--dataset {cfg.dataset!r}", cfg.skip_bad, cfg.prompt)
    for i, p in enumerate(problems):
        p["_id"] = i
    chunks = [problems[s: s + cfg.label_chunk] for s in range(0, len(problems), cfg.label_chunk)]
    todo = [(c, ch) for c, ch in enumerate(chunks) if c % rt.world_size == rt.rank
            and not all(p["_id"] in done for p in ch)]
    print0(f"labels: {len(problems)} problems, {len(chunks)} chunks, {len(todo)} to do on rank 0 "
           f"({len(done)} problems already in {mine})")
    if not todo:
        return
    path = cfg.policy or cfg.init
    what = "--policy" if cfg.policy else "--init"
    policy = common.load_model(path, what, MODEL_HINT, dtype=torch.float32).to(rt.device).eval()
    ptok = common.load_tokenizer(path, what, MODEL_HINT)
    bar = tqdm(total=0, desc="MC completions (prefixes)", disable=not rt.master, dynamic_ncols=True)
    t0, tot = time.time(), {"gen_tokens": 0, "gen_s": 0.0, "gen_calls": 0, "rollouts": 0}
    for c, ch in todo:
        ch = [p for p in ch if p["_id"] not in done]
        torch.manual_seed(cfg.seed + 7919 * c)  # per chunk: a resumed run samples the same
        with rt.amp:  # 1a-1d
            recs, st = label_problems(policy, ptok, ch, cfg.samples_per_problem, cfg.completions,
                                      cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.gen_batch,
                                      cfg.step_sep, cfg.include_self, bar, cfg.mc_correct, cfg.prompt)
        with open(mine, "a", encoding="utf-8") as f:  # 1e. the chunk is the unit of resume
            f.write("".join(json.dumps(r) + "\n" for r in recs))
            f.flush()
            os.fsync(f.fileno())
        for k in tot:
            tot[k] += st[k]
        bar.set_postfix(tok_s=f"{tot['gen_tokens'] / max(tot['gen_s'], 1e-9):.0f}")
    bar.close()
    logger.log({"label/problems": sum(len(ch) for _, ch in todo), "label/rollouts": tot["rollouts"],
                "label/gen_calls": tot["gen_calls"], "label/gen_tokens": tot["gen_tokens"],
                "perf/label_tok_s": tot["gen_tokens"] / max(tot["gen_s"], 1e-9),
                "perf/label_s": time.time() - t0}, echo=True)


def load_split(cfg, labels_path, world_size):
    """2a. The labeled records (--data, or every rank's file of stage 1) -> (train, held out)."""
    paths = [cfg.data] if cfg.data else [labels_path if world_size == 1 else f"{labels_path}.rank{r}"
                                         for r in range(world_size)]
    records = [r for path in paths for r in read_records(path)]
    train_recs = [r for r in records if not is_eval_question(r["question"], cfg.eval_frac)]
    eval_recs = [r for r in records if is_eval_question(r["question"], cfg.eval_frac)]
    n_steps = sum(len(r.get("steps") or []) for r in train_recs)
    pos = sum(1 for r in train_recs for y in (r.get("labels") or []) if y > 0)
    print0(f"data: {len(records)} solutions ({len(train_recs)} train / {len(eval_recs)} held out); "
           f"train steps {n_steps}, positive {pos / max(1, n_steps):.3f}, correct "
           f"{sum(r.get('correct') or 0 for r in train_recs) / max(1, len(train_recs)):.3f}")
    return train_recs, eval_recs


def build_model(cfg, device):
    """2b. --init in fp32 with the step tag in its vocabulary, grown by --extra-layers ->
    (model, tokenizer, (tag_id, pos_id, neg_id))."""
    model = common.load_model(cfg.init, "--init", MODEL_HINT, dtype=torch.float32)
    tokenizer = common.load_tokenizer(cfg.init, "--init", MODEL_HINT)
    if tokenizer.pad_token_id is None:  # NOTE: masks never come from ids == pad, so pad = eos is safe
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # saved with the checkpoint (scorers pad by hand, right)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    eos = sorted(common.model_eos_ids(model, tokenizer))  # NOTE: every EOS id (Qwen: <|im_end|>, <|endoftext|>)
    model.generation_config.eos_token_id = eos[0] if len(eos) == 1 else eos
    model.to(device)
    if cfg.form != "tag":  # implicit, likelihood: no tag, no label tokens, no growth: the policy itself learns
        return model, tokenizer, (None, None, None)
    where = dict(input_format=cfg.input_format, step_sep=cfg.step_sep, prompt=cfg.prompt)
    added = None
    try:
        rewards.tag_read_id(tokenizer, cfg.step_tag, **where)
    except ValueError:  # not locatable as ordinary text in this input format: make it one special token
        added = add_tag_token(model, tokenizer, cfg.step_tag)
    try:
        ids = rewards.resolve_rm_tokens(tokenizer, cfg.step_tag, cfg.pos_token, cfg.neg_token,
                                        where=f"the tokenizer of {cfg.init!r}", **where)
    except ValueError as e:
        raise RunError(str(e)) from None
    if cfg.extra_layers:
        n_init = model.config.num_hidden_layers
        grow_layers(model, cfg.extra_layers)
        print0(f"grew {cfg.init} by {cfg.extra_layers} identity-initialised layers "
               f"({model.config.num_hidden_layers} in all)")
        if cfg.train_only_extra:  # NOTE: keeps the policy's features intact; the new layers learn to read them
            model.requires_grad_(False)
            model.base_model.layers[n_init:].requires_grad_(True)
            model.base_model.norm.requires_grad_(True)
            if added is not None:  # NOTE: the new tag's row must learn too, the other rows stay frozen
                train_only_row(model.get_input_embeddings().weight, added)
    return model, tokenizer, ids


def add_tag_token(model, tokenizer, tag):
    """Add `tag` as a special token; its input-embedding row starts as the mean of the existing rows.
    Returns its id. NOTE: the embedding is never shrunk: Qwen2.5 pads its 151,665 tokens to 151,936
    rows, and resize_token_embeddings(len(tokenizer)) would drop rows (and reuse an untrained padding
    row for the tag). It grows only when the tokenizer outgrows it."""
    n_old = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [tag]})
    tag_id = tokenizer.convert_tokens_to_ids(tag)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        for emb in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            emb.weight[tag_id] = emb.weight[:n_old].mean(0)  # a padding row may hold anything
    print0(f"added step tag {tag!r} to the tokenizer as a special token (id {tag_id}; embedding rows "
           f"{model.get_input_embeddings().weight.shape[0]}, its row initialised to the mean row)")
    return tag_id


def train_only_row(weight, row):
    """Keep `weight` trainable but let only `row` of it change: the other rows' gradients are zeroed
    (AdamW then leaves them exactly as they are; the weight is kept out of weight decay in train)."""
    weight.requires_grad_(True)
    weight._only_row = row
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[row] = 1.0
    weight.register_hook(lambda g: g * mask)


def train(cfg, rt, logger, model, pad_id, examples, label_ids, kind, ref=None, calib=None, snapshot=None):
    """2c. BCE at the tags (or, with `ref`, at the implicit form's step ends; with `calib` = (beta,
    offset), at the likelihood form's), DDP under torchrun; batch_size is global. snapshot(step): called
    on rank 0 at each --save-steps step (0 = before the first update); it draws no random number, so
    the run is the same with or without snapshots. -> (last row, steps, seconds)."""
    if cfg.batch_size % (rt.world_size * cfg.micro_batch_size):
        raise RunError(f"--batch-size {cfg.batch_size} must divide by world_size {rt.world_size} x "
                       f"--micro-batch-size {cfg.micro_batch_size}")
    accum = cfg.batch_size // (rt.world_size * cfg.micro_batch_size)
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(examples) / cfg.batch_size))
    print0(f"train: {max_steps} steps of {cfg.batch_size} sequences; per rank {accum} micro-batches of "
           f"{cfg.micro_batch_size}")
    late = [k for k in cfg.save_steps if k >= max_steps]
    common.require(not late, f"--save-steps {late}: each must be below the run's {max_steps} steps (the "
                   "end is saved to --out-dir anyway)")
    if 0 in cfg.save_steps and rt.master:
        snapshot(0)
    decay = [p for p in model.parameters() if p.dim() >= 2 and p.requires_grad and not hasattr(p, "_only_row")]
    no_decay = [p for p in model.parameters() if (p.dim() < 2 or hasattr(p, "_only_row")) and p.requires_grad]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    ddp = dist.is_initialized()
    if calib is not None:
        fwd = scorer = LikelihoodScorer(model, *calib)
    else:
        fwd = scorer = TagScorer(model, label_ids) if ref is None else ImplicitScorer(model, ref, cfg.beta)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fwd = DDP(scorer, device_ids=[torch.device(rt.device).index] if rt.device.startswith("cuda") else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    order, cursor = torch.randperm(len(examples), generator=gen).tolist(), 0
    t_start, last = time.time(), {}
    bar = tqdm(range(max_steps), disable=not rt.master, desc=f"train {kind}", dynamic_ncols=True)
    for step in bar:
        t0 = time.time()
        batch = []
        for _ in range(cfg.batch_size):
            if cursor == len(order):  # new epoch, new seeded permutation
                order, cursor = torch.randperm(len(examples), generator=gen).tolist(), 0
            batch.append(examples[order[cursor]])
            cursor += 1
        per_rank = cfg.batch_size // rt.world_size
        mine = batch[rt.rank * per_rank: (rt.rank + 1) * per_rank]
        n_tags = sum(len(e[2]) for e in batch)  # loss normaliser: tags of the whole optimizer batch
        lr = lr_at(step, cfg, max_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum, hit = 0.0, 0
        for m in range(accum):
            micro = mine[m * cfg.micro_batch_size: (m + 1) * cfg.micro_batch_size]
            ids, attn, tpos, tgt, tmask = (t.to(rt.device) for t in collate(micro, pad_id))
            start = () if cfg.form == "tag" else (torch.tensor([e[3] for e in micro], device=rt.device),)
            ctx = fwd.no_sync() if ddp and m < accum - 1 else contextlib.nullcontext()
            with ctx, rt.amp:
                margins = fwd(ids, attn, tpos, *start)  # (B, K) fp32
            loss_b = bce_sum(margins, tgt, tmask)
            loss = loss_b * rt.world_size / n_tags  # NOTE: DDP averages over ranks; this makes sum / global count
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
            loss.backward()
            loss_sum += loss_b.item()
            hit += (((margins > 0) == (tgt > 0.5)) & tmask).sum().item()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item() if cfg.grad_clip > 0 else float("nan")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step + 1 in cfg.save_steps and rt.master:
            snapshot(step + 1)
        last = {"step": step + 1, "train/loss": loss_sum * rt.world_size / n_tags,
                "train/acc": hit * rt.world_size / n_tags, "train/lr": lr, "train/grad_norm": gnorm,
                "perf/step_s": time.time() - t0, "perf/elapsed_s": time.time() - t_start}
        bar.set_postfix(loss=f"{last['train/loss']:.3f}", acc=f"{last['train/acc']:.3f}")
        if (step + 1) % 10 == 0 or step + 1 == max_steps:
            logger.log(last)
    bar.close()
    return last, max_steps, time.time() - t_start


def save_rm(path, model, tokenizer, meta, ref=None):
    """A loadable reward-model checkpoint: the unwrapped model, its tokenizer, meta.json (its
    "reward_model" block is what rewards.load_reward_model reads) and, implicit form, ref/."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if ref is not None:
        ref.save_pretrained(os.path.join(path, "ref"))
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)


def save_and_evaluate(cfg, rt, logger, model, tokenizer, eval_recs, kind, meta, ref=None):
    """Stage 3 (rank 0): save the unwrapped model, the tokenizer and meta.json (the scorer reads
    its "reward_model" block; --form implicit: the reference policy in <out_dir>/ref), then evaluate
    the SAVED files on the held-out records."""
    save_rm(cfg.out_dir, model, tokenizer, meta, ref)  # 3a
    # 3b. held-out evaluation of the saved files
    rm = rewards.load_reward_model(cfg.out_dir, kind=kind, device=rt.device)
    res = evaluate_rm(rm, eval_recs, cfg.eval_batch_size) if eval_recs else {}
    res["perf/train_s"] = meta["train_wall_s"]
    logger.log(res, echo=True)
    meta["eval"] = res
    with open(os.path.join(cfg.out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    if kind == "prm" and eval_recs:
        r = next((r for r in eval_recs if not r.get("correct") and len(r.get("steps") or []) > 1), eval_recs[0])
        sc = rm.score([r["question"]], [cfg.step_sep.join(r["steps"])])[0]
        print0(f"sample: {r['question']}")
        for st, y, s in zip(r["steps"], r["labels"], sc):
            print0(f"  label {y:.2f}  score {s:.3f}  {st!r}")
    print0(f"saved {cfg.out_dir} ({meta['train_wall_s']:.0f} s training)")


def main(argv=None):
    cfg = common.parse_config(Config, argv)
    check_config(cfg)
    rt = common.setup_runtime(cfg.device, cfg.seed)
    print0("config: " + json.dumps(dataclasses.asdict(cfg)))
    logger = common.MetricsLogger(cfg.out_dir, append=True, master=rt.master)
    kind = "prm" if cfg.objective == "process" else "orm"
    labels_path = cfg.labels_path or os.path.join(cfg.out_dir, "labels.jsonl")

    # 1. label (skipped with --data)
    if not cfg.data:
        label(cfg, rt, logger, labels_path)
        common.barrier()
    if cfg.label_only:
        return

    # 2. train: data, model and inputs, the BCE loop
    train_recs, eval_recs = load_split(cfg, labels_path, rt.world_size)
    model, tokenizer, (tag_id, pos_id, neg_id) = build_model(cfg, rt.device)
    ref = None
    if cfg.form == "implicit":  # the frozen reference: --init as it was, or --ref
        ref = common.load_model(cfg.ref or cfg.init, "--ref" if cfg.ref else "--init", MODEL_HINT,
                                dtype=torch.float32).to(rt.device)
        ref.eval().requires_grad_(False)
        n_ref, n_init = (m.get_input_embeddings().num_embeddings for m in (ref, model))
        common.require(n_ref == n_init, f"--ref {cfg.ref}: its vocabulary ({n_ref} rows) is not --init's ({n_init}); "
                       "the log-prob ratio needs one")
    examples, dropped = build_examples(tokenizer, train_recs, kind, tag_id, cfg.soft_labels, cfg)
    if cfg.soft_labels and kind == "prm" and any(r.get("soft") is False for r in train_recs):
        print0(f"NOTE: {sum(r.get('soft') is False for r in train_recs)} solutions were labeled without "
               "rollouts (--no-mc-correct): their soft targets are their hard labels (1.0)")
    if not examples:
        raise RunError(f"no {kind.upper()} training example (labels missing, or all longer than --max-len)")
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"model: {cfg.init} ({type(model).__name__}, {n_params / 1e6:.2f}M parameters); {kind.upper()} "
           f"examples {len(examples)} ({dropped} dropped > max_len), tags {sum(len(e[2]) for e in examples)}")
    calib = None
    if cfg.form == "likelihood":  # every rank fits on all examples: the same (beta, offset) everywhere
        calib = calibrate_likelihood(model, examples, tokenizer.pad_token_id, rt.device, cfg.eval_batch_size)
        common.require(calib[0] > 0, f"--form likelihood: the fitted beta is {calib[0]:.4g} <= 0: --init's "
                       "log-likelihood does not rank these labels (a lower step likelihood reads as better)")
        print0(f"likelihood form: beta {calib[0]:.4f}, offset {calib[1]:.4f} (fitted on --init's margins)")
    rm_meta = {"kind": kind, "step_tag": cfg.step_tag, "pos_token": cfg.pos_token, "neg_token": cfg.neg_token,
               "input_format": cfg.input_format, "step_sep": cfg.step_sep, "prompt": cfg.prompt}
    if calib is not None:
        rm_meta = {"kind": kind, "form": "likelihood", "beta": calib[0], "offset": calib[1],
                   "step_sep": cfg.step_sep, "prompt": cfg.prompt}
    if ref is not None:
        rm_meta = {"kind": kind, "form": "implicit", "beta": cfg.beta, "ref": "ref", "step_sep": cfg.step_sep,
                   "prompt": cfg.prompt}

    def snapshot(step):  # --save-steps: the model as it is now, with the meta the end will have
        save_rm(os.path.join(cfg.out_dir, f"step-{step}"), model, tokenizer,
                {"config": dataclasses.asdict(cfg), "reward_model": rm_meta, "step": step, "snapshot": True}, ref)
        print0(f"saved snapshot {os.path.join(cfg.out_dir, f'step-{step}')}")

    last, max_steps, train_s = train(cfg, rt, logger, model, tokenizer.pad_token_id, examples,
                                     (pos_id, neg_id), kind, ref, calib, snapshot)

    # 3. save and evaluate
    meta = {"config": dataclasses.asdict(cfg), "reward_model": rm_meta, "step": max_steps, "metrics": last,
            "n_params": n_params, "train_wall_s": train_s, "command": "python " + " ".join(sys.argv)}
    if rt.master:
        save_and_evaluate(cfg, rt, logger, model, tokenizer, eval_recs, kind, meta, ref)
    common.barrier()


if __name__ == "__main__":
    common.run_main(main)
