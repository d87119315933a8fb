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

import atexit
import fractions
import functools
import json
import multiprocessing
import os
import re
import threading
import time

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


def load_tokenizer(path, **kw):
    """AutoTokenizer.from_pretrained(path), but a tokenizer saved as TokenizersBackend stays one.

    NOTE: transformers 5 swaps the saved tokenizer class for the model type's own for some model
    types (qwen2 -> Qwen2Tokenizer). With our character vocabulary that tokenizer's byte-level
    pre-tokenizer drops every space and newline, so a --arch qwen2 arith checkpoint would read
    "Q:1+2A:". Hub tokenizers (no local tokenizer_config.json) load unchanged.
    """
    from transformers import AutoTokenizer, TokenizersBackend

    cfg_file = os.path.join(str(path), "tokenizer_config.json")
    saved = None
    if os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            saved = json.load(f).get("tokenizer_class")
    return (TokenizersBackend if saved == "TokenizersBackend" else AutoTokenizer).from_pretrained(path, **kw)


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
    """Steps per METHOD §3: the stripped, non-empty pieces of `text` between separators."""
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


# -----------------------------------------------------------------------------
# 1. Success grading (extract_answer, is_correct, success_reward): see below.
#
# Model output is untrusted input. The pipeline for one (response, gold) pair:
#   (a) extract the final answer text (last \boxed{...} with the boxes chained to it by "and" / ","
#       only, else the last "The answer is X" / "#### X"); the README's "Grading conventions";
#   (b) screen it (length, nesting, power towers, factorial chains, big operators) -> False fast;
#   (c) integers on both sides: compare exactly in Python (the arith world never touches sympy);
#   (d) otherwise math-verify: parse "\boxed{answer}" with its LaTeX normaliser (units, degrees,
#       dollars, thousands separators, \text{}) and verify against the parsed gold.
# NOTE: math-verify bounds parse/verify with signal.alarm, which (1) only takes whole seconds -- a
# float timeout raises TypeError inside it and every comparison silently returns False -- and (2)
# only works in the main thread (elsewhere it raises ValueError). So (d) runs in the main thread
# with alarms; called from any other thread, is_correct hands (d) to a worker process (its main
# thread has alarms) and waits at most HARD_TIMEOUT_S. The alarm cannot interrupt C code (a
# bignum power), which is why the screen in (b) exists. It also sets SIGALRM's handler while it
# runs: do not mix it with other SIGALRM users (e.g. pytest-timeout's signal method).

MAX_RESPONSE_CHARS = 200_000  # longer responses are graded False without being read
MAX_ANSWER_CHARS = 300        # MATH test golds are at most 81 chars
MAX_NESTING = 10              # {, (, [ depth; MATH test golds reach 3
MAX_DIGITS = 60               # longest digit run in an answer
MAX_POWERS = 16               # number of ^ in an answer
PARSE_TIMEOUT_S = 2           # whole seconds (math-verify's signal.alarm takes ints only)
VERIFY_TIMEOUT_S = 2          # whole seconds, per gold/target comparison
HARD_TIMEOUT_S = 20           # wall clock for one pair handed to a worker process (off main thread)

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MARKER_RE = re.compile(r"\banswer\s*(?:is\s*:?|:)\s*|####\s*", re.IGNORECASE)
_INT_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_TRAILING_WORDS_RE = re.compile(
    r"([-+]?\d[\d,]*(?:\.\d+)?)\s*((?:[A-Za-z]{2,}\.?\s*){1,3})")  # "18 dollars", "5 cm each"
_REPEATING_RE = re.compile(r"(-?)(\d*)\.(\d*)\\overline\s*\{(\d+)\}")
_MATH_WORDS = {"pi", "sqrt", "frac", "dfrac", "cdot", "times", "circ", "sin", "cos", "tan", "log",
               "ln", "exp", "infty", "in", "and", "or"}
