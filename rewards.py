"""
The paper's rewards (Gao et al., arXiv 2410.15115), in the order a reward is built; the formulas
and decisions are in docs/METHOD.md. Every stage script imports them from here.

  1. Success reward (METHOD §4): Correct(q, s) = 1 iff the response finished (EOS) and its final
     answer equals the gold (grading.py extracts and compares; it never executes model text). A
     truncated response is never graded: success_rewards is the one place that rule lives, and
     every stage's accuracy comes from it.                          -> success_rewards
  2. Steps (METHOD §3): a response is split into steps at a separator ("\\n\\n" by default);
     repeated steps are a reward-hacking symptom we count.          -> split_steps, repeated_steps
  3. The learned-reward transforms (METHOD §2), on per-step PRM values x (B, K), 1-indexed k <= K:
       prm:         x_k                                  unbounded in K: what gets hacked
       clip:        c_k = min(x_k - eta, 0)              every step term <= 0
       delta:       x_k - x_{k+1} (k < K-1), x_{K-1} (k = K-1), 0 (k = K)     (--delta-last drop)
                    x_k - x_{k+1} (k < K),   x_K (k = K)                      (--delta-last keep)
       clip_delta:  delta(clip(x))
       min:         G_k - G_{k+1}, G_k = (soft)min_{j >= k} x_j  (PURE, arXiv 2504.15275)
       prm_normed:  x_k / K                              the paper's PR-Normed baseline
       prm_lenpen:  x_k - length_penalty                 a length-penalty baseline (our reading)
                                                                    -> transform_step_rewards
     Delta's whole-response return telescopes to x_1 (K >= 2), so padding a solution with steps
     does not raise the trajectory's return. NOTE: the per-token credit PPO optimises is another
     matter: the tokens of a step that is followed by another step get alpha * x_{j+1} more than
     if that step were the answer, so Delta still favours "write another step" (METHOD §2, "What
     PPO optimises"); --delta-last keep makes that gap 0, and Clip-Delta turns it into
     alpha * c_{j+1} <= 0 (a bias towards answering early). A response without EOS: apply_truncation.
  4. Token placement (METHOD §3): per-step values go on the token that holds each step's last
     character, the success reward on the last response token.     -> place_rewards
     step_scores_to_tensors maps reward-model scores to those tokens.
  5. Reward-model scoring (METHOD §5): PRM / ORM as causal LMs read at a step tag; one batching
     routine for every caller.                     -> load_reward_model, RewardModel, score_responses
     The implicit form (METHOD §5, "Implicit PRM") reads no tag: step k's margin is
     beta * sum of log pi(y_t) / pi_ref(y_t) over the response tokens up to the end of step k, with
     pi_ref the policy the reward model started from.  -> implicit_input, implicit_margins
     The likelihood form reads no tag and no reference: step k's margin is beta * (the lowest
     per-step sum of log pi(y_t) among steps 1..k) + offset.                   -> likelihood_margins

Shape legend: B responses, T response tokens, K steps (right-padded, with a bool mask).
"""

import json
import os
import re

import torch
from tqdm import tqdm

from common import RunError, _tokenizer_from_pretrained, build_prompt, is_master
from grading import grade_batch, is_correct

DEFAULT_STEP_SEP = "\n\n"

# -----------------------------------------------------------------------------
# 1. Success reward (METHOD §4)

def success_reward(response, gold, truncated=False):
    """Correct(q, s) in {0.0, 1.0} for one response: success_rewards for a batch of one."""
    return success_rewards([response], [gold], [not truncated])[0]


def success_rewards(responses, golds, finished, workers=1, statuses=None):
    """Correct(q, s) per response (METHOD §4), as floats in {0.0, 1.0}: 1.0 iff the response
    finished (ended with EOS) and its final answer equals the gold.

    NOTE: this is the one place the truncation rule lives: a response cut at the token budget is
    never graded (its reward is 0 whatever it says). Every stage's accuracy comes from here.
    workers: grading processes (grade_batch's `processes`; 0 or 1 grades in this process).
    statuses: a list to extend with the grader's status of each response ("ok", "timeout",
    "error"; "ok" for a truncated one, which is not graded), so callers can count grader timeouts
    and errors. A gold that cannot be parsed raises ValueError, as in is_correct.
    """
    responses, golds, finished = list(responses), list(golds), [bool(f) for f in finished]
    if not len(responses) == len(golds) == len(finished):
        raise ValueError(f"{len(responses)} responses, {len(golds)} golds, {len(finished)} finished flags")
    todo = [i for i, f in enumerate(finished) if f]
    graded = []
    kw = {} if statuses is None else {"statuses": graded}
    ok = grade_batch([responses[i] for i in todo], [golds[i] for i in todo], processes=workers, **kw)
    out, status = [0.0] * len(responses), ["ok"] * len(responses)
    for i, o in zip(todo, ok):
        out[i] = 1.0 if o else 0.0
    for i, st in zip(todo, graded):
        status[i] = st
    if statuses is not None:
        statuses.extend(status)
    return out


# -----------------------------------------------------------------------------
# 2. Steps (METHOD §3)

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
    """Steps per METHOD §3: the stripped, non-empty pieces of `text` between separators."""
    return split_steps_with_ends(text, sep)[0]


def repeated_steps(steps):
    """How many steps are identical, after whitespace normalisation (runs of whitespace -> one
    space; case kept), to an earlier step of the same response: a reward-hacking symptom (METHOD §2)."""
    seen, n = set(), 0
    for s in steps:
        key = " ".join(s.split())
        n += key in seen
        seen.add(key)
    return n


