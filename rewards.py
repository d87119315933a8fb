"""
Rewards for RL training of math reasoners (Gao et al., arXiv 2410.15115). The shared domain
logic of the project lives here, and only here: every stage script imports it.

  1. Success grading: extract the final answer from a response and decide equivalence with the gold
     answer (math-verify underneath), never executing model text.               -> is_correct
  2. Steps: a response is split into steps at a separator ("\\n\\n" by default).  -> split_steps
  3. The learned-reward transforms of the paper, on per-step PRM values (B, K):
       clip:        min(x_k - eta, 0)                    every step term <= 0
       delta:       x_k - x_{k+1} (k < K-1), x_{K-1} (k = K-1), 0 (k = K)
       clip_delta:  delta(clip(x))
     The return-to-go of Delta telescopes to x_k, so padding a solution with extra steps can never
     raise it: that is the paper's cure for PRM reward hacking.                  -> clip, delta
  4. Token placement: per-step values go on the token that ends each step, the success reward on
     the last response token.                                                     -> place_rewards
  5. Reward-model scoring (PRM / ORM as causal LMs with a step tag).               -> load_reward_model

Shape legend: B responses, T response tokens, K steps (right-padded, with a bool mask).
"""

import json
import os
import re

import torch

# -----------------------------------------------------------------------------
# Datasets: one loader for arith, GSM8K and MATH rows (question / solution / answer)

DEFAULT_STEP_SEP = "\n\n"


