"""
Grading: answer extraction and equivalence for untrusted model output (docs/METHOD.md §4).

What it guarantees, for any response (None, empty, huge, garbage, adversarial LaTeX):
  - it never executes model text: no eval, no raw sympify; answers are screened before any
    symbolic work and parsed by math-verify's LaTeX parser only;
  - it is bounded in time: the screen rejects pathological answers (power towers, factorial
    chains, deep nesting, big operators) in milliseconds; the symbolic work of one pair is cut at
    PAIR_TIMEOUT_S of wall clock from when it starts (a float interval timer in the main thread of
    this process or of a worker), and grade_batch's timeout_s bounds a whole batch; pairs cut
    either way are graded False and counted (grade_batch's `statuses`);
  - it returns False on anything it cannot extract or parse, and never raises on a response (an
    unparsable *gold* answer is a ValueError naming it: that is a data bug, not model output).

The conventions (which box is the final answer, lists vs sets, units, ...) are in the README's
"Grading conventions"; test_grading.py and test_grader_conformance.py pin them.

  extract_answer(text)                the final answer text of a response or solution, or None
  is_correct(response, gold)          equivalence of that answer with the gold answer -> bool
  grade_batch(responses, golds, ...)  is_correct for a batch, optionally in worker processes, with
                                      a status per pair (ok | timeout | error) when asked
  check_gold(gold)                    ValueError when a gold answer cannot be graded against
  close_grading_pools()               stop grade_batch's workers (also done at exit)

The success reward built on this (the truncation rule included) is rewards.success_rewards.
"""

import atexit
import contextlib
import fractions
import functools
import multiprocessing
import os
import re
import signal
import threading
import time

# Model output is untrusted input. The pipeline for one (response, gold) pair:
#   (a) extract the final answer text (last \boxed{...} with the boxes chained to it by "and" / ","
#       only, else the last "The answer is X" / "#### X"); the README's "Grading conventions";
#   (b) screen it (length, nesting, power towers, factorial chains, big operators) -> False fast;
#   (c) integers on both sides: compare exactly in Python (the arith world never touches sympy);
#   (d) otherwise math-verify: parse "\boxed{answer}" with its LaTeX normaliser (units, degrees,
#       dollars, thousands separators, \text{}) and verify against the parsed gold.
# NOTE: time bounds. math-verify's own alarms (signal.alarm) take whole seconds only, catch their
# own timeout (so it cannot be counted) and work only in the main thread. We switch them off and
# bound the whole symbolic step (d) of a pair ourselves: a float interval timer (setitimer) that
# raises _PairTimeout, a BaseException that math-verify's `except Exception` cannot swallow, after
# PAIR_TIMEOUT_S from when the pair STARTS. The timer too needs the main thread: called from any
# other thread, is_correct hands (d) to a worker process (its main thread has the timer) and waits
# at most HARD_TIMEOUT_S. No timer interrupts C code (a bignum power), which is why the screen in
# (b) exists. The timer owns SIGALRM while it runs: do not mix it with other SIGALRM users (e.g.
# pytest-timeout's signal method).

MAX_RESPONSE_CHARS = 200_000  # longer responses are graded False without being read
MAX_ANSWER_CHARS = 300        # MATH test golds are at most 81 chars
MAX_NESTING = 10              # {, (, [ depth; MATH test golds reach 3
MAX_DIGITS = 60               # longest digit run in an answer
MAX_POWERS = 16               # number of ^ in an answer
PAIR_TIMEOUT_S = 2.0          # wall clock for the symbolic work (parse + verify) of one pair
GOLD_TIMEOUT_S = 2.0          # wall clock to parse one gold answer (check_gold)
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


class _PairTimeout(BaseException):
    """Raised by the interval timer of _deadline. A BaseException: math-verify and sympy catch
    Exception, so they cannot swallow it."""


_DEADLINE_ACTIVE = False


@contextlib.contextmanager
def _deadline(seconds):
    """Raise _PairTimeout in the main thread `seconds` (a float) after entering; nested use keeps the
    outer bound. Main thread only (signals)."""
    global _DEADLINE_ACTIVE
    if _DEADLINE_ACTIVE:
        yield
        return

    def on_alarm(signum, frame):
        raise _PairTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    _DEADLINE_ACTIVE = True
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 1e-3))
    try:
        yield
    finally:
        try:  # NOTE: the timer may fire right here; the handler is restored whatever happens
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            _DEADLINE_ACTIVE = False
            signal.signal(signal.SIGALRM, old)