# -----------------------------------------------------------------------------
# 3. The learned-reward transforms on per-step values (B, K), right-padded with a bool mask (METHOD §2),
#    and the truncation policy (METHOD §4)

def _check_steps(scores, mask):
    if scores.dim() != 2 or mask.shape != scores.shape:
        raise ValueError(f"scores and mask must both be (B, K), got {tuple(scores.shape)} "
                         f"and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")


LEARNED_MODES = ("prm", "clip", "delta", "clip_delta", "prm_normed", "prm_lenpen", "min")
DELTA_LAST = ("drop", "keep")
TRUNCATION_POLICIES = ("zero-success", "no-score")


def _masked(scores, mask):
    return torch.where(mask, scores.float(), torch.zeros_like(scores, dtype=torch.float))  # (B, K)


def _differences(G, mask):
    """Per-step values d_k = G_k - G_{k+1} (G_{K+1} = 0) whose return-to-go is G_k on real steps."""
    G = torch.where(mask, G, torch.zeros_like(G))  # (B, K)
    G_next = torch.cat([G[:, 1:], torch.zeros_like(G[:, :1])], dim=1)  # (B, K) G_{k+1}, 0 past the end
    return torch.where(mask, G - G_next, torch.zeros_like(G))


def clip(scores, mask, eta):
    """Clip: min(x_k - eta, 0) on real steps, 0 on padding. Every term is <= 0, so adding steps
    can only lower the return."""
    _check_steps(scores, mask)
    out = torch.clamp(scores.float() - eta, max=0.0)  # (B, K)
    return torch.where(mask, out, torch.zeros_like(out))


def delta(scores, mask, last="drop"):
    """Delta: d_k = x_k - x_{k+1} for k < K-1, d_{K-1} = x_{K-1}, d_K = 0 (1-indexed, K real steps).

    last="drop" (the paper's rule): the last step's score is dropped (the success reward covers the
    final step), and sum_{j >= k} d_j = x_k for every k <= K-1: the return telescopes. K = 1 gives
    a single 0. last="keep": d_k = x_k - x_{k+1} for k < K and d_K = x_K, so sum_{j >= k} d_j = x_k
    for every k, the last included: the per-token gap between "write another step" and "answer
    now" at a step boundary is 0 instead of x_{j+1} (METHOD §2, "What PPO optimises").
    """
    _check_steps(scores, mask)
    if last not in DELTA_LAST:
        raise ValueError(f"delta last={last!r}: expected one of {DELTA_LAST}")
    x = _masked(scores, mask)  # (B, K)
    if last == "keep":  # the return-to-go from k is x_k for every k: G = x, then differences
        return _differences(x, mask)
    n = mask.sum(dim=1, keepdim=True)  # (B, 1) real steps per row
    idx = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, K), 0-indexed step k-1
    x_next = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)  # (B, K) x_{k+1}
    # 0-indexed i: i < n-2 -> x_i - x_{i+1};  i == n-2 -> x_i;  i >= n-1 -> 0
    out = torch.where(idx < n - 2, x - x_next, torch.zeros_like(x))
    out = torch.where(idx == n - 2, x, out)
    return out


def clip_delta(scores, mask, eta, last="drop"):
    """Clip first, then Delta on the clipped values."""
    return delta(clip(scores, mask, eta), mask, last)


def min_form(scores, mask, temperature=0.0):
    """Min-form credit (PURE, Cheng et al., arXiv 2504.15275), as per-step values d_k whose
    return-to-go (gamma = 1) is a (soft) minimum of the future step scores:

        temperature = 0:  G_k = min_{j >= k} x_j
        temperature T > 0: G_k = sum_{j >= k} w_j x_j,  w = softmax(-x_j / T) over j >= k
        d_k = G_k - G_{k+1}   (G_{K+1} = 0, so d_K = x_K)

    NOTE: PURE itself reweights the process rewards once over the whole response (x_k times a
    softmax(-x / T) weight), so that the return from the first step is the soft minimum of all
    scores; we instead set the return-to-go from *every* step to the (soft) minimum of its suffix
    and take differences, so each step's credit is exactly its suffix's minimum. The two agree on
    the return from step 1 at T -> 0 (METHOD §2).
    """
    _check_steps(scores, mask)
    if temperature < 0:
        raise ValueError(f"min-form temperature must be >= 0, got {temperature}")
    x = _masked(scores, mask)  # (B, K)
    if temperature == 0:
        inf = torch.full_like(x, float("inf"))
        G = torch.where(mask, x, inf).flip(1).cummin(dim=1).values.flip(1)  # (B, K) min_{j >= k} x_j
        return _differences(G, mask)  # (inf on padding rows is masked there)
    K = x.shape[1]
    idx = torch.arange(K, device=x.device)
    valid = mask.unsqueeze(1) & (idx.view(1, 1, K) >= idx.view(1, K, 1))  # (B, K, K) [b, k, j]: j >= k, real
    logits = (-x / temperature).unsqueeze(1).expand(-1, K, -1)  # (B, K, K)
    logits = torch.where(valid, logits, torch.full_like(logits, float("-inf")))
    logits = torch.where(valid.any(dim=2, keepdim=True), logits, torch.zeros_like(logits))  # no NaN rows
    w = torch.softmax(logits, dim=2) * valid  # (B, K, K) softmin weights over j >= k
    G = (w * x.unsqueeze(1)).sum(dim=2)  # (B, K)
    return _differences(G, mask)


