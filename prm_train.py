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

Algorithm
  1. Labels (skipped with --data): for chunks of `label_chunk` problems (the unit of resume),
     a. sample `samples_per_problem` solutions per problem from --policy at `temperature`, batched;
     b. split each into steps (METHOD §3); every step but the last gives a prefix
        = prompt + response up to the end of step k + separator;
     c. sample `completions` continuations of every prefix: a whole batch of prefixes goes through
        ONE generate call with num_return_sequences = completions (about gen_batch sequences);
     d. soft label of step k = fraction of rollouts from its prefix that end (EOS) with the gold
        answer; hard label = soft > 0 ("some completion reaches the gold", Math-Shepherd). The last
        step's label is the solution's own correctness, which is also the ORM label. Correct
        solutions skip c (--mc-correct false, the default): counting the solution itself as a
        rollout, all their hard labels are 1 already;
     e. append the chunk's records to the labeled JSONL; a rerun skips the problems already there.
  2. Read the data (our labeled JSONL, PRM800K or Math-Shepherd schema) and hold out `eval_frac` of
     the questions (by a hash of the question text, so no question is in both sides).
  3. Build inputs with rewards.rm_input_text: PRM a tag after every step, ORM one tag at the end.
  4. Train (initialised from --init, e.g. the policy): binary cross-entropy with logits on
     m = logit(pos) - logit(neg) at every tag (hard or soft targets), summed over the tags of the
     optimizer batch / their count. AdamW, linear warmup then cosine decay.
  5. Save: save_pretrained (model + tokenizer) + meta.json (config, reward_model block, metrics).
  6. Evaluate the SAVED checkpoint (rewards.load_reward_model) on the held-out questions: PRM
     step-level accuracy (threshold 0.5 vs hard label) and AUC; ORM accuracy and AUC against
     correctness. Printed, appended to metrics.jsonl and written into meta.json.

Departures from Math-Shepherd / the paper [decisions, flags]
  - The sampled solution itself is one of the rollouts of each of its prefixes (it is a genuine
    policy continuation of every prefix), so a step's soft label is (hits + correct) / (N + 1)
    (--include-self false for the plain N-completion estimate). The paper does not give N; we use
    N = 8 on arith.
  - PRM800K: rating 1 -> 1, -1 -> 0, neutral 0 -> --prm800k-neutral (default 1: "not wrong"); the
    trajectory follows the chosen completion and stops at the first -1 step.
  - Correct solutions are not rolled out by default (--mc-correct false): their hard labels are 1
    exactly (see 1d); soft labels then exist only for incorrect solutions.
  - --extra-layers / --train-only-extra (used for the shipped arith models): the reward model is
    the policy plus identity-initialised layers on top, and only those are trained (grow_layers).

Commands
  CPU, the shipped arith PRM and ORM (labels once, then two trainings; about 9 + 2 + 6 min on the
  shared 2-core dev machine; NOTE: OMP_NUM_THREADS=1: with 2 threads on a loaded machine generate
  ran 8x slower):
    export OMP_NUM_THREADS=1
    python prm_train.py --init models/arith-policy --label-only --labels-path out/arith-labels.jsonl
    python prm_train.py --init models/arith-policy --data out/arith-labels.jsonl \\
        --extra-layers 2 --train-only-extra --out-dir models/arith-prm
    python prm_train.py --init models/arith-policy --data out/arith-labels.jsonl --objective outcome \\
        --extra-layers 2 --train-only-extra --out-dir models/arith-orm
  One GPU, a Qwen2.5-Math PRM from a policy's own samples on MATH (labels, then training):
    python prm_train.py --init Qwen/Qwen2.5-Math-1.5B-Instruct --dataset math --split train \\
        --num-problems 7500 --samples-per-problem 8 --completions 8 --max-new-tokens 1024 \\
        --gen-batch 512 --step-tag "ки" --lr 1e-5 --min-lr 1e-6 --batch-size 64 --micro-batch-size 4 \\
        --max-len 2048 --out-dir out/prm-math
  8 GPUs: `torchrun --nproc_per_node=8 prm_train.py ...` (labels: each rank its chunks, one JSONL
  per rank; training: DDP, batch_size is global).
  Public step labels instead of sampling: --data path/to/prm800k.jsonl or --data peiyi9979/Math-Shepherd.