def _mv_parse(ans):
    """math-verify parse of an answer wrapped in \\boxed{}; [] when it cannot be parsed. No alarm
    of its own: the caller bounds it (_deadline)."""
    from math_verify import parse

    try:
        return parse("\\boxed{" + ans + "}", parsing_timeout=None)
    except Exception:  # math-verify already swallows parse errors; belt and braces
        return []


_WARM = False


def _warm_math_verify():
    """The first math-verify call imports sympy and builds its LaTeX grammar (about a second):
    done once per process outside any deadline, so it never counts against a pair."""
    global _WARM
    if not _WARM:
        import logging

        from math_verify import verify
        # NOTE: math-verify warns once that its own timeouts are off; the bound is ours (_deadline)
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        verify(_mv_parse("\\frac{1}{2}"), _mv_parse("0.5"), timeout_seconds=None)
        _WARM = True


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


@functools.lru_cache(maxsize=65536)
def _parse_gold(gold):
    """(answer text, int value or None) of a gold answer or full solution; ValueError when it cannot
    be parsed. Cached: a PPO batch grades many samples per question, and check_gold fills the cache
    when a stage loads its data."""
    ans = _gold_answer_text(gold)
    gold_int = _int_value(ans) if ans else None
    if not ans or not _looks_safe(ans):
        raise ValueError(f"cannot parse gold answer {gold[:200]!r} (extracted {ans[:200]!r})")
    if gold_int is None:
        parsed = None
        if _in_main_thread():
            _warm_math_verify()
            try:
                with _deadline(GOLD_TIMEOUT_S):
                    parsed = _gold_parsed(gold)
            except _PairTimeout:
                raise ValueError(f"gold answer {gold[:200]!r} took over {GOLD_TIMEOUT_S}s to parse") from None
        else:
            parsed = _gold_parsed(gold)
        if not parsed:
            raise ValueError(f"cannot parse gold answer {gold[:200]!r} (extracted {ans[:200]!r})")
    return ans, gold_int


@functools.lru_cache(maxsize=65536)
def _gold_parsed(gold):
    """math-verify's parse of the gold answer (lazy: integer golds only need it for non-integer
    responses)."""
    return tuple(_mv_parse(_normalize_answer(_gold_answer_text(gold))))


def _as_gold(gold):
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)
    if not isinstance(gold, str):
        raise ValueError(f"gold answer {gold!r} is not a string")
    return gold


def check_gold(gold):
    """None when `gold` can be graded against, else ValueError with the reason. Every stage calls it
    (through common.load_problems) on every gold when it loads its data, so a bad row is found
    there, with its file and line, and not when a training step first draws it."""
    _parse_gold(_as_gold(gold))


def _grade(response, gold, timeout_s=None):
    """(correct, status) of one pair; status "ok", "timeout" (the symbolic step ran past timeout_s
    of wall clock, or timeout_s <= 0: no time left in the batch) or "error" (the grader raised).
    ValueError on an unparsable gold."""
    gold = _as_gold(gold)
    timeout_s = PAIR_TIMEOUT_S if timeout_s is None else timeout_s
    _, gold_int = _parse_gold(gold)
    ans = _screened_answer(response)
    if ans is None:
        return False, "ok"
    pred_int = _int_value(ans)
    if gold_int is not None and pred_int is not None:  # exact, no sympy (the arith world)
        return pred_int == gold_int, "ok"
    if timeout_s <= 0:
        return False, "timeout"
    if not _in_main_thread():  # no timer here: grade in a worker's main thread, bounded
        statuses = []
        ok = _grade_in_workers([response], [gold], 1, HARD_TIMEOUT_S, timeout_s, statuses)[0]
        return ok, statuses[0]
    try:
        _warm_math_verify()
        from math_verify import verify

        with _deadline(timeout_s):
            pred = _mv_parse(_normalize_answer(ans))
            gold_parsed = _gold_parsed(gold)
            if not pred or not gold_parsed:
                return False, "ok"
            return bool(verify(list(gold_parsed), pred, timeout_seconds=None)), "ok"
    except _PairTimeout:
        return False, "timeout"
    except Exception:  # noqa: BLE001 -- untrusted input must never crash a training step
        return False, "error"