def prm_normed(scores, mask):
    """PR-Normed (the paper's baseline): x_k / K, so the return is the mean step score. A step
    scored above the current mean still raises it."""
    _check_steps(scores, mask)
    n = mask.sum(dim=1, keepdim=True).clamp(min=1).float()  # (B, 1)
    return _masked(scores, mask) / n


def prm_lenpen(scores, mask, penalty):
    """Length-penalty baseline, our reading: x_k - penalty on every real step, so the return is
    sum_k x_k - penalty * K. A step scored above `penalty` still raises it. With penalty = eta it
    is Clip without the clamp at 0."""
    _check_steps(scores, mask)
    return torch.where(mask, scores.float() - penalty, torch.zeros_like(scores, dtype=torch.float))


def transform_step_rewards(scores, mask, mode, eta=0.5, delta_last="drop", min_temperature=0.0,
                           length_penalty=0.5):
    """The per-step learned-reward term for a reward mode in LEARNED_MODES (before alpha).
    (B, K) -> (B, K)."""
    if mode == "prm":
        _check_steps(scores, mask)
        return _masked(scores, mask)
    if mode == "clip":
        return clip(scores, mask, eta)
    if mode == "delta":
        return delta(scores, mask, delta_last)
    if mode == "clip_delta":
        return clip_delta(scores, mask, eta, delta_last)
    if mode == "prm_normed":
        return prm_normed(scores, mask)
    if mode == "prm_lenpen":
        return prm_lenpen(scores, mask, length_penalty)
    if mode == "min":
        return min_form(scores, mask, min_temperature)
    raise ValueError(f"no per-step transform for reward mode {mode!r} (expected one of {LEARNED_MODES})")


def apply_truncation(success, values, finished, policy):
    """A response cut at the token limit (no EOS), METHOD §4. success (B,), values (B, K) after
    alpha, finished (B,) bool -> (success, values).

    zero-success (ours, the default): Correct = 0 (success_rewards already gives it), the learned
    terms stay. no-score (ReaLHF, the paper's authors' framework): Correct and every learned term of
    the row are 0. The KL penalty is not touched here: it stays under both policies.
    """
    if policy not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation policy {policy!r}: expected one of {TRUNCATION_POLICIES}")
    keep = finished.to(device=success.device, dtype=torch.bool)  # (B,)
    success = torch.where(keep, success, torch.zeros_like(success))  # never graded: 0 under both
    if policy == "no-score":
        values = torch.where(keep.unsqueeze(1), values, torch.zeros_like(values))  # (B, K)
    return success, values


# -----------------------------------------------------------------------------
# 4. Token placement (METHOD §3)