def read_jsonl(path):
    """Rows of a JSONL file, with a clear error naming the file and line on bad JSON."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
DATASETS = ("arith", "gsm8k", "math", "math500")


def resolve_dataset(name_or_path, split="test"):
    """A dataset name (arith, gsm8k, math, math500 -> data/<name>/<split>.jsonl) or a .jsonl path."""
    if name_or_path in DATASETS:
        path = os.path.join(DATA_DIR, name_or_path, f"{split}.jsonl")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist: run `python data/{name_or_path}/prepare.py` first "
                f"(accepted dataset names: {', '.join(DATASETS)}, or a path to a .jsonl file)")
        return path
    if os.path.exists(name_or_path):
        return name_or_path
    raise FileNotFoundError(f"unknown dataset {name_or_path!r}: expected one of "
                            f"{', '.join(DATASETS)} or an existing .jsonl path")


def load_problems(name_or_path, split="test", limit=None):
    """Problems as dicts with at least `question` and `answer` (the gold final answer).

    Reads the project schema (question / solution / answer) written by data/*/prepare.py; raw
    MATH rows (`problem`) and raw GSM8K rows (answer ending in `#### N`) are accepted too.
    A row without a question or a gold answer is an error naming the file and line.
    """
    path = resolve_dataset(name_or_path, split)
    rows = read_jsonl(path)
    out = []
    for lineno, row in enumerate(rows, 1):
        question = row.get("question", row.get("problem"))
        answer = row.get("answer")
        if isinstance(answer, str) and "####" in answer:  # raw GSM8K: the gold follows ####
            answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
        if not isinstance(question, str) or not question.strip() or answer in (None, ""):
            raise ValueError(f"{path}: row {lineno} has no question or no gold answer "
                             "(expected keys question/problem and answer)")
        out.append({**row, "question": question, "answer": str(answer)})
        if limit is not None and len(out) >= limit:
            break
    return out


def build_prompt(tokenizer, question):
    """The prompt text for a question: the tokenizer's chat template with a generation prompt.

    NOTE: every stage (SFT, PPO, PRM labeling, evaluation) builds prompts through this one function,
    so the policy always sees the format it was trained on.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return f"Question: {question}\nAnswer: "


# -----------------------------------------------------------------------------
# 2. Steps

def split_steps_with_ends(text, sep=DEFAULT_STEP_SEP):
    """Steps of `text` and, for each, the exclusive character index where it ends.

    A step is the stripped text between separators; empty steps (separator runs, trailing
    whitespace) are not steps. `end` points one past the step's last non-space character, so
    text[end - 1] is the character whose token receives the step's reward.
    """
    if not isinstance(text, str) or not text:
        return [], []
    if not sep:
        raise ValueError("step separator must be a non-empty string")
    steps, ends = [], []
    start = 0
    while start <= len(text):
        stop = text.find(sep, start)
        if stop == -1:
            stop = len(text)
        piece = text[start:stop]
        stripped = piece.strip()
        if stripped:
            steps.append(stripped)
            ends.append(start + len(piece.rstrip()))
        start = stop + len(sep)
    return steps, ends


def split_steps(text, sep=DEFAULT_STEP_SEP):
    """Steps per SPEC §3: the stripped, non-empty pieces of `text` between separators."""
    return split_steps_with_ends(text, sep)[0]


# -----------------------------------------------------------------------------
# 3. Clip / Delta / Clip-Delta on per-step values (B, K), right-padded with a bool mask

def _check_steps(scores, mask):
    if scores.dim() != 2 or mask.shape != scores.shape:
        raise ValueError(f"scores and mask must both be (B, K), got {tuple(scores.shape)} "
                         f"and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")


def clip(scores, mask, eta):
    """Clip: min(x_k - eta, 0) on real steps, 0 on padding. Every term is <= 0, so adding steps
    can only lower the return."""
    _check_steps(scores, mask)
    out = torch.clamp(scores.float() - eta, max=0.0)  # (B, K)
    return torch.where(mask, out, torch.zeros_like(out))


def delta(scores, mask):
    """Delta: d_k = x_k - x_{k+1} for k < K-1, d_{K-1} = x_{K-1}, d_K = 0 (1-indexed, K real steps).

    The last step's score is dropped (the success reward covers the final step), and
    sum_{j >= k} d_j = x_k for every k <= K-1: the return telescopes. K = 1 gives a single 0.
    """
    _check_steps(scores, mask)
    x = torch.where(mask, scores.float(), torch.zeros_like(scores, dtype=torch.float))  # (B, K)
    n = mask.sum(dim=1, keepdim=True)  # (B, 1) real steps per row
    idx = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, K), 0-indexed step k-1
    x_next = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)  # (B, K) x_{k+1}
    # 0-indexed i: i < n-2 -> x_i - x_{i+1};  i == n-2 -> x_i;  i >= n-1 -> 0
    out = torch.where(idx < n - 2, x - x_next, torch.zeros_like(x))
    out = torch.where(idx == n - 2, x, out)
    return out


def clip_delta(scores, mask, eta):
    """Clip first, then Delta on the clipped values."""
    return delta(clip(scores, mask, eta), mask)


def transform_step_rewards(scores, mask, mode, eta):
    """The per-step learned-reward term for a reward mode (before alpha). (B, K) -> (B, K)."""
    if mode == "prm":
        return torch.where(mask, scores.float(), torch.zeros_like(scores, dtype=torch.float))
    if mode == "clip":
        return clip(scores, mask, eta)
    if mode == "delta":
        return delta(scores, mask)
    if mode == "clip_delta":
        return clip_delta(scores, mask, eta)
    raise ValueError(f"no per-step transform for reward mode {mode!r} "
                     "(expected prm, clip, delta or clip_delta)")


# -----------------------------------------------------------------------------
# 4. Token placement

def step_end_token_indices(tokenizer, response_ids, step_char_ends):
    """Map each step's end character to the index of the policy token that holds it.

    response_ids: list[int], the generated tokens (EOS may be last); step_char_ends: exclusive
    char ends from split_steps_with_ends on `tokenizer.decode(response_ids, skip_special_tokens=True)`.
    Token i holds char c-1 when decode(ids[:i+1]) is the first prefix longer than c-1 chars; we
    binary-search it (K * log T decodes, works for any tokenizer, byte-level BPE included).
    """
    def prefix_len(i):  # chars decoded from tokens 0..i
        return len(tokenizer.decode(response_ids[: i + 1], skip_special_tokens=True))

    out = []
    for c in step_char_ends:
        lo, hi = 0, len(response_ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if prefix_len(mid) >= c:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return out


def place_rewards(step_values, step_end_idx, step_mask, success, response_mask):
    """Token-level reward (before KL): step values on step-end tokens, success on the last token.

    step_values (B, K) float, step_end_idx (B, K) long, step_mask (B, K) bool,
    success (B,) float, response_mask (B, T) bool (True on every generated token, EOS included).
    Returns (B, T) float.

        response tokens:  t0  t1  t2  t3  t4  t5  t6 <eos>  <pad>
        text:             "3+4=7"  \\n\\n  "7+1=8"        |
        step ends:                 ^ t2 (holds '7')      |
                                               ^ t6 (holds '8')
        success:                                     ^ t7 = EOS, the last True of response_mask

    NOTE: a step's reward goes on the token holding its *last character*, not the token after it
    (that would be the separator's token, and would shift credit to the next step with GAE);
    success goes on index response_mask.sum() - 1, the EOS for finished responses and the last
    generated token for truncated ones.
    """
    B, T = response_mask.shape
    rewards = torch.zeros(B, T, dtype=torch.float, device=response_mask.device)  # (B, T)
    if step_values.numel():
        idx = step_end_idx.clamp(0, T - 1)
        vals = torch.where(step_mask, step_values.float(), torch.zeros_like(step_values, dtype=torch.float))
        rewards.scatter_add_(1, idx, vals)
    last = (response_mask.long().sum(dim=1) - 1).clamp(min=0)  # (B,)
    rewards[torch.arange(B, device=rewards.device), last] += success.float()
    return rewards


# -----------------------------------------------------------------------------
# 1. Success grading (extract_answer, is_correct, success_reward): see below.