def is_correct(response, gold):
    """True when the response's final answer (extract_answer) equals the gold answer (README,
    "Success grading" and "Grading conventions").

    gold: a bare answer ("\\frac{1}{2}", "72") or a full GSM8K ("... #### 72") / MATH
    ("... \\boxed{72}") solution; an unparsable gold raises ValueError naming it.
    Never raises on `response` (None, empty, huge or garbage -> False) and never executes it.
    Bounded in time: the screen rejects pathological answers; the symbolic step is cut after
    PAIR_TIMEOUT_S (False). Off the main thread (no timer, see NOTE above) the symbolic step runs in
    a worker process; prefer grade_batch for throughput.
    """
    return _grade(response, gold)[0]


def _screened_answer(response):
    """extract_answer(response) if it passes the screen, else None. Never raises."""
    try:
        if not isinstance(response, str) or len(response) > MAX_RESPONSE_CHARS:
            return None
        ans = extract_answer(response)
        return ans if ans and _looks_safe(ans) else None
    except Exception:  # noqa: BLE001
        return None


def _grade_pair(response, gold, timeout_s=None):  # module-level so workers can unpickle it
    """In a worker: _grade with the pair's deadline measured from now, when the worker STARTS it
    (not from submission: pairs queued behind slow ones keep their whole budget)."""
    try:
        return _grade(response, gold, timeout_s)
    except ValueError:
        raise  # a bad gold: the caller's data error
    except Exception:  # noqa: BLE001
        return False, "error"


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


def _grade_in_workers(responses, golds, processes, timeout_s, pair_timeout_s, statuses):
    """_grade of each pair in a pool of worker processes, each pair bounded by pair_timeout_s inside
    its worker, the batch by timeout_s; pairs still pending then (a worker stuck in C code, or too
    many slow pairs queued) are False with status "timeout", and the pool is replaced."""
    pool = _grading_pool(processes)
    jobs = [pool.apply_async(_grade_pair, (r, g, pair_timeout_s)) for r, g in zip(responses, golds)]
    deadline = time.monotonic() + timeout_s
    out, stuck = [], 0
    for job in jobs:
        try:
            ok, status = job.get(timeout=max(deadline - time.monotonic(), 0.0))
        except multiprocessing.TimeoutError:
            ok, status = False, "timeout"
            stuck += 1
        out.append(bool(ok))
        statuses.append(status)
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


def grade_batch(responses, golds, processes=None, timeout_s=60.0, pair_timeout_s=None, statuses=None):
    """is_correct for each (response, gold) pair -> list[bool], e.g. a PPO batch of 512.

    processes: 0 or 1 grades serially in this process; N > 1 uses a persistent pool of N worker
    processes (default: min(8, CPU count)). Each worker imports this module, math-verify and the
    main script (torch, for a stage script): a few hundred MB of RAM each. Either way the cheap part
    (extraction, the screen, integer pairs) runs here, and only pairs that need symbolic work go to
    the workers, so plain answers never queue behind slow ones.
    Time bounds, both wall clock: pair_timeout_s (default PAIR_TIMEOUT_S) for the symbolic work of
    one pair, from when it starts; timeout_s for the whole batch (serially: pairs reached after it get the cheap part
    only; in a pool: pairs still pending are cut and the pool replaced). A pair cut by either is
    False with status "timeout".
    statuses: a list to extend with one status per pair: "ok", "timeout", or "error" (the grader
    raised on the response: False). A gold that cannot be parsed raises ValueError, as in is_correct.
    """
    responses, golds = list(responses), list(golds)
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    if processes is None:
        processes = min(8, os.cpu_count() or 1)
    pair_timeout_s = PAIR_TIMEOUT_S if pair_timeout_s is None else pair_timeout_s
    deadline = time.monotonic() + timeout_s
    out, status = [False] * len(responses), ["ok"] * len(responses)
    symbolic = []  # pairs past the cheap part
    for i, (r, g) in enumerate(zip(responses, golds)):
        out[i], status[i] = _grade(r, g, timeout_s=0)  # cheap part only: "timeout" = needs sympy
        if status[i] == "timeout":
            symbolic.append(i)
    if processes > 1 and len(symbolic) > 1:
        sub = []
        oks = _grade_in_workers([responses[i] for i in symbolic], [golds[i] for i in symbolic], processes,
                                max(deadline - time.monotonic(), 0.0), pair_timeout_s, sub)
        for i, ok, st in zip(symbolic, oks, sub):
            out[i], status[i] = ok, st
    else:
        for i in symbolic:
            out[i], status[i] = _grade(responses[i], golds[i], min(pair_timeout_s, deadline - time.monotonic()))
    if statuses is not None:
        statuses.extend(status)
    return out