def step_end_token_indices(tokenizer, response_ids, step_char_ends):
    """Map each step's end character to the index of the policy token that holds it.

    response_ids: list[int], the generated tokens (EOS may be last); step_char_ends: exclusive
    char ends from split_steps_with_ends on `tokenizer.decode(response_ids, skip_special_tokens=True)`.
    Token i holds char c-1 (its last byte, for a character split across byte-level tokens) when
    decode(ids[:i+1]) is the first prefix whose char c-1 is the full text's; we binary-search it
    (K * log T decodes, works for any tokenizer, byte-level BPE included).

    NOTE: a prefix ending mid-character (。 or an emoji split into byte tokens) decodes its partial
    bytes to one U+FFFD, as long as the finished character: counting chars alone would put the
    reward 1-3 tokens early, on the token holding the character's first bytes.
    """
    text = tokenizer.decode(response_ids, skip_special_tokens=True)

    def holds(i, c):  # tokens 0..i decode char c-1 completely
        prefix = tokenizer.decode(response_ids[: i + 1], skip_special_tokens=True)
        return len(prefix) >= c and prefix[c - 1] == text[c - 1]

    out = []
    for c in step_char_ends:
        lo, hi = 0, len(response_ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if holds(mid, c):
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


def step_scores_to_tensors(tokenizer, response_ids, step_scores, sep=DEFAULT_STEP_SEP, outcome=False,
                           device=None):
    """Per-response score lists -> (values (B, K) float, end_idx (B, K) long, mask (B, K) bool).

    PRM: score k goes on the policy token holding the last char of step k of
    tokenizer.decode(ids, skip_special_tokens=True) (step_end_token_indices). ORM (`outcome=True`,
    one score each): on the last response token, len(ids) - 1, where success also goes.
    """
    B = len(response_ids)
    K = max([len(s) for s in step_scores] + [1])
    values = torch.zeros(B, K, dtype=torch.float)
    end_idx = torch.zeros(B, K, dtype=torch.long)
    mask = torch.zeros(B, K, dtype=torch.bool)
    for b, (ids, sc) in enumerate(zip(response_ids, step_scores)):
        ids = list(ids)
        if not sc or not ids:
            continue
        if outcome:
            ends = [len(ids) - 1] * len(sc)
        else:
            text = tokenizer.decode(ids, skip_special_tokens=True)
            _, char_ends = split_steps_with_ends(text, sep)
            if len(char_ends) != len(sc):
                raise ValueError(f"response {b}: {len(sc)} scores for {len(char_ends)} steps; score "
                                 "the decoded policy text with the same step separator")
            ends = step_end_token_indices(tokenizer, ids, char_ends)
        values[b, : len(sc)] = torch.tensor(sc, dtype=torch.float)
        end_idx[b, : len(sc)] = torch.tensor(ends, dtype=torch.long)
        mask[b, : len(sc)] = True
    return values.to(device), end_idx.to(device), mask.to(device)


# -----------------------------------------------------------------------------
# 5. Reward-model scoring (METHOD §5): PRM / ORM as causal LMs read at a step tag (Math-Shepherd format)
#
# A PRM is a plain causal LM. Its input is rebuilt from TEXT, so the PRM's tokenizer need not be the
# policy's (METHOD §3). Input formats (`input_format`), steps from split_steps(response, step_sep):
#
#   "chat" (ours, the default):  build_prompt(prm_tokenizer, question)
#                                + step_1 + TAG + step_sep + step_2 + TAG + ... + step_K + TAG
#       i.e. exactly the text the policy saw and wrote, with the tag glued to the end of every step
#       (before the separator). The ORM has one TAG, after step_K. Tokenized without adding special
#       tokens (the chat template carries BOS when a model wants one).
#   "math-shepherd" (public Math-Shepherd PRMs, tag "ки"):
#       question + " " + "Step 1: " + step_1 + " ки" + "\n" + "Step 2: " + step_2 + " ки" ...
#       as in peiyi9979/math-shepherd-mistral-7b-prm's model card (an existing "Step k:" prefix is
#       kept, not doubled); tokenized with special tokens (BOS), as `tokenizer.encode` does there.
#   "qwen-prm" (Qwen2.5-Math-PRM, separator "<extra_0>" + a 2-class head, no remote code needed):
#       chat template of [system, user: question, assistant: step_1<extra_0>step_2<extra_0>...].
#
# score = P(pos) / (P(pos) + P(neg)) = sigmoid(logit[pos] - logit[neg]) from the logits AT the tag's
# last token (they predict the token after the tag), or softmax(head)[1] for a 2-class head. A tag may be
# several tokens in context (Qwen2's byte-level BPE: " ки" -> " к" + "и"): tag_read_id finds the token
# read, checked on probe inputs when the reward model loads.
# One forward per response scores all K steps; only the two label rows of the LM head are applied,
# at the tag positions only (no (B, T, V) logits). Our checkpoints carry their tag, label tokens,
# input format and step separator in meta.json["reward_model"] (written by prm_train.py).

RM_INPUT_FORMATS = ("chat", "math-shepherd", "qwen-prm")
MATH_SHEPHERD_TAG = "ки"
QWEN_PRM_TAG = "<extra_0>"
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


_TAG = object()  # placeholder for the step tag while an input text is assembled


def rm_input_text(tokenizer, question, steps, step_tag, kind="prm", input_format="chat",
                  step_sep=DEFAULT_STEP_SEP, prompt="auto"):
    """The reward-model input text for one (question, steps) and the char span of every tag in it.

    Returns (text, spans): spans[k] = (start, end) of the k-th tag; K spans for a PRM, one for an ORM
    (after the whole solution). prm_train.py builds its training inputs with this same function.
    prompt: build_prompt's format for the "chat" input (prm_train.py saves it in meta.json).
    """
    if kind not in ("prm", "orm"):
        raise ValueError(f"kind must be 'prm' or 'orm', got {kind!r}")
    K = len(steps)
    if input_format == "chat":
        parts = [build_prompt(tokenizer, question, prompt)]
        for k, step in enumerate(steps):
            parts += [step] + ([_TAG] if kind == "prm" or k == K - 1 else []) + ([step_sep] if k < K - 1 else [])
        if K == 0 and kind == "orm":
            parts.append(_TAG)
        return _join_with_tags(parts, step_tag)
    if input_format == "math-shepherd":
        parts = [question + " "]
        for k, step in enumerate(steps):
            parts.append(step if re.match(r"Step \d+:", step) else f"Step {k + 1}: {step}")
            parts += ([" ", _TAG] if kind == "prm" or k == K - 1 else []) + (["\n"] if k < K - 1 else [])
        if K == 0 and kind == "orm":
            parts.append(_TAG)
        return _join_with_tags(parts, step_tag)
    if input_format == "qwen-prm":
        if kind == "prm":
            body = [p for s in steps for p in (s, _TAG)]
        else:
            body = [p for k, s in enumerate(steps) for p in ([s] if k == K - 1 else [s, step_sep])] + [_TAG]
        content, spans = _join_with_tags(body, step_tag)
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": QWEN_PRM_SYSTEM}, {"role": "user", "content": question},
             {"role": "assistant", "content": content}], tokenize=False, add_generation_prompt=False)
        base = text.rfind(content)
        if base < 0:
            raise ValueError("the chat template altered the assistant content; cannot locate the tags")
        return text, [(base + a, base + b) for a, b in spans]
    raise ValueError(f"unknown input_format {input_format!r} (expected one of {RM_INPUT_FORMATS})")


def _join_with_tags(parts, step_tag):
    """Concatenate text parts, writing step_tag for each _TAG and recording its char span."""
    text, spans = "", []
    for p in parts:
        if p is _TAG:
            spans.append((len(text), len(text) + len(step_tag)))
            p = step_tag
        text += p
    return text, spans