Expected result (arith): held-out step AUC about 0.79 (step accuracy about 0.73) for the PRM, AUC
about 0.78 for the ORM (README has the measured values). Gate before PPO: held-out step AUC >= 0.75.

Shapes: B sequences, L input tokens, K step tags per sequence (right-padded, with a bool mask).
"""

import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import rewards


@dataclass
class Config:
    # model
    init: str = "models/arith-policy"  # causal LM the reward model starts from (path / hub id)
    objective: str = "process"  # process (PRM: a tag after every step) | outcome (ORM: one tag at the end)
    step_tag: str = "<step>"  # tag token; added as a special token when the tokenizer lacks it
    pos_token: str = "+"  # label token read as "good" at the tag
    neg_token: str = "-"  # label token read as "bad" at the tag
    input_format: str = "chat"  # chat | math-shepherd (see rewards.rm_input_text)
    extra_layers: int = 0  # decoder layers appended to --init, starting as the identity (see grow_layers)
    train_only_extra: bool = False  # freeze the --init layers and embeddings; train the extra layers + final norm
    step_sep: str = "\n\n"  # step separator (METHOD §3); PRM training and RL must use the same one
    # data: automatic labels (step 1) or an existing step-labeled file
    data: str = ""  # train on this instead of labeling: labeled JSONL, PRM800K, Math-Shepherd (file or hub id)
    data_format: str = "auto"  # auto | labeled | prm800k | math-shepherd
    labels_path: str = ""  # labeled JSONL to write / resume (default <out_dir>/labels.jsonl)
    label_only: bool = False  # stop after step 1
    policy: str = ""  # sampler for the labels (default: --init)
    dataset: str = "arith"  # problems to label: arith | gsm8k | math | math500 | path.jsonl
    split: str = "train"
    num_problems: int = 1024  # problems to label (first N of the split)
    samples_per_problem: int = 4  # solutions sampled per problem (M)
    completions: int = 8  # Monte-Carlo completions per step prefix (N)
    include_self: bool = True  # count the sampled solution as one rollout of each of its prefixes
    mc_correct: bool = False  # also roll out prefixes of CORRECT solutions (needed for their soft labels)
    temperature: float = 1.0  # sampling temperature for solutions and completions
    top_p: float = 1.0
    max_new_tokens: int = 160  # response budget; a rollout without EOS within it is wrong (METHOD §4)
    gen_batch: int = 256  # sequences per generate call (prefixes x completions)
    label_chunk: int = 32  # problems per chunk, the unit written to the JSONL and resumed
    prm800k_neutral: float = 1.0  # label of a PRM800K step rated 0 (neutral)
    # training
    soft_labels: bool = False  # BCE targets: soft MC fractions instead of hard 0/1
    eval_frac: float = 0.125  # held-out fraction of questions
    epochs: float = 4.0  # passes over the training examples (ignored when max_steps > 0)
    max_steps: int = 0  # optimizer steps (0 = from epochs)
    batch_size: int = 32  # sequences per optimizer step, global (all ranks, all micro-batches)
    micro_batch_size: int = 32  # sequences per forward pass per rank
    lr: float = 3e-3  # peak learning rate (arith; ~1e-5 for billion-parameter models)
    min_lr: float = 3e-4  # cosine decay floor
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max grad norm (0 = off)
    max_len: int = 512  # longer inputs are dropped (count printed)
    eval_batch_size: int = 64
    # runtime
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "out/prm"


# -----------------------------------------------------------------------------
# config parsing (the same in every stage script)

def parse_config(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), nargs="?",
                           const=True, default=f.default, help=f"(default {f.default})")
        else:
            typ = f.type if callable(f.type) else {"int": int, "float": float, "str": str}[f.type]
            p.add_argument(flag, type=typ, default=f.default, help=f"(default {f.default!r})")
    cfg = Config(**vars(p.parse_args(argv)))  # NOTE: argparse errors on unknown flags
    if cfg.objective not in ("process", "outcome"):
        p.error(f"--objective must be process or outcome, got {cfg.objective!r}")
    if cfg.data_format not in ("auto", "labeled", "prm800k", "math-shepherd"):
        p.error(f"unknown --data-format {cfg.data_format!r}")
    if not cfg.mc_correct and not cfg.include_self:
        p.error("--mc-correct false needs --include-self true (it is what makes those labels exactly 1)")
    return cfg


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
# step-labeled data: our JSONL, PRM800K, Math-Shepherd -> records
#   {"question", "steps": [str], "labels": [soft in 0..1], "correct": 0/1 or None}

def _json_objects(path):
    """JSON objects of a file: JSONL, or pretty-printed objects one after another."""
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        s = f.read()
    i, out = 0, []
    while True:
        while i < len(s) and s[i].isspace():
            i += 1
        if i >= len(s):
            return out
        try:
            obj, i = dec.raw_decode(s, i)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: bad JSON at line {s.count(chr(10), 0, i) + 1} ({e.msg})") from None
        out.append(obj)


def _clean_step(step, sep):
    # NOTE: a step that contains the separator would be split in two at scoring time; join its lines
    return step.replace(sep, "\n").strip()


def read_prm800k(rows, neutral=1.0, sep=rewards.DEFAULT_STEP_SEP):
    """PRM800K records (github.com/openai/prm800k) -> step-labeled records, one per trajectory.

    Follows the chosen completion of every step (a human completion, label 1, when the labeler
    wrote one); stops after the first step rated -1 (later labels are meaningless) or at a step
    without a rating. correct = 1 when the trajectory finished as a solution with no -1 step.
    """
    out = []
    for row in rows:
        q = row.get("question", {})
        steps, labels = [], []
        for st in row.get("label", {}).get("steps", []):
            c = st.get("chosen_completion")
            comps = st.get("completions") or []
            if c is not None:
                text, rating = comps[c]["text"], comps[c].get("rating")
            elif st.get("human_completion"):
                hc = st["human_completion"]
                text, rating = (hc if isinstance(hc, str) else hc.get("text", "")), 1
            else:  # the trajectory ended here: keep the step that was rated wrong, if any
                bad = [x for x in comps if x.get("rating") == -1]
                if not bad:
                    break
                text, rating = bad[0]["text"], -1
            if rating is None or not text.strip():
                break
            steps.append(_clean_step(text, sep))
            labels.append({1: 1.0, 0: float(neutral), -1: 0.0}[rating])
            if rating == -1:
                break
        if steps:
            finished = row.get("label", {}).get("finish_reason") == "solution"
            out.append({"question": q.get("problem", ""), "answer": q.get("ground_truth_answer"),
                        "steps": steps, "labels": labels,
                        "correct": int(finished and min(labels) > 0)})
    return out


def read_math_shepherd(rows, tag=rewards.MATH_SHEPHERD_TAG, sep=rewards.DEFAULT_STEP_SEP):
    """Math-Shepherd rows {"input": "<q> Step 1: ... ки\\nStep 2: ... ки", "label": same with +/-}.

    "label" is "input" with every tag replaced by "+" or "-". Steps lose their "Step k:" prefix
    (the math-shepherd input format adds it back); correct = the last step's label.
    """
    import re

    out = []
    for n, row in enumerate(rows):
        src, lab = row["input"], row["label"]
        pieces = src.split(tag)
        if len(pieces) < 2:
            raise ValueError(f"Math-Shepherd row {n}: no step tag {tag!r} in input")
        labels, off = [], 0
        for p in pieces[:-1]:
            off += len(p)
            if lab[off: off + 1] not in ("+", "-"):
                raise ValueError(f"Math-Shepherd row {n}: label text does not match input at char {off}")
            labels.append(1.0 if lab[off] == "+" else 0.0)
            off += 1
        m = re.search(r"Step 1\s*:", pieces[0])
        question = pieces[0][: m.start()].strip() if m else ""
        pieces[0] = pieces[0][m.start():] if m else pieces[0]
        steps = [_clean_step(re.sub(r"^\s*Step \d+\s*:\s*", "", p), sep) for p in pieces[:-1]]
        out.append({"question": question, "steps": steps, "labels": labels,
                    "correct": int(labels[-1] > 0.5)})
    return out


def read_step_data(path, fmt="auto", neutral=1.0, sep=rewards.DEFAULT_STEP_SEP):
    """Step-labeled records from a local file (any of the three schemas) or a hub id (online)."""
    if os.path.exists(path):
        rows = rewards.read_jsonl(path) if fmt == "labeled" else _json_objects(path)
    else:  # NOTE: hub path for online users (e.g. peiyi9979/Math-Shepherd); tests never hit it
        import datasets

        rows = list(datasets.load_dataset(path, split="train"))
    if not rows:
        raise ValueError(f"{path}: no records")
    if fmt == "auto":
        r0 = rows[0]
        if isinstance(r0.get("label"), dict) and "steps" in r0["label"]:
            fmt = "prm800k"
        elif isinstance(r0.get("input"), str) and isinstance(r0.get("label"), str):
            fmt = "math-shepherd"
        elif "steps" in r0 and "labels" in r0:
            fmt = "labeled"
        else:
            raise ValueError(f"{path}: cannot tell the schema from keys {sorted(r0)}; pass --data-format")
    if fmt == "prm800k":
        return read_prm800k(rows, neutral, sep)
    if fmt == "math-shepherd":
        return read_math_shepherd(rows, sep=sep)
    return rows


def read_labels_resumable(path):
    """Records of a labeled JSONL being written; a torn last line (crash mid-write) is cut off."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    rows, good = [], 0
    for line in lines:
        if not line.strip():
            good += len(line) + 1
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line) + 1
    with open(path, "rb+") as f:  # NOTE: drop the torn tail so appends start on a clean line
        size = f.seek(0, 2)
        if good < size:
            f.truncate(good)
    return rows