_BANNED_RE = re.compile(r"\\(?:sum|prod|coprod|int|iint|iiint|oint|lim|limsup|liminf|"
                        r"operatorname|mathrm\s*\{\s*(?:sum|prod)|def|newcommand|input|include)"
                        r"(?![a-zA-Z])|\*\*|\^\s*\^")
_BINOM_RE = re.compile(r"\\[dt]?binom|\\choose")
# what may separate the boxes of one answer: spacing, commas, "and"/"or", math delimiters
_BOX_GAP_RE = re.compile(r"(?:\s|[,;~$]|\\[()\[\],;: !]|\\q?quad(?![a-zA-Z])|\b(?:and|or)\b|"
                         r"\\(?:text|textrm|mathrm|textbf)\s*\{\s*,?\s*(?:and|or)?\s*\})*", re.IGNORECASE)


def _box_end(text, m):
    """Index one past the closing brace of the box opened by match m; None if it never closes."""
    depth, i = 1, m.end()
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return None if depth else i


def _last_box(text):
    """Content of the final answer's boxes (\\boxed{...} / \\fbox{...}); None if there is none.

    The last complete top-level box, together with the boxes chained before it by nothing but
    commas, "and"/"or", spacing and math delimiters ("$\\boxed{-2}$ and $\\boxed{1}$" -> "-2, 1",
    Math-Verify's rule); boxes separated by prose are intermediate results and ignored. Each box that
    is a box's whole content is unwrapped (\\boxed{\\boxed{5}} -> 5); repeated contents are kept once.
    Linear in len(text).
    """
    chain, pos, prev_end = [], 0, None
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            break
        end = _box_end(text, m)
        if end is None:  # unclosed box (truncated text): nothing after it can close either
            break
        chained = prev_end is not None and m.start() - prev_end <= 80 and _BOX_GAP_RE.fullmatch(
            text, prev_end, m.start())
        if not chained:
            chain = []
        chain.append((m.end(), end - 1))
        pos = prev_end = end
    if not chain:
        return None
    parts, size = [], 0
    for start, stop in chain:
        part = _unwrap_box(text[start: stop]).strip()
        if part and part not in parts:
            parts.append(part)
            size += len(part)
        if size > 4 * MAX_ANSWER_CHARS:  # too long to pass the screen anyway
            break
    return ", ".join(parts)


def _unwrap_box(found):
    """\\boxed{\\boxed{5}} content -> 5: unwrap a box that is the whole content (bounded, not O(n^2))."""
    while len(found) <= 4 * MAX_ANSWER_CHARS:
        inner = found.strip()
        m = _BOX_RE.match(inner)
        if m is None or _box_end(inner, m) != len(inner):
            break
        found = inner[m.end(): len(inner) - 1]
    return found


def _strip_math_delims(s):
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left): len(s) - len(right)].strip()
    return s


def extract_answer(text):
    """The final answer of a response or solution, as text; None when there is none.

    The content of the last \\boxed{...} (or \\fbox{...}; balanced braces, nested boxes unwrapped);
    boxes chained to it by only commas / "and" / "or" / spacing are joined into one list answer.
    Without a box: the rest of the line after the last answer marker, "The answer is" /
    "answer:" or "####" (whichever comes last), with $...$, a trailing period and Minerva's
    "I hope it is correct." stripped.
    """
    if not isinstance(text, str) or not text:
        return None
    box = _last_box(text)
    if box is not None:
        return box.strip() or None
    last = None
    for last in _MARKER_RE.finditer(text):
        pass
    if last is None:
        return None
    line = text[last.end():].split("\n", 1)[0]
    line = re.split(r"(?i)\bI hope it is correct", line)[0]
    line = _strip_math_delims(line.strip().rstrip(". ").strip())
    line = line.rstrip(".").strip()
    return line or None