def _single_token_id(tokenizer, token):
    """The id of `token` as one token (leading whitespace-only pieces dropped), or None."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    while len(ids) > 1 and not tokenizer.decode(ids[:1]).strip():
        ids = ids[1:]
    if len(ids) == 1:
        return ids[0]
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


# Steps that end in a letter, a digit, punctuation, LaTeX and a non-ASCII letter: the text a tag may
# follow in each input format. A tag is read the same way after every one of them, or not at all.
_PROBE_QUESTION = "What is 3 + 4?"
_PROBE_STEPS = ["We add 3 and 4", "3 + 4 = 7", "So the sum is 7.", "The answer is $\\boxed{7}$",
                "答案是七", "Step 6: done"]


def _tag_token_positions(offsets, spans):
    """Per tag span (a, b): the index of the LAST token overlapping the tag's last char, and whether
    that token ends exactly at b (no text after the tag shares it). offsets: (start, end) per token."""
    last = {}  # char -> the last token overlapping it (byte-level tokens may split a char)
    for t, (s, e) in enumerate(offsets):
        for c in range(s, e):
            last[c] = t
    out = []
    for a, b in spans:
        t = last.get(b - 1, -1)
        out.append((t, t >= 0 and offsets[t][1] == b))
    return out


def tag_read_id(tokenizer, step_tag, input_format="chat", step_sep=DEFAULT_STEP_SEP, prompt="auto"):
    """The token id a reward model's score is read at: the LAST token of the step tag as the tag
    tokenizes in the inputs of `input_format`. ValueError (one line) when the tag cannot be located.

    Math-Shepherd's own recipe reads the logits where input_ids == tokenizer.encode("ки")[-1]. Byte-
    level BPE may split a tag in context (Qwen2: " ки" -> " к" + "и"); the read is then at the tag's
    last token ("и"), the token whose logits have seen the whole tag. Checked on probe inputs (see
    _PROBE_STEPS): in every one the tag must end a token exactly (nothing after the tag merged into
    its last token) and end on the same id, so the score is read at one token, as in training.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("reward-model scoring needs a fast (Rust) tokenizer for character offsets")
    text, spans = rm_input_text(tokenizer, _PROBE_QUESTION, _PROBE_STEPS, step_tag, "prm", input_format,
                                step_sep, prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, found = enc["input_ids"], _tag_token_positions(enc["offset_mapping"], spans)
    merged = [_PROBE_STEPS[k][-12:] for k, (t, ok) in enumerate(found) if not ok]
    if merged:
        raise ValueError(f"step tag {step_tag!r} shares a token with the text after it in the {input_format} "
                         f"input format (after step text ending {merged[0]!r}); use a tag that is a special "
                         "token (prm_train.py adds one) or another --step-tag")
    read = {ids[t] for t, _ in found}
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in read:
        raise ValueError(f"step tag {step_tag!r} is not in the vocabulary (it tokenizes to the unknown token "
                         f"{tokenizer.unk_token!r}); pass a --step-tag the reward model was trained with")
    if len(read) > 1:
        raise ValueError(f"step tag {step_tag!r} ends on different tokens after different step texts in the "
                         f"{input_format} input format ({sorted(tokenizer.convert_ids_to_tokens(list(read)))}); "
                         "use a special-token tag (prm_train.py adds one) or the math-shepherd input format")
    return read.pop()


def resolve_rm_tokens(tokenizer, step_tag, pos_token=None, neg_token=None, where="the tokenizer",
                      input_format="chat", step_sep=DEFAULT_STEP_SEP, prompt="auto"):
    """(tag id, pos id, neg id), checked when a reward model loads: the tag id is tag_read_id's (the
    tag may be several tokens in context); pos and neg must be one token each. One clear ValueError
    naming every problem."""
    problems, ids = [], []
    try:
        ids.append(tag_read_id(tokenizer, step_tag, input_format, step_sep, prompt))
    except ValueError as e:
        problems.append(str(e))
        ids.append(None)
    missing = []
    for what, tok in [("pos token", pos_token), ("neg token", neg_token)]:
        i = None if tok is None else _single_token_id(tokenizer, tok)
        if tok is not None and i is None:
            missing.append(f"{what} {tok!r}")
        ids.append(i)
    if missing:
        problems.append(f"{where} has no single token for {', '.join(missing)}: a reward model reads its score "
                        "from the logits of one pos and one neg token (pass pos_token=/neg_token= that exist)")
    if problems:
        raise ValueError("; ".join(problems))
    return ids


def encode_rm_input(tokenizer, text, spans, tag_id, add_special_tokens):
    """Token ids of `text` and, per tag span, the index of the tag's LAST token (tag_read_id).

    NOTE: the tag is located by character offsets, not by searching ids == tag_id, so a question or
    step that happens to contain the tag cannot shift the scores; a tag that merges with the text
    after it, or ends on another token than tag_id, is an error, never a silent misread.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("reward-model scoring needs a fast (Rust) tokenizer for character offsets")
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = enc["input_ids"]
    pos = []
    for (a, b), (t, ends) in zip(spans, _tag_token_positions(enc["offset_mapping"], spans)):
        if not ends or ids[t] != tag_id:
            got = tokenizer.convert_ids_to_tokens(ids[t]) if t >= 0 else None
            raise ValueError(f"step tag {text[a:b]!r} is not read at its own token here (token there: {got!r}, "
                             f"expected {tokenizer.convert_ids_to_tokens(tag_id)!r}); use a tag that is a "
                             "special token")
        pos.append(t)
    return ids, pos


def tag_margins(model, head, input_ids, attention_mask, tag_pos, label_ids):
    """logit(pos) - logit(neg) at the tag positions, fp32. The score is sigmoid of it.

    input_ids, attention_mask: (B, L) right-padded; tag_pos: (B, K) long (padding entries any
    valid index); label_ids: (pos_id, neg_id) for an LM head, ignored with a 2-class `head`.
    Returns (B, K) float32. Differentiable (prm_train.py trains through it).
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
    backbone = model.base_model if head is None else model
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids).last_hidden_state  # (B, L, H)
    h = hidden.gather(1, tag_pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, K, H)
    if head is not None:  # 2-class head: class 1 = positive
        logits = head(h.to(next(head.parameters()).dtype)).float()  # (B, K, 2)
        return logits[..., 1] - logits[..., 0]
    lm_head = model.get_output_embeddings()
    w = lm_head.weight[list(label_ids)].float()  # (2, H) the pos and neg rows only
    logits = h.float() @ w.T  # (B, K, 2)
    if getattr(lm_head, "bias", None) is not None:
        logits = logits + lm_head.bias[list(label_ids)].float()
    return logits[..., 0] - logits[..., 1]