# -----------------------------------------------------------------------------
# 1. automatic labels (Math-Shepherd Monte-Carlo completions)

@torch.no_grad()
def sample_continuations(model, tokenizer, texts, n, budgets, temperature, top_p):
    """n sampled continuations of every text in ONE generate call (left-padded batch).

    budgets[i]: max new tokens for text i. Returns len(texts) * n tuples (token ids without EOS,
    finished) in repeat_interleave order (text 0's n samples first), and the generated-token count
    (up to and including EOS).
    """
    device = next(model.parameters()).device
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    seq = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=top_p,
                         num_return_sequences=n, max_new_tokens=max(budgets),
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    gen = seq[:, enc["input_ids"].shape[1]:].tolist()  # (len(texts) * n, T) pad after EOS
    out, n_tok = [], 0
    for j, row in enumerate(gen):
        row = row[: budgets[j // n]]
        finished = tokenizer.eos_token_id in row
        if finished:
            row = row[: row.index(tokenizer.eos_token_id)]
        n_tok += len(row) + int(finished)
        out.append((row, finished))
    return out, n_tok


def label_problems(model, tokenizer, problems, samples_per_problem, completions, temperature, top_p,
                   max_new_tokens, gen_batch, step_sep, include_self, bar=None, mc_correct=True):
    """Steps 1a-1d for a list of problems -> (records, stats). Everything is batched generate.

    mc_correct=False skips the rollouts of correct solutions: with include_self each of their prefixes
    already has a rollout that reaches the gold (the solution itself), so their hard labels are exactly
    1 without sampling; their soft labels are unknown, written as 1.0, and the record says "soft": false.
    """
    stats = {"gen_tokens": 0, "gen_s": 0.0, "gen_calls": 0, "rollouts": 0}

    def run(texts, n, budgets):
        t0 = time.time()
        res, n_tok = sample_continuations(model, tokenizer, texts, n, budgets, temperature, top_p)
        stats["gen_tokens"] += n_tok
        stats["gen_s"] += time.time() - t0
        stats["gen_calls"] += 1
        stats["rollouts"] += len(res)
        return res

    # 1a. M solutions per problem
    prompts = [rewards.build_prompt(tokenizer, p["question"]) for p in problems]
    per_call = max(1, gen_batch // samples_per_problem)
    sols = []  # (problem index, text, finished, n response tokens)
    for s in range(0, len(prompts), per_call):
        res = run(prompts[s: s + per_call], samples_per_problem, [max_new_tokens] * len(prompts[s: s + per_call]))
        for j, (ids, fin) in enumerate(res):
            sols.append((s + j // samples_per_problem, tokenizer.decode(ids, skip_special_tokens=True), fin))
    # 1b. step prefixes (every step but the last)
    jobs = []  # (solution index, step index, prefix text after the prompt, token budget)
    split, correct = [], []
    for si, (pi, text, fin) in enumerate(sols):
        steps, ends = rewards.split_steps_with_ends(text, step_sep)
        split.append(steps)
        correct.append(int(rewards.success_reward(text, problems[pi]["answer"], truncated=not fin) > 0))
        if correct[si] and not mc_correct:
            continue
        for k in range(len(steps) - 1):
            prefix = text[: ends[k]] + step_sep
            used = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
            jobs.append((si, k, prefix, max(1, max_new_tokens - used)))
    if bar is not None:
        bar.total = (bar.total or 0) + len(jobs)
        bar.refresh()
    # 1c. N completions per prefix, a batch of prefixes per generate call (longest first: less padding)
    hits = {}
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][2]))
    per_call = max(1, gen_batch // completions)
    for s in range(0, len(order), per_call):
        chunk = [jobs[i] for i in order[s: s + per_call]]
        texts = [prompts[sols[si][0]] + prefix for si, _, prefix, _ in chunk]
        res = run(texts, completions, [b for *_, b in chunk])
        for j, (si, k, prefix, _) in enumerate(chunk):
            gold = problems[sols[si][0]]["answer"]
            h = 0
            for ids, fin in res[j * completions: (j + 1) * completions]:
                full = prefix + tokenizer.decode(ids, skip_special_tokens=True)
                h += int(rewards.success_reward(full, gold, truncated=not fin) > 0)
            hits[(si, k)] = h
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
# 3-4. model, training inputs and loss

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
        raise ValueError(f"--extra-layers supports Llama-style decoders, not {type(model).__name__}")
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
    """(ids, tag positions, targets) per record, inputs from rewards.rm_input_text (the scorer's own).

    PRM targets: the soft MC fractions, or hard = 1 when the fraction is > 0 (some rollout reached the
    gold: Math-Shepherd's hard estimate, not a 0.5 threshold). ORM target: the solution's correctness.
    Records without usable labels are skipped; inputs longer than cfg.max_len are dropped and counted.
    """
    examples, dropped = [], 0
    add_special = cfg.input_format == "math-shepherd" or not getattr(tokenizer, "chat_template", None)
    for r in records:
        if kind == "prm":
            if not r.get("steps") or len(r["labels"]) != len(r["steps"]):
                continue
            targets = [float(y) if soft else float(y > 0) for y in r["labels"]]
        else:
            if r.get("correct") is None:
                continue
            targets = [float(r["correct"])]
        text, spans = rewards.rm_input_text(tokenizer, r["question"], r["steps"], cfg.step_tag, kind,
                                            cfg.input_format, cfg.step_sep)
        ids, pos = rewards.encode_rm_input(tokenizer, text, spans, tag_id, add_special)
        if len(ids) > cfg.max_len:
            dropped += 1
            continue
        examples.append((ids, pos, targets))
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
    for b, (i, p, t) in enumerate(examples):
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


def bce_sum(margins, targets, tag_mask):
    """Summed binary cross-entropy with logits over real tags, fp32. All (B, K)."""
    loss = F.binary_cross_entropy_with_logits(margins.float(), targets, reduction="none")  # (B, K)
    return (loss * tag_mask).sum()


# -----------------------------------------------------------------------------
# 6. held-out evaluation (of the saved checkpoint)

@torch.no_grad()
def evaluate_rm(rm, records, batch_size=64):
    """PRM: step accuracy (0.5 threshold vs hard label) + step AUC, and solution AUC of the min step
    score vs correctness; ORM: accuracy + AUC vs correctness. Scores come from rm.margins on the
    record's own steps (no re-split), with the scorer's input format."""
    rows, targets, correct = [], [], []
    for r in records:
        if rm.kind == "prm" and (not r.get("steps") or len(r["labels"]) != len(r["steps"])):
            continue
        if rm.kind == "orm" and r.get("correct") is None:
            continue
        rows.append(rm.encode(r["question"], r["steps"]))
        targets.append([float(y > 0) for y in r["labels"]] if rm.kind == "prm" else [float(r["correct"])])
        correct.append(r.get("correct"))
    scores = []
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    by_row = {}
    for s in range(0, len(order), batch_size):
        chunk = order[s: s + batch_size]
        m, kmask = rm.margins([rows[i] for i in chunk])
        p = torch.sigmoid(m).cpu()
        for j, i in enumerate(chunk):
            by_row[i] = p[j][kmask[j].cpu()].tolist()
    scores = [by_row[i] for i in range(len(rows))]
    flat_s = [x for s in scores for x in s]
    flat_y = [y for t in targets for y in t]
    acc = sum((s > 0.5) == (y > 0.5) for s, y in zip(flat_s, flat_y)) / max(1, len(flat_y))
    if rm.kind == "prm":
        sol = [(min(s), c) for s, c in zip(scores, correct) if c is not None and s]
        return {"eval/n_solutions": len(rows), "eval/n_steps": len(flat_y),
                "eval/pos_frac": sum(flat_y) / max(1, len(flat_y)), "eval/step_acc": acc,
                "eval/step_auc": auc(flat_s, flat_y),
                "eval/solution_auc_min": auc([a for a, _ in sol], [c for _, c in sol])}
    return {"eval/n_solutions": len(rows), "eval/pos_frac": sum(flat_y) / max(1, len(flat_y)),
            "eval/acc": acc, "eval/auc": auc(flat_s, flat_y)}


# -----------------------------------------------------------------------------
# main

def load_causal_lm(path, device):
    from transformers import AutoModelForCausalLM

    tokenizer = rewards.load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if tokenizer.pad_token_id is None:  # NOTE: masks never come from ids == pad, so pad = eos is safe
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation; training pads by hand (right)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.to(device), tokenizer


def main(argv=None):
    cfg = parse_config(argv)
    # setup: distributed, device, seeding
    ddp = "RANK" in os.environ
    if ddp:
        import torch.distributed as dist
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    master = rank == 0

    def print0(*a):
        if master:
            print(*a, flush=True)

    if cfg.device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    else:
        device = cfg.device
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        print0(f"device {device}: bf16 autocast (supported); margins and losses in fp32")
    else:
        autocast = torch.autocast("cpu", enabled=False)
        print0(f"device {device}: fp32 (no bf16 autocast: {'CPU' if device == 'cpu' else 'GPU lacks bf16'})")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    print0("config: " + json.dumps(dataclasses.asdict(cfg)))
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    kind = "prm" if cfg.objective == "process" else "orm"

    def log(row):
        print0(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    # 1. automatic labels, resumable; each rank labels its own chunks into its own file
    labels_path = cfg.labels_path or os.path.join(cfg.out_dir, "labels.jsonl")
    if not cfg.data:
        mine = labels_path if world == 1 else f"{labels_path}.rank{rank}"
        os.makedirs(os.path.dirname(os.path.abspath(mine)), exist_ok=True)
        label_keys = ["policy", "init", "dataset", "split", "samples_per_problem", "completions",
                      "include_self", "mc_correct", "temperature", "top_p", "max_new_tokens", "step_sep", "seed", "label_chunk"]
        settings = {k: getattr(cfg, k) for k in label_keys}
        settings_path = mine + ".settings.json"
        if os.path.exists(settings_path):
            with open(settings_path) as f:
                old = json.load(f)
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            if diff:
                raise ValueError(f"{mine} was labeled with other settings {diff}; delete it or use them")
        else:
            with open(settings_path, "w") as f:
                json.dump(settings, f, indent=2)
        done = {r["id"] for r in read_labels_resumable(mine)}
        problems = rewards.load_problems(cfg.dataset, cfg.split, limit=cfg.num_problems)
        for i, p in enumerate(problems):
            p["_id"] = i
        chunks = [problems[s: s + cfg.label_chunk] for s in range(0, len(problems), cfg.label_chunk)]
        todo = [(c, ch) for c, ch in enumerate(chunks) if c % world == rank
                and not all(p["_id"] in done for p in ch)]
        print0(f"labels: {len(problems)} problems, {len(chunks)} chunks, {len(todo)} to do on rank 0 "
               f"({len(done)} problems already in {mine})")
        if todo:
            policy, ptok = load_causal_lm(cfg.policy or cfg.init, device)
            policy.eval()
            bar = tqdm(total=0, desc="MC completions (prefixes)", disable=not master, dynamic_ncols=True)
            t0, tot = time.time(), {"gen_tokens": 0, "gen_s": 0.0, "gen_calls": 0, "rollouts": 0}
            for c, ch in todo:
                ch = [p for p in ch if p["_id"] not in done]
                torch.manual_seed(cfg.seed + 7919 * c)  # per chunk: a resumed run samples the same
                with autocast:
                    recs, st = label_problems(policy, ptok, ch, cfg.samples_per_problem, cfg.completions,
                                              cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                                              cfg.gen_batch, cfg.step_sep, cfg.include_self, bar,
                                              cfg.mc_correct)
                with open(mine, "a", encoding="utf-8") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in recs))
                    f.flush()
                    os.fsync(f.fileno())
                for k in tot:
                    tot[k] += st[k]
                bar.set_postfix(tok_s=f"{tot['gen_tokens'] / max(tot['gen_s'], 1e-9):.0f}")
            bar.close()
            del policy
            log({"label/problems": sum(len(ch) for _, ch in todo), "label/rollouts": tot["rollouts"],
                 "label/gen_calls": tot["gen_calls"], "label/gen_tokens": tot["gen_tokens"],
                 "perf/label_tok_s": tot["gen_tokens"] / max(tot["gen_s"], 1e-9),
                 "perf/label_s": time.time() - t0})
        if ddp:
            dist.barrier()
    if cfg.label_only:
        if ddp:
            dist.destroy_process_group()
        return

    # 2. data and held-out split
    if cfg.data:
        records = read_step_data(cfg.data, cfg.data_format, cfg.prm800k_neutral, cfg.step_sep)
    else:
        records = []
        for r in range(world):
            records += rewards.read_jsonl(labels_path if world == 1 else f"{labels_path}.rank{r}")
    train_recs = [r for r in records if not is_eval_question(r["question"], cfg.eval_frac)]
    eval_recs = [r for r in records if is_eval_question(r["question"], cfg.eval_frac)]
    n_steps = sum(len(r.get("steps") or []) for r in train_recs)
    pos = sum(1 for r in train_recs for y in (r.get("labels") or []) if y > 0)
    print0(f"data: {len(records)} solutions ({len(train_recs)} train / {len(eval_recs)} held out); "
           f"train steps {n_steps}, positive {pos / max(1, n_steps):.3f}, correct "
           f"{sum(r.get('correct') or 0 for r in train_recs) / max(1, len(train_recs)):.3f}")

    # 3. model, tag token, inputs
    model, tokenizer = load_causal_lm(cfg.init, device)
    if rewards._single_token_id(tokenizer, cfg.step_tag) is None:
        tokenizer.add_special_tokens({"additional_special_tokens": [cfg.step_tag]})
        model.resize_token_embeddings(len(tokenizer))
        print0(f"added step tag {cfg.step_tag!r} to the tokenizer as a special token (id {len(tokenizer) - 1})")
    tag_id, pos_id, neg_id = rewards.resolve_rm_tokens(tokenizer, cfg.step_tag, cfg.pos_token, cfg.neg_token,
                                                       where=f"the tokenizer of {cfg.init!r}")
    if cfg.extra_layers:
        n_init = model.config.num_hidden_layers
        grow_layers(model, cfg.extra_layers)
        print0(f"grew {cfg.init} by {cfg.extra_layers} identity-initialised layers "
               f"({model.config.num_hidden_layers} in all)")
        if cfg.train_only_extra:  # NOTE: keeps the policy's features intact; the new layers learn to read them
            model.requires_grad_(False)
            model.base_model.layers[n_init:].requires_grad_(True)
            model.base_model.norm.requires_grad_(True)
    elif cfg.train_only_extra:
        raise ValueError("--train-only-extra needs --extra-layers > 0")
    examples, dropped = build_examples(tokenizer, train_recs, kind, tag_id, cfg.soft_labels, cfg)
    if cfg.soft_labels and kind == "prm" and any(r.get("soft") is False for r in train_recs):
        print0(f"NOTE: {sum(r.get('soft') is False for r in train_recs)} solutions were labeled without "
               "rollouts (--mc-correct false): their soft targets are their hard labels (1.0)")
    if not examples:
        raise ValueError(f"no {kind.upper()} training example (labels missing, or all longer than max_len)")
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"model: {cfg.init} ({type(model).__name__}, {n_params / 1e6:.2f}M parameters); {kind.upper()} "
           f"examples {len(examples)} ({dropped} dropped > max_len), tags {sum(len(e[2]) for e in examples)}")

    # 4. train
    if cfg.batch_size % (world * cfg.micro_batch_size):
        raise ValueError(f"batch_size {cfg.batch_size} must divide by world_size {world} x "
                         f"micro_batch_size {cfg.micro_batch_size}")
    accum = cfg.batch_size // (world * cfg.micro_batch_size)
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(examples) / cfg.batch_size))
    print0(f"train: {max_steps} steps of {cfg.batch_size} sequences; per rank {accum} micro-batches of "
           f"{cfg.micro_batch_size}")
    scorer = TagScorer(model, (pos_id, neg_id))
    decay = [p for p in model.parameters() if p.dim() >= 2 and p.requires_grad]
    no_decay = [p for p in model.parameters() if p.dim() < 2 and p.requires_grad]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    fwd = scorer
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fwd = DDP(scorer, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    order, cursor = torch.randperm(len(examples), generator=gen).tolist(), 0
    t_start, last = time.time(), {}
    bar = tqdm(range(max_steps), disable=not master, desc=f"train {kind}", dynamic_ncols=True)
    for step in bar:
        t0 = time.time()
        batch = []
        for _ in range(cfg.batch_size):
            if cursor == len(order):  # new epoch, new seeded permutation
                order, cursor = torch.randperm(len(examples), generator=gen).tolist(), 0
            batch.append(examples[order[cursor]])
            cursor += 1
        per_rank = cfg.batch_size // world
        mine_b = batch[rank * per_rank: (rank + 1) * per_rank]
        n_tags = sum(len(e[2]) for e in batch)  # loss normaliser: tags of the whole optimizer batch
        lr = lr_at(step, cfg, max_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum, hit = 0.0, 0
        for m in range(accum):
            ids, attn, tpos, tgt, tmask = (t.to(device) for t in collate(
                mine_b[m * cfg.micro_batch_size: (m + 1) * cfg.micro_batch_size], tokenizer.pad_token_id))
            ctx = fwd.no_sync() if ddp and m < accum - 1 else torch.autocast("cpu", enabled=False)
            with ctx, autocast:
                margins = fwd(ids, attn, tpos)  # (B, K) fp32
            loss_b = bce_sum(margins, tgt, tmask)
            loss = loss_b * world / n_tags  # NOTE: DDP averages over ranks; this makes sum / global count
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
            loss.backward()
            loss_sum += loss_b.item()
            hit += (((margins > 0) == (tgt > 0.5)) & tmask).sum().item()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item() if cfg.grad_clip > 0 else float("nan")
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = {"step": step + 1, "train/loss": loss_sum * world / n_tags, "train/acc": hit * world / n_tags,
                "train/lr": lr, "train/grad_norm": gnorm, "perf/step_s": time.time() - t0,
                "perf/elapsed_s": time.time() - t_start}
        bar.set_postfix(loss=f"{last['train/loss']:.3f}", acc=f"{last['train/acc']:.3f}")
        if master and ((step + 1) % 10 == 0 or step + 1 == max_steps):
            with open(metrics_path, "a") as f:
                f.write(json.dumps(last) + "\n")
    bar.close()
    train_s = time.time() - t_start

    # 5. save the unwrapped model, the tokenizer and meta.json (the scorer reads "reward_model")
    rm_meta = {"kind": kind, "step_tag": cfg.step_tag, "pos_token": cfg.pos_token, "neg_token": cfg.neg_token,
               "input_format": cfg.input_format, "step_sep": cfg.step_sep}
    meta = {"config": dataclasses.asdict(cfg), "reward_model": rm_meta, "step": max_steps, "metrics": last,
            "n_params": n_params, "train_wall_s": train_s, "command": "python " + " ".join(sys.argv)}
    if master:
        model.save_pretrained(cfg.out_dir)
        tokenizer.save_pretrained(cfg.out_dir)
        with open(os.path.join(cfg.out_dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)

        # 6. held-out evaluation of the saved files
        rm = rewards.load_reward_model(cfg.out_dir, kind=kind, device=device)
        res = evaluate_rm(rm, eval_recs, cfg.eval_batch_size) if eval_recs else {}
        res["perf/train_s"] = train_s
        log(res)
        meta["eval"] = res
        with open(os.path.join(cfg.out_dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        if kind == "prm" and eval_recs:
            r = next((r for r in eval_recs if not r.get("correct") and len(r.get("steps") or []) > 1), eval_recs[0])
            sc = rm.score([r["question"]], [cfg.step_sep.join(r["steps"])])[0]
            print0(f"sample: {r['question']}")
            for st, y, s in zip(r["steps"], r["labels"], sc):
                print0(f"  label {y:.2f}  score {s:.3f}  {st!r}")
        print0(f"saved {cfg.out_dir} ({train_s:.0f} s training)")
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