def _group_before(s, i):
    """(start, content) of the bracketed group or token that ends just before index i."""
    j = i - 1
    while j >= 0 and s[j] == " ":
        j -= 1
    if j < 0:
        return i, ""
    if s[j] in ")]}":
        depth, k = 0, j
        while k >= 0:
            depth += {")": 1, "]": 1, "}": 1, "(": -1, "[": -1, "{": -1}.get(s[k], 0)
            if depth == 0:
                break
            k -= 1
        k = max(k, 0)
        return k, s[k + 1: j]
    k = j
    if s[j].isdigit():
        while k > 0 and (s[k - 1].isdigit() or s[k - 1] in ".,"):
            k -= 1
    return k, s[k: j + 1]


def _group_after(s, i):
    """(content, end) of the {group}, or the single token (digit run / letter / command), at i."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] == "{":
        depth, k = 0, i
        while k < len(s):
            depth += {"{": 1, "}": -1}.get(s[k], 0)
            if depth == 0:
                break
            k += 1
        return s[i + 1: k], k + 1
    m = re.match(r"-?\d+|\\[a-zA-Z]+|.", s[i:])
    return m.group(0), i + m.end()


def _looks_safe(ans):
    """Cheap screen of an extracted answer before any sympy work; False on anything that could
    make parsing or simplification slow or explode (see the constants above)."""
    if len(ans) > MAX_ANSWER_CHARS or "\x00" in ans:
        return False
    depth = braces = 0
    for ch in ans:
        if ch in "{([":
            depth += 1
            if depth > MAX_NESTING:
                return False
        elif ch in "})]":
            depth = max(depth - 1, 0)
        if ch == "{":
            braces += 1
        elif ch == "}":
            braces -= 1
            if braces < 0:
                return False
    if braces:
        return False
    if _BANNED_RE.search(ans) or "__" in ans:
        return False
    digit_runs = [len(d) for d in re.findall(r"\d+", ans)]
    if digit_runs and max(digit_runs) > MAX_DIGITS:
        return False
    s = ans.replace("\\!", " ")
    if s.count("^") > MAX_POWERS or s.count("!") > 4:
        return False
    for m in _BINOM_RE.finditer(s):  # binomials: small plain arguments only
        if m.group(0) == "\\choose":
            args = [re.sub(r"\\choose|[{}]", " ", s)]
        else:
            first, end = _group_after(s, m.end())
            args = [first, _group_after(s, end)[0]]
        if any(not _small_operand(a, 4) for a in args):
            return False
    for m in re.finditer(r"\^", s):
        exponent, _ = _group_after(s, m.end())
        start, base = _group_before(s, m.start())
        # power towers (a^{b^c}, (a^b)^c, a^b^c), factorials in exponents, huge exponent literals
        if "^" in exponent or "!" in exponent or "^" in base or s[:start].rstrip().endswith("^"):
            return False
        if re.search(r"\d{5,}", exponent):
            return False
        # NOTE: (x+1)^{9999} is short but expands to 10^4 terms in simplify(): symbolic powers get
        # exponents < 100, compound bases <= 8 (numeric bases are cheap: 2^{2005} is a MATH gold).
        compound = re.search(r"[A-Za-z\\]", base) and re.search(r"[-+*/]|\\cdot|\\times|\\frac", base)
        symbolic = re.search(r"[A-Za-z\\]", base) or re.search(r"[A-Za-z\\]", exponent)
        if symbolic and re.search(r"\d{3,}", exponent):  # x^{99} fine, (x^{9999}-1)/(x-1) is not
            return False
        if compound and any(int(d) > 8 for d in re.findall(r"\d+", exponent)):
            return False
    for m in re.finditer(r"!", s):
        start, operand = _group_before(s, m.start())
        if s[:m.start()].rstrip().endswith("!") or operand.endswith("!"):
            return False  # factorial chains n!!, (n!)!
        if operand.isdigit():
            if len(operand) > 4:  # 2004! is a MATH gold; 99999! is slow
                return False
        elif not _small_operand(operand, 2):  # (n+1)!, (2n)!; never (99*99)!
            return False
    return True


def _small_operand(text, max_digits):
    """Letters, spaces, + and - and integers of at most max_digits digits, nothing else."""
    return (bool(re.fullmatch(r"[A-Za-z\s+\-\d]*", text))
            and all(len(d) <= max_digits for d in re.findall(r"\d+", text)))


def _int_value(ans):
    """The integer an answer plainly is ("-72", "1,000", "\\$18", "18 dollars" excluded), else None.
    NOTE: "32, 349" is the list {32, 349}, not 32349: a comma followed by a space separates items."""
    s = ans.replace("\\!", "").replace("\\$", "").replace("$", "").strip().rstrip("\\").strip()
    if re.search(r",\s", s):
        return None
    s = s.replace(" ", "")
    if _INT_RE.fullmatch(s):
        return int(s.replace(",", ""))
    return None


def _normalize_answer(ans):
    """Light text normalisation before math-verify: "°" -> ^\\circ, repeating decimals
    (0.\\overline{3}) -> fractions, plain-English unit words after a number dropped ("18 dollars"
    -> "18"); math-verify itself handles \\text{} units, degrees, \\$, thousands separators, x=."""
    ans = ans.strip().rstrip("\\").strip().replace("°", "^{\\circ}")  # "185\\" -> "185"
    m = _REPEATING_RE.fullmatch(ans)  # 0.1\overline{6} -> \frac{1}{6}
    if m:
        sign, whole, fixed, rep = m.groups()
        value = int(whole or 0) + fractions.Fraction(
            int(fixed or 0) * (10 ** len(rep) - 1) + int(rep), 10 ** len(fixed) * (10 ** len(rep) - 1))
        return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"
    m = _TRAILING_WORDS_RE.fullmatch(ans)
    if m and not any(w.strip(". ").lower() in _MATH_WORDS for w in m.group(2).split()):
        return m.group(1)
    return ans


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


def _mv_parse(ans):
    """math-verify parse of an answer wrapped in \\boxed{}; [] when it cannot be parsed."""
    from math_verify import parse

    t = PARSE_TIMEOUT_S if _in_main_thread() else None  # NOTE: alarms only in the main thread
    try:  # off the main thread this only parses golds (trusted); responses go to a worker
        return parse("\\boxed{" + ans + "}", parsing_timeout=t)
    except Exception:  # math-verify already swallows parse errors; belt and braces
        return []


def _gold_answer_text(gold):
    if not gold.strip():
        raise ValueError(f"gold answer {gold!r} is empty")
    box = _last_box(gold)
    if box is not None:
        return box.strip()
    if "####" in gold:
        return gold.rsplit("####", 1)[1].split("\n", 1)[0].strip()
    marked = extract_answer(gold)  # a solution in Minerva's "The final answer is $X$." format
    return marked if marked is not None else gold.strip()


@functools.lru_cache(maxsize=8192)
def _parse_gold(gold):
    """(answer text, int value or None) of a gold answer or full solution; ValueError when it cannot
    be parsed. Cached: a PPO batch grades many samples per question."""
    ans = _gold_answer_text(gold)
    gold_int = _int_value(ans) if ans else None
    if not ans or not _looks_safe(ans) or (gold_int is None and not _gold_parsed(gold)):
        raise ValueError(f"cannot parse gold answer {gold[:200]!r} (extracted {ans[:200]!r})")
    return ans, gold_int


@functools.lru_cache(maxsize=8192)
def _gold_parsed(gold):
    """math-verify's parse of the gold answer (lazy: integer golds only need it for non-integer
    responses)."""
    return tuple(_mv_parse(_normalize_answer(_gold_answer_text(gold))))


def is_correct(response, gold):
    """True when the response's final answer (extract_answer) equals the gold answer (README,
    "Success grading" and "Grading conventions").

    gold: a bare answer ("\\frac{1}{2}", "72") or a full GSM8K ("... #### 72") / MATH
    ("... \\boxed{72}") solution; an unparsable gold raises ValueError naming it.
    Never raises on `response` (None, empty, huge or garbage -> False) and never executes it.
    Bounded in time: the screen rejects pathological answers; math-verify's alarms (whole seconds)
    bound the rest. Off the main thread (no alarms, see NOTE above) the sympy step runs in a
    worker process and is cut after HARD_TIMEOUT_S; prefer grade_batch for throughput.
    """
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)
    if not isinstance(gold, str):
        raise ValueError(f"gold answer {gold!r} is not a string")
    _, gold_int = _parse_gold(gold)
    ans = _screened_answer(response)
    if ans is None:
        return False
    pred_int = _int_value(ans)
    if gold_int is not None and pred_int is not None:  # exact, no sympy (the arith world)
        return pred_int == gold_int
    if not _in_main_thread():  # no alarms here: grade in a worker's main thread, bounded
        return _grade_in_workers([response], [gold], 1, HARD_TIMEOUT_S)[0]
    try:
        pred = _mv_parse(_normalize_answer(ans))
        gold_parsed = _gold_parsed(gold)
        if not pred or not gold_parsed:
            return False
        from math_verify import verify

        return bool(verify(list(gold_parsed), pred, timeout_seconds=VERIFY_TIMEOUT_S))
    except Exception:  # noqa: BLE001 -- untrusted input must never crash a training step
        return False


def _screened_answer(response):
    """extract_answer(response) if it passes the screen, else None. Never raises."""
    try:
        if not isinstance(response, str) or len(response) > MAX_RESPONSE_CHARS:
            return None
        ans = extract_answer(response)
        return ans if ans and _looks_safe(ans) else None
    except Exception:  # noqa: BLE001
        return None


def success_reward(response, gold, truncated=False):
    """Correct(q, s) in {0.0, 1.0}. A truncated response (no EOS) gets 0 (the paper's success reward)."""
    if truncated:
        return 0.0
    return 1.0 if is_correct(response, gold) else 0.0


def _grade_pair(response, gold):  # module-level so worker processes can unpickle it
    return is_correct(response, gold)


_POOLS = {}
_POOLS_LOCK = threading.Lock()


def _grading_pool(processes):
    """A persistent worker pool (created once per size, reused across PPO steps). Workers are
    started with forkserver/spawn, not fork: the trainer has torch / tokenizer threads running."""
    with _POOLS_LOCK:
        pool = _POOLS.get(processes)
        if pool is None:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            pool = ctx.Pool(processes)
            _POOLS[processes] = pool
        return pool


def _grade_in_workers(responses, golds, processes, timeout_s):
    """is_correct of each pair in a pool of worker processes, all done within timeout_s seconds;
    pairs still running then are False and the pool is replaced (kills a worker stuck in C code)."""
    pool = _grading_pool(processes)
    jobs = [pool.apply_async(_grade_pair, (r, g)) for r, g in zip(responses, golds)]
    deadline = time.monotonic() + timeout_s
    out, stuck = [], 0
    for job in jobs:
        try:
            out.append(bool(job.get(timeout=max(deadline - time.monotonic(), 0.0))))
        except multiprocessing.TimeoutError:
            out.append(False)
            stuck += 1
    if stuck:
        print(f"grading: {stuck} of {len(jobs)} pairs did not finish in {timeout_s}s; "
              "graded False, worker pool restarted")
        with _POOLS_LOCK:
            if _POOLS.get(processes) is pool:
                del _POOLS[processes]
        pool.terminate()
        pool.join()
    return out


def close_grading_pools():
    """Terminate the worker pools grade_batch created (also done at interpreter exit)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.terminate()
        pool.join()


atexit.register(close_grading_pools)


def grade_batch(responses, golds, processes=None, timeout_s=60.0):
    """is_correct for each (response, gold) pair -> list[bool], e.g. a PPO batch of 512.

    processes: 0 or 1 grades serially in this process; N > 1 uses a persistent pool of N worker
    processes (default: min(8, CPU count)), where math-verify's alarms work whatever thread calls
    us. Each worker imports this module (torch included): a few hundred MB of RAM each.
    timeout_s: wall-clock bound for the whole batch; pairs still running then are graded False
    and the pool is replaced (a worker stuck in C code cannot be interrupted otherwise).
    A gold that cannot be parsed raises ValueError, as in is_correct.
    """
    responses, golds = list(responses), list(golds)
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    if processes is None:
        processes = min(8, os.cpu_count() or 1)
    if processes <= 1 or len(responses) <= 1:
        return [is_correct(r, g) for r, g in zip(responses, golds)]
    return _grade_in_workers(responses, golds, processes, timeout_s)


# -----------------------------------------------------------------------------
# 5. Reward-model scoring: PRM / ORM as causal LMs read at a step tag (Math-Shepherd format)
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
# score = P(pos) / (P(pos) + P(neg)) = sigmoid(logit[pos] - logit[neg]) from the logits AT the tag
# position (they predict the token after the tag), or softmax(head)[1] for a 2-class head.
# One forward per response scores all K steps; only the two label rows of the LM head are applied,
# at the tag positions only (no (B, T, V) logits). Our checkpoints carry their tag, label tokens,
# input format and step separator in meta.json["reward_model"] (written by prm_train.py).

RM_INPUT_FORMATS = ("chat", "math-shepherd", "qwen-prm")
MATH_SHEPHERD_TAG = "ки"
QWEN_PRM_TAG = "<extra_0>"
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


_TAG = object()  # placeholder for the step tag while an input text is assembled


def rm_input_text(tokenizer, question, steps, step_tag, kind="prm", input_format="chat",
                  step_sep=DEFAULT_STEP_SEP):
    """The reward-model input text for one (question, steps) and the char span of every tag in it.

    Returns (text, spans): spans[k] = (start, end) of the k-th tag; K spans for a PRM, one for an ORM
    (after the whole solution). prm_train.py builds its training inputs with this same function.
    """
    if kind not in ("prm", "orm"):
        raise ValueError(f"kind must be 'prm' or 'orm', got {kind!r}")
    K = len(steps)
    if input_format == "chat":
        parts = [build_prompt(tokenizer, question)]
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


def resolve_rm_tokens(tokenizer, step_tag, pos_token=None, neg_token=None, where="the tokenizer"):
    """Ids of the step tag and label tokens; a clear error naming every one that is missing."""
    wanted = [("step tag", step_tag), ("pos token", pos_token), ("neg token", neg_token)]
    ids, missing = [], []
    for what, tok in wanted:
        if tok is None:
            ids.append(None)
            continue
        i = _single_token_id(tokenizer, tok)
        if i is None:
            missing.append(f"{what} {tok!r}")
        ids.append(i)
    if missing:
        raise ValueError(f"{where} has no single token for {', '.join(missing)}: a reward model reads "
                         "its score at one step-tag token from the logits of one pos and one neg "
                         "token (pass step_tag=/pos_token=/neg_token= that exist, or train with "
                         "prm_train.py, which adds a missing tag as a special token)")
    return ids


def encode_rm_input(tokenizer, text, spans, tag_id, add_special_tokens):
    """Token ids of `text` and the index of the token holding the last char of every tag span.

    NOTE: the tag is located by character offsets, not by searching ids == tag_id, so a question or
    step that happens to contain the tag cannot shift the scores; a tag that merges with its
    neighbours under this tokenizer is an error, never a silent misread.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("reward-model scoring needs a fast (Rust) tokenizer for character offsets")
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    owner = [-1] * (len(text) + 1)  # char -> token holding it
    for t, (a, b) in enumerate(offsets):
        for c in range(a, b):
            if owner[c] == -1:
                owner[c] = t
    pos = []
    for a, b in spans:
        t = owner[b - 1]
        if t < 0 or ids[t] != tag_id:
            got = tokenizer.convert_ids_to_tokens(ids[t]) if t >= 0 else None
            raise ValueError(f"step tag {text[a:b]!r} does not tokenize to its own token in context "
                             f"(token there: {got!r}); use a tag that is a special token")
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
                 step_sep, device, head=None, batch_size=16):
        self.model, self.tokenizer, self.head = model, tokenizer, head
        self.kind, self.step_tag, self.input_format, self.step_sep = kind, step_tag, input_format, step_sep
        self.pos_token, self.neg_token = pos_token, neg_token
        self.device, self.batch_size = device, batch_size
        where = f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r}"
        if head is None:
            self.tag_id, self.pos_id, self.neg_id = resolve_rm_tokens(tokenizer, step_tag, pos_token, neg_token, where)
        else:
            self.tag_id, self.pos_id, self.neg_id = resolve_rm_tokens(tokenizer, step_tag, where=where)
        self.add_special_tokens = input_format == "math-shepherd" or not getattr(tokenizer, "chat_template", None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(self, question, steps):
        """(ids, tag token positions) for one question and its list of steps."""
        text, spans = rm_input_text(self.tokenizer, question, steps, self.step_tag, self.kind,
                                    self.input_format, self.step_sep)
        return encode_rm_input(self.tokenizer, text, spans, self.tag_id, self.add_special_tokens)

    def margins(self, rows):
        """Batch of (ids, positions) rows -> (B, K) margins (differentiable) and (B, K) bool mask."""
        ids, attn, pos, kmask = _pad_batch(rows, self.pad_id, self.device)
        return tag_margins(self.model, self.head, ids, attn, pos, (self.pos_id, self.neg_id)), kmask

    @torch.no_grad()
    def score(self, questions, responses, batch_size=None):
        """Per response: [P(pos) at the tag after each step] (PRM, K values) or [P(pos)] (ORM).

        One forward per response, `batch_size` responses per forward (longest first to limit
        padding; scores do not depend on batch composition or padding).
        """
        if len(questions) != len(responses):
            raise ValueError(f"{len(questions)} questions for {len(responses)} responses")
        rows = [self.encode(q, split_steps(r, self.step_sep)) for q, r in zip(questions, responses)]
        out = [[] for _ in rows]
        todo = sorted((i for i in range(len(rows)) if rows[i][1]), key=lambda i: -len(rows[i][0]))
        bs = batch_size or self.batch_size
        for s in range(0, len(todo), bs):
            chunk = todo[s: s + bs]
            m, kmask = self.margins([rows[i] for i in chunk])
            p = torch.sigmoid(m).cpu()  # (b, K)
            for j, i in enumerate(chunk):
                out[i] = p[j][kmask[j].cpu()].tolist()
        return out

    def score_tokens(self, questions, policy_tokenizer, response_ids, batch_size=None):
        """Score policy samples and map each score to the policy token that ends its step.

        response_ids: B lists of generated token ids (no padding; EOS may be last). Returns the
        (values (B, K), end_idx (B, K), mask (B, K)) triple that place_rewards takes.
        """
        texts = [policy_tokenizer.decode(ids, skip_special_tokens=True) for ids in response_ids]
        scores = self.score(questions, texts, batch_size)
        return step_scores_to_tensors(policy_tokenizer, response_ids, scores, self.step_sep,
                                      outcome=self.kind == "orm")


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
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if kind not in ("prm", "orm"):
        raise ValueError(f"kind must be 'prm' or 'orm', got {kind!r}")
    meta = read_rm_meta(path)
    if meta.get("kind") and meta["kind"] != kind:
        print(f"NOTE: {path} was trained as a {meta['kind'].upper()}; scoring it as a {kind.upper()}")
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
    step_sep = step_sep or meta.get("step_sep") or DEFAULT_STEP_SEP
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = load_tokenizer(path)
    if two_class:
        model = AutoModel.from_pretrained(path, config=config, dtype=dtype)
        head = _load_two_class_head(path, config).to(device=device, dtype=dtype).eval().requires_grad_(False)
    else:
        model, head = AutoModelForCausalLM.from_pretrained(path, dtype=dtype), None
    model.to(device).eval().requires_grad_(False)
    return RewardModel(model, tokenizer, kind, step_tag, pos_token, neg_token, input_format, step_sep,
                       device, head=head, batch_size=batch_size)