def implicit_input(tokenizer, question, steps, kind, step_sep=DEFAULT_STEP_SEP, prompt="auto",
                   add_special_tokens=False):
    """The implicit reward model's input: the policy's own text, no tags.

    Returns (ids, ends, start): ids of build_prompt(question) + step_sep.join(steps); ends[k] = the
    index of the token holding step k's last character (PRM: every step; ORM: the last one only);
    start = the index of the token holding the first response character. No steps: a PRM gets
    ends = [], an ORM one entry whose sum is empty (score 1/2).
    """
    head = build_prompt(tokenizer, question, prompt)
    text, char_ends = head, []
    for k, step in enumerate(steps):
        text += (step_sep if k else "") + step
        char_ends.append(len(text))
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]

    def holding(c):  # the last token that starts at or before char c
        return max(i for i, (a, b) in enumerate(offsets) if a <= c and b > a)

    ends = [holding(e - 1) for e in char_ends]
    start = holding(len(head)) if steps and len(text) > len(head) else len(enc["input_ids"])
    if kind == "orm":  # one score, even without steps (as the tag ORM): then an empty sum, 1/2
        ends = ends[-1:] or [len(enc["input_ids"]) - 1]
    return enc["input_ids"], ends, max(start, 1)


def implicit_margins(model, ref, input_ids, attention_mask, start, ends, beta):
    """beta * sum_{start <= t <= ends[b, k]} [log pi(x_t | x_<t) - log pi_ref(x_t | x_<t)], fp32 (B, K).

    input_ids, attention_mask: (B, L) right-padded; start: (B,) first response token (>= 1); ends:
    (B, K) step-end token indices (padding entries: anything, their values are meaningless).
    Differentiable through `model`; `ref` runs without grads; ref None: no reference term (the model's
    own log-likelihoods, bench/logprob_readout.py).
    NOTE: the log-softmax is over the full vocabulary for every position: fine for the arith world,
    several GB per batch at a 150k vocabulary (score with a small batch there).
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    target = input_ids[:, 1:, None]  # token t + 1 is predicted at t

    def logp(m):
        logits = m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, target)[..., 0]  # (B, L-1)

    with torch.no_grad():
        ref_logp = logp(ref) if ref is not None else 0.0
    t = torch.arange(1, input_ids.shape[1], device=input_ids.device)[None]  # position of each target
    keep = (t >= start[:, None]) & attention_mask[:, 1:].bool()
    cum = ((logp(model) - ref_logp) * keep).cumsum(1)  # (B, L-1): running sum up to token t + 1
    return beta * cum.gather(1, (ends - 1).clamp(min=0))  # padding entries (ends 0): any value


def likelihood_margins(model, input_ids, attention_mask, start, ends, beta, offset):
    """The likelihood form: beta * min_{j <= k} S_j + offset, fp32 (B, K), with S_j the sum of
    log pi(y_t | y_<t) over step j's tokens (from the token after step j-1's last one, the separator
    included, to step j's last token; step 1 from `start`). A prefix is as good as its worst step, so
    the margin never rises along a response; it starts as the init's own reading of each step
    (bench/logprob_readout.py "min step"). Arguments as implicit_margins; differentiable.
    NOTE: no reference term, so a step's margin falls with its length (nats are summed, not averaged).
    """
    cum = implicit_margins(model, None, input_ids, attention_mask, start, ends, 1.0)  # (B, K) running sums
    steps = cum - torch.nn.functional.pad(cum[:, :-1], (1, 0))  # S_j = cum_j - cum_{j-1}
    return beta * steps.cummin(1).values + offset  # padding entries come last: they never reach a real one


def _pad_batch(rows, pad_id, device):
    """Right-pad token-id lists and tag-position lists. -> ids (B, L), attn (B, L), pos (B, K), kmask (B, K)."""
    B = len(rows)
    L = max(len(ids) for ids, _ in rows)
    K = max(1, max(len(p) for _, p in rows))
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    pos = torch.zeros(B, K, dtype=torch.long)
    kmask = torch.zeros(B, K, dtype=torch.bool)
    for b, (row_ids, row_pos) in enumerate(rows):
        ids[b, : len(row_ids)] = torch.tensor(row_ids)
        attn[b, : len(row_ids)] = 1
        pos[b, : len(row_pos)] = torch.tensor(row_pos, dtype=torch.long)
        kmask[b, : len(row_pos)] = True
    return ids.to(device), attn.to(device), pos.to(device), kmask.to(device)


class RewardModel:
    """A loaded PRM / ORM. `score(questions, responses)` -> per response, P(pos) at each step tag."""

    def __init__(self, model, tokenizer, kind, step_tag, pos_token, neg_token, input_format,
                 step_sep, device, head=None, batch_size=16, prompt="auto", ref=None, beta=None, form=None,
                 offset=0.0):
        self.model, self.tokenizer, self.head, self.prompt = model, tokenizer, head, prompt
        self.kind, self.step_tag, self.input_format, self.step_sep = kind, step_tag, input_format, step_sep
        self.pos_token, self.neg_token = pos_token, neg_token
        self.device, self.batch_size = device, batch_size
        self.form = form or ("implicit" if ref is not None else "tag")  # tag | implicit | likelihood
        self.ref, self.beta, self.offset = ref, beta, offset  # implicit: a reference policy; likelihood: none
        self.add_special_tokens = input_format == "math-shepherd" or not getattr(tokenizer, "chat_template", None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if self.form != "tag":
            self.tag_id = self.pos_id = self.neg_id = None
            return
        where = f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r}"
        labels = (pos_token, neg_token) if head is None else (None, None)
        # NOTE: the tag is checked here, at load, on probe inputs: never first found after a rollout
        self.tag_id, self.pos_id, self.neg_id = resolve_rm_tokens(tokenizer, step_tag, *labels, where=where,
                                                                  input_format=input_format, step_sep=step_sep,
                                                                  prompt=prompt)

    def encode(self, question, steps):
        """(ids, tag token positions) for one question and its list of steps; the implicit form:
        (ids, step-end token positions, first response token) from implicit_input."""
        if self.form != "tag":
            return implicit_input(self.tokenizer, question, steps, self.kind, self.step_sep, self.prompt,
                                  self.add_special_tokens)
        text, spans = rm_input_text(self.tokenizer, question, steps, self.step_tag, self.kind,
                                    self.input_format, self.step_sep, self.prompt)
        return encode_rm_input(self.tokenizer, text, spans, self.tag_id, self.add_special_tokens)

    def margins(self, rows):
        """Batch of encode() rows -> (B, K) margins (differentiable) and (B, K) bool mask."""
        ids, attn, pos, kmask = _pad_batch([r[:2] for r in rows], self.pad_id, self.device)
        if self.form != "tag":
            start = torch.tensor([r[2] for r in rows], device=ids.device)
            if self.form == "likelihood":
                return likelihood_margins(self.model, ids, attn, start, pos, self.beta, self.offset), kmask
            return implicit_margins(self.model, self.ref, ids, attn, start, pos, self.beta), kmask
        return tag_margins(self.model, self.head, ids, attn, pos, (self.pos_id, self.neg_id)), kmask

    def score(self, questions, responses, batch_size=None):
        """Per response: [P(pos) at the tag after each step] (PRM, K values) or [P(pos)] (ORM).
        score_responses with this model's default batch size."""
        return score_responses(self, questions, responses, batch_size or self.batch_size)

    def score_tokens(self, questions, policy_tokenizer, response_ids, batch_size=None):
        """Score policy samples and map each score to the policy token that ends its step.

        response_ids: B lists of generated token ids (no padding; EOS may be last). Returns the
        (values (B, K), end_idx (B, K), mask (B, K)) triple that place_rewards takes.
        """
        texts = [policy_tokenizer.decode(ids, skip_special_tokens=True) for ids in response_ids]
        scores = self.score(questions, texts, batch_size)
        return step_scores_to_tensors(policy_tokenizer, response_ids, scores, self.step_sep,
                                      outcome=self.kind == "orm")


@torch.no_grad()
def score_responses(rm, questions, responses, batch_size, desc=None):
    """The one reward-model batching routine: per response, the list of P(pos) at its tags.

    responses: texts, split into steps with rm.step_sep, or lists of steps already split (a labeled
    record scored on its own steps, as prm_train.py evaluates). PRM: one score per step; ORM: one
    score (an ORM input always has its final tag, so even a response without steps gets one); a PRM
    response without steps gets []. One forward per response, `batch_size` responses per forward,
    longest input first to limit padding (scores do not depend on batch composition or padding).
    desc: a tqdm bar on rank 0. Returns a list of float lists, in the order given.
    """
    if len(questions) != len(responses):
        raise ValueError(f"{len(questions)} questions for {len(responses)} responses")
    rows = [rm.encode(q, split_steps(r, rm.step_sep) if isinstance(r, str) else list(r))
            for q, r in zip(questions, responses)]
    out = [[] for _ in rows]
    todo = sorted((i for i in range(len(rows)) if rows[i][1]), key=lambda i: -len(rows[i][0]))
    for s in tqdm(range(0, len(todo), batch_size), desc=desc, disable=desc is None or not is_master()):
        chunk = todo[s: s + batch_size]
        m, kmask = rm.margins([rows[i] for i in chunk])  # (b, K) each
        p = torch.sigmoid(m).cpu()  # (b, K)
        for j, i in enumerate(chunk):
            out[i] = p[j][kmask[j].cpu()].tolist()
    return out


def read_rm_meta(path):
    """meta.json["reward_model"] of a local checkpoint written by prm_train.py, or {}."""
    f = os.path.join(path, "meta.json")
    if os.path.isdir(path) and os.path.exists(f):
        with open(f, encoding="utf-8") as fh:
            return json.load(fh).get("reward_model", {}) or {}
    return {}


def _load_two_class_head(path, config):
    """Qwen2.5-Math-PRM's head (Linear(H, H), ReLU, Linear(H, 2) stored as score.0 / score.2),
    read straight from the safetensors shards: no remote code runs."""
    from safetensors import safe_open

    files = [f for f in os.listdir(path) if f.endswith(".safetensors")] if os.path.isdir(path) else []
    if not files:
        raise ValueError(f"{path}: a 2-class-head PRM must be a local directory with safetensors "
                         "(download it first, e.g. `huggingface-cli download Qwen/Qwen2.5-Math-PRM-7B`)")
    tensors = {}
    for f in files:
        with safe_open(os.path.join(path, f), framework="pt") as fh:
            for k in fh.keys():
                if k.startswith("score."):
                    tensors[k] = fh.get_tensor(k)
    need = ["score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"]
    if any(k not in tensors for k in need):
        raise ValueError(f"{path}: 2-class head weights not found (expected {need}); other head "
                         "layouts need a small loader here")
    H = config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(H, H), torch.nn.ReLU(), torch.nn.Linear(H, 2))
    head.load_state_dict({k[len("score."):]: v for k, v in tensors.items() if k in need})
    return head


def load_reward_model(path, kind="prm", step_tag=None, pos_token="+", neg_token="-", device=None,
                      dtype=None, input_format=None, step_sep=None, batch_size=16):
    """Load a PRM / ORM for scoring. Returns a RewardModel; see its `score`.

    path: a checkpoint directory (or hub id when online). step_tag=None reads the tag saved by
    prm_train.py in meta.json (for a public Math-Shepherd PRM pass "ки"; a Qwen2.5-Math-PRM
    checkpoint, detected from its config, defaults to "<extra_0>"). input_format=None: the saved one,
    else "math-shepherd" when the tag is "ки", "qwen-prm" for a 2-class head, else "chat".
    dtype=None: float32 on CPU, bfloat16 on CUDA with bf16 support. Frozen: eval(), no grads.
    A checkpoint of prm_train.py --form implicit (meta.json form "implicit") loads with its reference
    policy (the "ref" folder inside it) and reads no tag; one of --form likelihood (form "likelihood")
    loads alone, with its fitted beta and offset, and reads no tag either.
    A tag, label token or input format that cannot work with the tokenizer is a ValueError here,
    at load (resolve_rm_tokens), never at the first scoring.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if kind not in ("prm", "orm"):
        raise ValueError(f"kind must be 'prm' or 'orm', got {kind!r}")
    meta = read_rm_meta(path)
    if meta.get("kind") and meta["kind"] != kind:
        print(f"NOTE: {path} was trained as a {meta['kind'].upper()}; scoring it as a {kind.upper()}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    step_sep = step_sep or meta.get("step_sep") or DEFAULT_STEP_SEP
    if meta.get("form") == "likelihood":  # prm_train.py --form likelihood: the model alone, a fitted scale
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval().requires_grad_(False)
        return RewardModel(model, _tokenizer_from_pretrained(path), kind, None, None, None, "chat", step_sep,
                           device, batch_size=batch_size, prompt=meta.get("prompt", "auto"), form="likelihood",
                           beta=float(meta["beta"]), offset=float(meta["offset"]))
    if meta.get("form") == "implicit":  # prm_train.py --form implicit: the model and its reference
        ref_path = os.path.join(path, meta.get("ref", "ref"))
        model, ref = (AutoModelForCausalLM.from_pretrained(p, dtype=dtype).to(device).eval().requires_grad_(False)
                      for p in (path, ref_path))
        return RewardModel(model, _tokenizer_from_pretrained(path), kind, None, None, None, "chat", step_sep,
                           device, batch_size=batch_size, prompt=meta.get("prompt", "auto"), ref=ref,
                           beta=float(meta["beta"]))
    config = AutoConfig.from_pretrained(path)
    two_class = any("ProcessRewardModel" in a for a in (getattr(config, "architectures", None) or []))
    if step_tag is None:
        step_tag = meta.get("step_tag") or (QWEN_PRM_TAG if two_class else None)
    if step_tag is None:
        raise ValueError(f"no step tag for {path}: it has no meta.json with reward_model.step_tag "
                         "(not trained by prm_train.py); pass step_tag=, e.g. 'ки' for a "
                         "Math-Shepherd PRM")
    if (pos_token, neg_token) == ("+", "-"):
        pos_token, neg_token = meta.get("pos_token", "+"), meta.get("neg_token", "-")
    if input_format is None:
        input_format = meta.get("input_format") or (
            "qwen-prm" if two_class else "math-shepherd" if step_tag == MATH_SHEPHERD_TAG else "chat")
    if input_format not in RM_INPUT_FORMATS:
        raise ValueError(f"unknown input_format {input_format!r} (expected one of {RM_INPUT_FORMATS})")
    tokenizer = _tokenizer_from_pretrained(path)
    if two_class:
        model = AutoModel.from_pretrained(path, config=config, dtype=dtype)
        head = _load_two_class_head(path, config).to(device=device, dtype=dtype).eval().requires_grad_(False)
    else:
        model, head = AutoModelForCausalLM.from_pretrained(path, dtype=dtype), None
    model.to(device).eval().requires_grad_(False)
    return RewardModel(model, tokenizer, kind, step_tag, pos_token, neg_token, input_format, step_sep,
                       device, head=head, batch_size=batch_size, prompt=meta.get("prompt", "auto"))


def load_reward_model_or_exit(path, kind="prm", shown=None, **kwargs):
    """load_reward_model for a command line: a checkpoint that cannot be loaded is one RunError line,
    "cannot load the PRM 'path': why" (`shown`: the path as the user typed it, default `path`)."""
    try:
        return load_reward_model(path, kind=kind, **kwargs)
    except (OSError, ValueError) as e:
        raise RunError(f"cannot load the {kind.upper()} {shown or path!r}: {e}") from None
