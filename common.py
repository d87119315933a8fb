"""
Plumbing shared by every stage script (sft.py, prm_train.py, ppo.py, evaluate.py), as nanochat's
common.py: no algorithm lives here, only what would otherwise be copied into each script and drift.

  1. Configuration: `field(default, help)` declares a knob of a flat @dataclass Config;
     `parse_config(Config, argv)` turns the fields into `--snake-case` options with --help text and
     defaults. Booleans: `--flag` / `--no-flag` (`--flag true|false` is still read; anything else,
     e.g. `--eval-only flase`, is an error). Unknown or abbreviated flags are errors.
  2. Errors: `RunError` is the one user-facing error. `run_main(main)` (every script's
     `if __name__ == "__main__"`) prints it as `error: <message>` on one line and exits with code 2,
     like a bad flag; Ctrl-C exits with 130; any other exception keeps its traceback (a bug).
  3. Runtime: `setup_runtime(device, seed)` -> `Runtime` (rank, world_size, local_rank, master,
     device, bf16 / dtype / amp with the reason printed); torch.distributed with NCCL on GPU and gloo
     on CPU under torchrun. `print0`, `barrier`.
  4. Models: `model_source`, `load_model`, `load_tokenizer` (a local dir or a hub id, one clear error
     either way), `no_dropout`, `model_eos_ids`. Data: `read_jsonl`, `DATASETS` / `resolve_dataset` /
     `load_problems` (data/<name>/<split>.jsonl or a path; warns of MATH test leakage, see
     `math_test_leak`), `build_prompt` (every stage's prompt, `--prompt auto | chat | cot | plain`).
  5. Generation, plain softmax at a temperature or greedy, batched and left-padded (METHOD §6):
     `generate` (Hugging Face generate, the checkpoint's sampling defaults off: SFT eval, evaluation)
     and `sample` (our KV-cached loop: finished rows leave the batch, a budget per row, each row's
     noise indexed by its global row: PPO's rollouts and greedy evals, PRM labeling), with
     `inverse_cdf`, `nucleus` and `kv_cache`.
  6. Logging: `MetricsLogger` appends one JSON row per line to out_dir/metrics.jsonl (trimmed to the
     checkpoint's step on resume) and mirrors it to wandb when asked.
  7. Out-dir ownership and crash-safe files: `claim_out_dir` (an flock on out_dir/.lock held for the
     run; a fresh run refuses an out_dir holding a previous run unless --overwrite), `atomic_write`,
     `fsync_tree`, `remove_tree` (rename to trash, then delete: a kill never leaves a half-deleted
     directory in the way), `swap_in` / `recover_swap` (the ckpt.tmp -> ckpt swap and its repair),
     `file_digests` / `verify_digests` (sha256 of every checkpoint file), `nonfinite_names`,
     `load_checkpoint_model` (missing / unexpected keys, shapes, finiteness), `torch_load`,
     `write_error` ("disk full at <path>").

Shapes: B sequences in a generate batch, P prompt tokens (left-padded), T generated tokens.
"""

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import glob
import hashlib
import json
import os
import random
import shutil
import sys
import time
import types
import typing
from typing import NamedTuple

import torch
import torch.distributed as dist
from tqdm import tqdm

# -----------------------------------------------------------------------------
# 1. configuration: a flat @dataclass -> --flag value options

_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def field(default, help, choices=None):
    """A Config field with its --help text (and optional allowed values). A list default gets a
    fresh copy per instance."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _converter(name, typ):
    """argparse `type=` for int / float / str and Optional[...] of them ('none' -> None)."""
    optional = False
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        optional, typ = len(args) < len(typing.get_args(typ)), args[0] if len(args) == 1 else None
    if typ not in (int, float, str):
        raise TypeError(f"Config field {name}: unsupported type {typ!r} (bool, int, float, str, "
                        "Optional[int | float | str] or list)")
    if not optional:
        return typ

    def convert(s):
        return None if s.lower() == "none" else typ(s)
    convert.__name__ = typ.__name__  # argparse names it in "invalid int value"
    return convert


def _build_parser(cls, description, suppress_defaults=False):
    p = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    bool_flags = set()
    for f in dataclasses.fields(cls):
        if not f.metadata.get("help"):
            raise TypeError(f"{cls.__name__}.{f.name} has no help text: declare it with common.field(default, help)")
        flag, typ, default = "--" + f.name.replace("_", "-"), hints[f.name], _default(f)
        kw = dict(default=argparse.SUPPRESS if suppress_defaults else default,
                  help=f"{f.metadata['help']} (default: {default!r})", choices=f.metadata.get("choices"))
        if typ is bool:
            bool_flags.add(flag)
            kw.pop("choices")
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typ is list or typing.get_origin(typ) is list:
            item = (typing.get_args(typ) or (str,))[0]
            p.add_argument(flag, nargs="+", type=_converter(f.name, item), **kw)
        else:
            p.add_argument(flag, type=_converter(f.name, typ), **kw)
    return p, bool_flags


def _bool_words(argv, bool_flags, parser):
    """Rewrite `--flag true|false` and `--flag=true|false` to `--flag` / `--no-flag`.

    NOTE: unambiguous because no script has positional arguments: a word right after a boolean
    flag can only be meant as its value, so a word that is not true/false/yes/no/1/0 is an error
    (before: sft.py read `--eval-only flase` as False)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out += argv[i:]
            break
        name, eq, word = a.partition("=")
        if name in bool_flags and (eq or (i + 1 < len(argv) and not argv[i + 1].startswith("-"))):
            if not eq:
                i, word = i + 1, argv[i + 1]
            if word.lower() not in _BOOL_WORDS:
                parser.error(f"argument {name}: expected no value (or true / false), got {word!r}; "
                             f"write {name} or --no-{name[2:]}")
            a = name if _BOOL_WORDS[word.lower()] else "--no-" + name[2:]
        out.append(a)
        i += 1
    return out


def parse_config(cls, argv=None, description=None, with_given=False):
    """Parse argv (default sys.argv[1:]) into a `cls` instance (a flat @dataclass built with
    `field`). --help shows `description` (default: the docstring of the module defining cls) and
    every field's help with its default. With with_given=True also returns the set of field names
    given explicitly on the command line (a resumed run overrides the saved config with them).

    Types: bool (--flag / --no-flag), int, float, str, Optional[int | float | str] ('none' = None),
    list (--flag A B C). Errors (unknown flag, bad value) exit with code 2, argparse's usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if description is None:
        description = getattr(sys.modules.get(cls.__module__), "__doc__", None)
    p, bool_flags = _build_parser(cls, description)
    argv = _bool_words(argv, bool_flags, p)
    cfg = cls(**vars(p.parse_args(argv)))
    if not with_given:
        return cfg
    given = set(vars(_build_parser(cls, description, suppress_defaults=True)[0].parse_args(argv)))
    return cfg, given


# -----------------------------------------------------------------------------
# 2. user-facing errors

class RunError(Exception):
    """A user-facing error (bad input, missing file or model, bad setting): run_main prints it as
    one line, without a traceback. Raise it with a message that says what to do."""


def run_main(main, argv=None):
    """Every script's entry point: `if __name__ == "__main__": common.run_main(main)`.

    RunError -> `error: <message>` on stderr, exit code 2 (argparse's code for a bad flag).
    KeyboardInterrupt -> `interrupted`, exit code 130. Anything else keeps its traceback: it is a
    bug, not a user error. NOTE: FileNotFoundError / ValueError are not caught here; a script turns
    them into RunError where it reads user input (its data, its model paths), so that a missing
    internal file still shows where it came from. The process group is destroyed in every case.
    """
    code = 0
    try:
        main(argv)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        code = 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if code:
        sys.exit(code)


# -----------------------------------------------------------------------------
# 3. runtime: processes, device, dtype, seeds

@dataclasses.dataclass
class Runtime:
    rank: int  # global rank (0 without torchrun)
    world_size: int  # processes
    local_rank: int  # rank on this machine = the GPU index under torchrun
    master: bool  # rank == 0: the one that prints, logs and saves
    device: str  # "cpu" or "cuda:N"
    bf16: bool  # bf16 compute (a GPU with bf16 support, unless fp32 was asked for)
    dtype: torch.dtype  # bfloat16 when bf16, else float32: for frozen models (reference, reward models)
    amp: object  # autocast context (bf16 on such GPUs), else a no-op; log-probs and losses stay fp32


def is_master():
    """Rank 0 (from torch.distributed, else from torchrun's RANK variable)."""
    return (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))) == 0


def print0(*args):
    """print on rank 0 only; through tqdm.write so a progress bar is not torn."""
    if is_master():
        tqdm.write(" ".join(map(str, args)))
        sys.stdout.flush()


def barrier():
    """Wait for every rank (no-op without torch.distributed). Call it after rank-0-only work, never
    inside a rank-0-only block."""
    if dist.is_initialized():
        dist.barrier()


def resolve_device(device, local_rank, world_size):
    """--device auto | '' | cpu | cuda | cuda:N -> "cpu" or "cuda:N"; one clear error when it
    cannot work. Under torchrun each rank takes cuda:LOCAL_RANK."""
    if device in ("auto", ""):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise RunError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise RunError(f"--device {device}: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                       "use --device cpu or auto")
    if device == "cuda":
        return f"cuda:{local_rank}"
    if world_size > 1:
        raise RunError(f"--device {device} under torchrun: use --device cuda or auto (each rank takes cuda:LOCAL_RANK)")
    if int(device[5:]) >= torch.cuda.device_count():
        raise RunError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def setup_runtime(device="auto", seed=None, dtype="auto", amp=True):
    """Processes, device, dtype and seeds of a stage; prints the device line. Returns a Runtime.

    - Under torchrun (RANK set): torch.distributed with NCCL on GPU, gloo on CPU (so a 2-process
      run works on a laptop); on GPU torch.cuda.set_device(cuda:LOCAL_RANK) first.
    - dtype "auto": bf16 where the GPU supports it, else fp32 (CPU, older GPUs); "float32" forces
      fp32; "bfloat16" is an error where it is not supported. amp=False: no autocast context even
      with bf16 (a caller that casts by itself, e.g. FSDP mixed precision).
    - seed: random and torch seeded with it on every rank (identical init); a stage that samples
      per rank seeds its own generator from (seed, rank).
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device, local_rank, world)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    if dtype not in ("auto", "float32", "bfloat16"):
        raise RunError(f"dtype {dtype!r}: expected auto, float32 or bfloat16")
    supported = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    if dtype == "bfloat16" and not supported:
        raise RunError(f"bfloat16 asked for, but {device} does not support it; use auto or float32")
    bf16 = supported and dtype != "float32"
    if bf16:
        reason = ("bf16 autocast (the GPU supports it)" if amp else
                  "bf16 compute set by the caller (e.g. FSDP mixed precision), no autocast")
        reason += "; fp32 weights, log-probs and losses"
    else:
        reason = "fp32 (" + ("asked for" if dtype == "float32" else "CPU: no bf16 autocast" if device == "cpu"
                             else "this GPU has no bf16") + ")"
    rt = Runtime(rank=rank, world_size=world, local_rank=local_rank, master=rank == 0, device=device, bf16=bf16,
                 dtype=torch.bfloat16 if bf16 else torch.float32,
                 amp=torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and amp else contextlib.nullcontext())
    if seed is not None:
        random.seed(seed)
        torch.manual_seed(seed)
    print0(f"device {device} x {world} rank(s): {reason}")
    return rt


# -----------------------------------------------------------------------------
# 4. models, tokenizers, data files, prompts

def model_source(path, what, hint):
    """A local directory or a hub id -> the path to pass to from_pretrained.

    Local-looking: starts with . / ~, has two or more slashes (a hub id is `name` or `org/name`),
    or its first component is an existing directory (models/arith-polcy). Such a path that is not a
    directory is one clear RunError naming `what` and the `hint` (how to make it). Anything else,
    e.g. gpt2 or Qwen/Qwen2.5-Math-1.5B-Instruct, is left to the hub.
    """
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        return expanded
    local = path.startswith((".", "/", "~")) or path.count("/") >= 2 or (
        "/" in path and os.path.isdir(path.split("/")[0]))
    if local or not path:
        raise RunError(f"{what} {path!r} not found: {hint}")
    return path


def _load(load, path, what, hint, **kw):
    try:
        return load(model_source(path, what, hint), **kw)
    except (OSError, ValueError) as e:  # ValueError: a malformed hub id, a bad config
        if not os.path.exists(os.path.expanduser(path)) and "Repo id must" in str(e):
            # NOTE: a name that cannot be a hub id ("Repo id must be ...") was meant as a local path
            raise RunError(f"{what} {path!r} not found: no such local directory (nor a valid hub id): {hint}") from None
        raise RunError(f"cannot load {what} from {path!r} ({str(e).splitlines()[0]}): {hint}") from None


def load_model(path, what="model", hint="pass a checkpoint directory or a hub id", cls=None, **kw):
    """cls.from_pretrained(path, **kw) (cls default AutoModelForCausalLM) with one-line RunErrors:
    a missing local path (model_source), or a file / hub id that cannot be loaded (offline, not a
    checkpoint). Pass dtype= explicitly (torch.float32 for a trained model)."""
    if cls is None:
        from transformers import AutoModelForCausalLM as cls
    return _load(cls.from_pretrained, path, what, hint, **kw)


def _tokenizer_from_pretrained(path, **kw):
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


def load_tokenizer(path, what="tokenizer", hint="pass a checkpoint directory or a hub id", **kw):
    """The tokenizer of a checkpoint (see _tokenizer_from_pretrained), with load_model's errors.
    Padding side and pad token are left as saved: a caller that pads with the tokenizer sets them."""
    return _load(_tokenizer_from_pretrained, path, what, hint, **kw)


def no_dropout(model):
    """Dropout p = 0 in every module (train() then changes nothing the forward computes)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # NOTE: with dropout on, PPO's first-minibatch ratio would not be 1
    return model


def model_eos_ids(model, tokenizer):
    """Every token id that ends a response: the tokenizer's EOS and the generation_config's (chat
    models often list two, e.g. <|im_end|> and <|endoftext|>)."""
    eos = model.generation_config.eos_token_id
    ids = {tokenizer.eos_token_id} | set([eos] if isinstance(eos, int) else eos or [])
    ids.discard(None)
    return ids


def read_jsonl(path, with_lines=False):
    """Rows of a JSONL file: one JSON object per line, blank lines skipped. A line that is not
    UTF-8, not JSON or not an object is a ValueError naming the file and line. with_lines=True
    returns (line number, row) pairs, so that later errors can name the line too."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                 f"{e.start + 1}); re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            rows.append((lineno, row) if with_lines else row)
    return rows


def require(cond, message):
    """RunError(message) unless cond: one line per bad flag in each script's check_config."""
    if not cond:
        raise RunError(message)


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


def eval_split(name_or_path, split="auto"):
    """The split to evaluate on while tuning: `split` itself, or for "auto" `valid` when the dataset
    has one (data/<name>/valid.jsonl: arith) and `test` otherwise. Defaults are tuned on valid;
    the test split is for the final report (evaluate.py --split test)."""
    if split != "auto":
        return split
    has_valid = name_or_path in DATASETS and os.path.exists(os.path.join(DATA_DIR, name_or_path, "valid.jsonl"))
    return "valid" if has_valid else "test"


MAX_QUESTION_CHARS = 20_000  # longest MATH question: ~4,300 characters; a longer one is a bad row


def _problem(row):
    """(question, gold answer or None) of a problems-file row, in any accepted schema."""
    question = row.get("question", row.get("problem"))
    answer = row.get("answer")
    if isinstance(answer, str) and "####" in answer:  # raw GSM8K: the gold follows ####
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
    return question, answer


def _row_problem(row):
    """The reason a row is not a usable problem, or None."""
    import grading

    question, answer = _problem(row)
    if not isinstance(question, str) or not question.strip() or answer in (None, ""):
        return "no question or no gold answer (expected keys question/problem and answer)"
    if len(question) > MAX_QUESTION_CHARS:
        return f"question of {len(question):,} characters (more than {MAX_QUESTION_CHARS:,})"
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        return f"gold answer {answer!r} is not a string or a number"
    try:
        grading.check_gold(str(answer))
    except ValueError as e:
        return f"ungradable gold: {e}"
    return None


def load_problems(name_or_path, split="test", limit=None, skip_bad=False):
    """Problems as dicts with at least `question` and `answer` (the gold final answer).

    Reads the project schema (question / solution / answer) written by data/*/prepare.py; raw
    MATH rows (`problem`) and raw GSM8K rows (answer ending in `#### N`) are accepted too.
    Every row is checked once here, so that a bad one is found at load and not when a training step
    draws it: a question and a gold answer, a question of at most MAX_QUESTION_CHARS characters,
    and a gold the grader can parse (grading.check_gold; parsed golds stay cached for grading).
    A bad row is a ValueError naming the file, line and reason; with skip_bad it is skipped and
    counted (one printed line). limit: stop after that many good problems. Each problem gets
    "_where" = "file:line", for later error messages.
    """
    path = resolve_dataset(name_or_path, split)
    out, bad = [], []
    for lineno, row in read_jsonl(path, with_lines=True):
        reason = _row_problem(row)
        if reason is not None:
            if not skip_bad:
                raise ValueError(f"{path}:{lineno}: {reason} (fix the row, or pass --skip-bad to skip such rows)")
            bad.append(f"{path}:{lineno}: {reason}")
            continue
        question, answer = _problem(row)
        out.append({**row, "question": question, "answer": str(answer), "_where": f"{path}:{lineno}"})
        if limit is not None and len(out) >= limit:
            break
    if bad:
        print0(f"--skip-bad: skipped {len(bad)} bad row(s) of {path}; the first: {bad[0]}")
    warn_math_test_leak(path, out)
    return out


MATH500_HINT = ("PRM800K (and data/math/train_prm800k_12k.jsonl) holds about 4,500 of the 5,000 MATH test "
                "problems; evaluate on MATH500 (--dataset math500, the 500 test problems PRM800K leaves out), "
                "never on the full MATH test set")


def math_test_leak(path, rows):
    """Why data read from `path` can leak MATH test problems into a result, or None:
    PRM800K-derived rows ("source": "prm800k", written by data/prm800k/prepare.py and by
    data/math/prepare.py for a train_prm800k split; or a file named *prm800k*), or the full MATH
    test set (math/test.jsonl)."""
    path = os.path.abspath(str(path))
    if "prm800k" in os.path.basename(path).lower() or any(isinstance(r, dict) and r.get("source") == "prm800k" for r in rows):
        return "it is derived from PRM800K"
    if os.path.basename(path) == "test.jsonl" and os.path.basename(os.path.dirname(path)) == "math":
        return "it is the full MATH test set: a model trained on PRM800K-derived data saw most of it"
    return None


def warn_math_test_leak(path, rows):
    """A loud WARNING (rank 0) when math_test_leak finds a reason; returns the reason or None."""
    why = math_test_leak(path, rows)
    if why:
        print0(f"WARNING: MATH test leakage: {path}: {why}. {MATH500_HINT}.")
    return why


def check_prompt_lengths(tokenizer, problems, max_tokens, where, skip_bad=False, prompt="auto"):
    """The problems whose prompt (build_prompt) is at most max_tokens tokens, e.g. the model's
    max_position_embeddings: a longer one is a RunError naming it (1-based problem index in
    `where`), or with skip_bad is skipped and counted. max_tokens None: no limit."""
    if not max_tokens:
        return problems
    kept, bad = [], []
    for i, p in enumerate(problems):
        n = len(tokenizer(build_prompt(tokenizer, p["question"], prompt), add_special_tokens=False)["input_ids"])
        if n <= max_tokens:
            kept.append(p)
        elif not skip_bad:
            raise RunError(f"{p.get('_where', f'{where}: problem {i + 1}')}: a {n:,}-token prompt, more than the model's "
                           f"{max_tokens:,} positions (pass --skip-bad to skip such problems)")
        else:
            bad.append(i + 1)
    if bad:
        print0(f"--skip-bad: skipped {len(bad)} problem(s) of {where} with prompts over {max_tokens:,} tokens")
    return kept


def max_prompt_tokens(model):
    """The longest prompt a model can read: its config's max_position_embeddings (None if unknown)."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


PROMPTS = ("auto", "chat", "cot", "plain")
# Qwen2.5-Math's chain-of-thought instruction: the grader reads the last \boxed{}
COT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def _chat(tokenizer, messages):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_prompt(tokenizer, question, prompt="auto"):
    """The prompt text for a question (every stage's `--prompt`, saved in its checkpoint's config):

      plain  "Question: {question}\nAnswer: " (base models without a chat template)
      chat   the tokenizer's chat template with the question as the only (user) message: the
             template's own default system prompt, if it has one
      cot    the chat template with COT_INSTRUCTION as the system message (a template that rejects
             a system role gets it after the question, in the user message)
      auto   plain without a chat template; chat when the template's default prompt already asks for
             \boxed{} (Qwen2.5-Math-Instruct); else cot (Qwen2-Instruct, Llama-3-Instruct). A
             template with no system role renders cot as chat (the arith world: "Q: ...\nA: ").

    NOTE: every stage (SFT, PPO, PRM labeling and inputs, evaluation) builds prompts through this one
    function: pass every stage the same --prompt (auto resolves the same way for the same tokenizer).
    """
    if prompt not in PROMPTS:
        raise RunError(f"--prompt {prompt!r}: expected one of {', '.join(PROMPTS)}")
    if not getattr(tokenizer, "chat_template", None):
        if prompt in ("chat", "cot"):
            raise RunError(f"--prompt {prompt}: {getattr(tokenizer, 'name_or_path', 'this tokenizer')!r} has no "
                           "chat template; use --prompt plain (or auto)")
        return f"Question: {question}\nAnswer: "
    if prompt == "plain":
        return f"Question: {question}\nAnswer: "
    user = [{"role": "user", "content": question}]
    if prompt == "chat" or (prompt == "auto" and "\\boxed" in _chat(tokenizer, user)):
        return _chat(tokenizer, user)
    try:
        return _chat(tokenizer, [{"role": "system", "content": COT_INSTRUCTION}] + user)
    except Exception:  # NOTE: jinja's TemplateError: e.g. Gemma's "System role not supported"
        return _chat(tokenizer, [{"role": "user", "content": f"{question}\n{COT_INSTRUCTION}"}])


# -----------------------------------------------------------------------------
# 5. generation: common.generate (Hugging Face generate) and common.sample (our KV-cached loop)

class Generation(NamedTuple):
    tokens: list  # response token ids, EOS included when finished (len = response tokens)
    finished: bool  # EOS within the budget; False = truncated at max_new_tokens


@torch.no_grad()
def left_pad(ids, pad_id):
    """Token-id lists -> (B, P) ids left-padded with pad_id and the (B, P) attention mask, P the
    longest list: the prompt layout of `generate` and `sample`."""
    P = max(len(row) for row in ids)
    x = torch.full((len(ids), P), pad_id, dtype=torch.long)  # (B, P)
    attn = torch.zeros((len(ids), P), dtype=torch.long)  # (B, P)
    for i, row in enumerate(ids):
        x[i, P - len(row):], attn[i, P - len(row):] = torch.tensor(row, dtype=torch.long), 1
    return x, attn


def generate(model, tokenizer, prompts, max_new_tokens, temperature=0.0, *, top_k=0, top_p=1.0,
             batch_size=64, sort=True, eos_ids=None, desc=None):
    """One response per prompt with Hugging Face generate: greedy at temperature 0, else sampled
    from softmax(logits / temperature), the plain softmax, as common.sample samples.

    NOTE: checkpoints ship sampling defaults (Qwen: top_k=20, top_p=0.8, repetition_penalty=1.05)
    that generate() silently merges into any config it is given, and generate's own default is
    top_k=50. Here the model's generation_config is swapped for a clean one during the call, so no
    top-k, top-p, repetition penalty or min-length applies unless passed here (top_k / top_p).

    prompts: token-id lists, or strings (tokenized without special tokens: build_prompt's chat
    template already holds them). max_new_tokens: an int, or one budget per prompt. Batches of
    `batch_size`, left-padded, longest prompts first when `sort` (less padding; sort=False keeps
    the given order, so the random draws match a plain generate call on the same batch). eos_ids:
    default model_eos_ids. desc: a tqdm bar on rank 0. Ids at or past len(tokenizer) (embedding rows
    padded past the vocabulary, Qwen2.5: 151,665 tokens in 151,936 rows) are suppressed, as common.sample does.
    Returns a Generation(tokens, finished) per prompt, in the order given; the response ends at its
    first EOS (kept, the response_mask convention); pad may equal EOS, so pads are never searched.
    Sets model.eval().
    """
    from transformers import GenerationConfig

    eos = sorted(model_eos_ids(model, tokenizer) if eos_ids is None else eos_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]
    budgets = [max_new_tokens] * len(ids) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    sampling = (dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p) if temperature > 0
                else dict(do_sample=False))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    n_rows = head.weight.shape[0] if head is not None else len(tokenizer)
    sampling["suppress_tokens"] = list(range(len(tokenizer), n_rows)) or None  # padding rows: -inf
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i])) if sort else list(range(len(ids)))
    out = [None] * len(ids)
    saved, model.generation_config = model.generation_config, GenerationConfig(pad_token_id=pad_id, eos_token_id=eos)
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None or not is_master()):
            idx = order[start:start + batch_size]
            x, attn = left_pad([ids[i] for i in idx], pad_id)  # (B, P)
            P = x.shape[1]
            cfg = GenerationConfig(max_new_tokens=max(budgets[i] for i in idx), pad_token_id=pad_id,
                                   eos_token_id=eos, **sampling)
            seq = model.generate(input_ids=x.to(device), attention_mask=attn.to(device), generation_config=cfg)
            for row, i in enumerate(idx):
                toks = seq[row, P:P + budgets[i]].tolist()  # (T,) pad after EOS
                end = next((t for t, tok in enumerate(toks) if tok in eos), None)
                out[i] = Generation(toks, False) if end is None else Generation(toks[:end + 1], True)
    finally:
        model.generation_config = saved
    return out


def inverse_cdf(probs, u):
    """The token of each row whose CDF interval holds u * (the row's CDF total): probs (b, V), u (b,)
    in [0, 1) -> (b,). NOTE: a float32 cumsum may end below 1; comparing the unscaled u against it
    would fall off the end and emit the last id whatever its probability."""
    cdf = probs.cumsum(-1)  # (b, V)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def nucleus(probs, top_p):
    """Top-p filter: probs (b, V) with every token zeroed whose higher-probability tokens (ties:
    the lower id first) already hold top_p of the mass; at least the top token stays. Unnormalised
    (inverse_cdf scales by the row's total). The tokens kept are those of Hugging Face's top_p."""
    sp, si = probs.sort(dim=-1, descending=True, stable=True)  # (b, V)
    return probs.scatter(-1, si, sp.masked_fill(sp.cumsum(-1) - sp >= top_p, 0.0))


def kv_cache(model, grow=128):
    """DynamicCache(config=model.config) whose full-attention layers write each token into a buffer
    grown `grow` positions at a time; keys / values are views of its filled part. NOTE: Hugging Face's
    DynamicLayer concatenates at every token, a copy of the whole cache per token: 39% of a labeling
    call's time on CPU with long prefixes (bench/bench_prm.py). Same values, so the same samples."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    class BufferedLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.n, self.buf = 0, None
            n, s = self.n, key_states.shape[-2]
            if self.buf is None or n + s > self.buf[0].shape[-2]:  # (b, heads, capacity, head_dim)
                new = [x.new_empty(*x.shape[:-2], n + s + grow, x.shape[-1]) for x in (key_states, value_states)]
                for b, old in zip(new, self.buf or ()):
                    b[..., :n, :] = old[..., :n, :]
                self.buf = new
            self.buf[0][..., n:n + s, :], self.buf[1][..., n:n + s, :] = key_states, value_states
            self.n = n + s
            self.keys, self.values = (b[..., :self.n, :] for b in self.buf)
            return self.keys, self.values

        def batch_select_indices(self, indices):
            if self.get_seq_length() > 0:
                self.buf = [b[indices] for b in self.buf]
                self.keys, self.values = (b[..., :self.n, :] for b in self.buf)

    cache = DynamicCache(config=model.config)
    for layer in cache.layers:
        if type(layer) is DynamicLayer:  # sliding-window and other layer kinds keep their own update
            layer.__class__ = BufferedLayer
    return cache


@torch.no_grad()
def sample(model, prompt_ids, prompt_mask, max_new_tokens, temperature, eos_ids, pad_id,
           gen=None, rows=None, n_rows=None, vocab_size=None, top_p=1.0):
    """KV-cached sampling from left-padded prompts (B, P); greedy when temperature == 0. PPO's
    rollouts and greedy evals, and prm_train's labels (solutions and Monte-Carlo completions).

    max_new_tokens: an int, or one budget per row ((B,) tensor or list). A row that reaches its own
    budget without EOS stops there (it leaves the batch like a finished row) with finished False and
    length = its budget. vocab_size: len(tokenizer). NOTE: Qwen2.5 pads 151,665 tokens to 151,936
    embedding rows; ids at or past len(tokenizer) decode to nothing, so their logits are -inf (never
    sampled). top_p < 1: nucleus sampling (`nucleus`), only when a flag asks for it (METHOD §6).

    Each token draws one uniform per global row, u = rand(n_rows)[rows], and inverts the CDF: a
    row's sample depends on its global index only, not on the rows it shares a batch with.
    rows / n_rows default to arange(B) / B. Finished rows stop writing at once and leave the batch
    (and KV cache) in groups. Returns responses (B, T) (pad_id after EOS), lengths (B,) with EOS
    counted, finished (B,).
    """
    B, device = prompt_ids.shape[0], prompt_ids.device
    if rows is None:
        rows, n_rows = torch.arange(B, device=device), B if n_rows is None else n_rows
    budgets = torch.as_tensor(max_new_tokens, dtype=torch.long, device=device).expand(B)  # (B,)
    T = int(budgets.max()) if B else 0
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    attn = prompt_mask.long()  # (b, P + t) grows by a column per token
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    cache = kv_cache(model)

    def last_logits(out):  # (b, V) fp32, padding rows of the vocabulary masked
        logits = out.logits[:, -1].float()
        if vocab_size is not None and vocab_size < logits.shape[-1]:
            logits[:, vocab_size:] = float("-inf")
        return logits

    logits = last_logits(model(input_ids=prompt_ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                               use_cache=True, logits_to_keep=1))  # (b, V)
    out = torch.full((B, T), pad_id, dtype=torch.long, device=device)
    lengths = budgets.clone()  # (B,) a row without EOS ends at its budget
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    active, next_pos = torch.arange(B, device=device), pos[:, -1] + 1  # (b,) rows in the batch
    live = budgets > 0  # (b,) rows of the batch still generating
    for t in range(T):
        if temperature == 0:
            tok = logits.argmax(-1)  # (b,)
        else:
            u = torch.rand(n_rows, generator=gen, device=device)[rows[active]]  # (b,)
            probs = torch.softmax(logits / temperature, -1)  # (b, V)
            tok = inverse_cdf(probs if top_p >= 1 else nucleus(probs, top_p), u)  # (b,)
        out[active[live], t] = tok[live]
        done = live & torch.isin(tok, eos)
        lengths[active[done]], finished[active[done]] = t + 1, True
        live &= ~done & (budgets[active] > t + 1)  # out of budget: stops, not finished
        if not live.any():
            break
        if 4 * (~live).sum() >= len(live):  # NOTE: compact when a quarter is done (a copy of the cache)
            keep = live.nonzero().squeeze(-1)
            active, tok, attn, next_pos, live = active[keep], tok[keep], attn[keep], next_pos[keep], live[keep]
            cache.batch_select_indices(keep)
        attn = torch.cat([attn, attn.new_ones(len(active), 1)], dim=1)
        logits = last_logits(model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                                   past_key_values=cache, use_cache=True))
        next_pos = next_pos + 1
    return out[:, : int(lengths.max()) if B else 0], lengths, finished


# -----------------------------------------------------------------------------
# 6. logging: out_dir/metrics.jsonl, optional wandb

class MetricsLogger:
    """One JSON object per line in out_dir/metrics.jsonl (plots and tests read it), mirrored to
    wandb when a project is given. Only rank 0 writes; the other ranks' log() does nothing.

    resume_step=None starts a fresh file (append=True keeps the rows already there); an int keeps
    the rows with step <= resume_step (and rows without a step), drops the rest and a torn last
    line, and rewrites the file atomically (atomic_write: temp file, fsync, os.replace, fsync of the
    directory: a kill or a power loss leaves the old file or the new one, never an empty one). A
    line that is not a JSON object (not the torn last line) is a RunError naming file:line: the
    file was edited or damaged, and dropping rows silently would lose steps.
    """

    def __init__(self, out_dir, resume_step=None, wandb_project=None, config=None, append=False, master=None):
        self.master = is_master() if master is None else master
        self.path, self.wandb = os.path.join(out_dir, "metrics.jsonl"), None
        if not self.master:
            return
        os.makedirs(out_dir, exist_ok=True)
        if resume_step is not None or not append:
            kept = self._rows_up_to(resume_step) if resume_step is not None else []
            atomic_write(self.path, "".join(kept).encode())
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise RunError("--wandb needs the wandb package (pip install wandb), or leave --wandb empty") from None
            if dataclasses.is_dataclass(config):
                config = dataclasses.asdict(config)
            wandb.init(project=wandb_project, config=config, resume="allow")
            self.wandb = wandb

    def _rows_up_to(self, step):
        if not os.path.exists(self.path):
            return []
        kept = []
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n") or not raw.strip():  # torn by a crash mid-write; blank
                    continue
                try:
                    line = raw.decode("utf-8")
                    row = json.loads(line)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    row = None
                if not isinstance(row, dict):
                    raise RunError(f"{self.path}:{lineno}: not a JSON object (the file was damaged or edited); "
                                   "fix or delete that line, then resume again") from None
                if not isinstance(row.get("step"), (int, float)) or row["step"] <= step:
                    kept.append(line)
        return kept

    def log(self, row, echo=False):
        """Append `row` (a flat dict; "step" is wandb's x axis when present). echo: also print it as
        key=value on rank 0."""
        if echo:
            print0(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if not self.master:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb:
            self.wandb.log(row, step=row.get("step"))

    def close(self):
        if self.wandb:
            self.wandb.finish()
            self.wandb = None


# -----------------------------------------------------------------------------
# 7. out_dir ownership and crash-safe files (README "Failure modes")

_LOCKS = {}  # realpath of an out_dir -> its open .lock file, held by this process


def lock_out_dir(out_dir):
    """Take an exclusive fcntl.flock on out_dir/.lock for the rest of the run (released by
    unlock_out_dir or when the process ends, a SIGKILL included). A second run on the same out_dir
    stops at once with one line naming the holder's pid. Re-entrant within one process.
    NOTE: flock is per machine; on a network file system two machines may not see each other's lock."""
    key = os.path.realpath(out_dir)
    if key in _LOCKS:
        return
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RunError(f"--out-dir {out_dir!r} is a file, not a directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
        f = open(os.path.join(out_dir, ".lock"), "a+")
    except OSError as e:
        raise RunError(f"cannot use --out-dir {out_dir!r}: {e.strerror}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RunError(f"{out_dir} is in use by another run (pid {holder}); wait for it to end or "
                       "use another --out-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _LOCKS[key] = f


def unlock_out_dir(out_dir):
    f = _LOCKS.pop(os.path.realpath(out_dir), None)
    if f is not None:
        f.close()  # closing the file releases the flock


def claim_out_dir(out_dir, resume, overwrite, run_files=("metrics.jsonl", "ckpt")):
    """Rank 0 of a stage that writes out_dir: lock it (lock_out_dir), then check what it holds. A
    fresh run (not resume) in an out_dir holding a previous run's `run_files` (or their .tmp / .old
    / .trash-* leftovers) refuses with one line, unless `overwrite`, which deletes them first. Other
    files in out_dir are left alone."""
    if resume and overwrite:
        raise RunError("--resume continues the run in --out-dir and --overwrite deletes it: pass one of them")
    lock_out_dir(out_dir)
    if resume:
        return
    found = sorted({os.path.basename(p) for name in run_files
                    for p in glob.glob(os.path.join(glob.escape(out_dir), name + "*"))
                    if os.path.basename(p) == name or os.path.basename(p)[len(name):].startswith((".tmp", ".old", ".trash-"))})
    if found and not overwrite:
        raise RunError(f"{out_dir} holds a previous run ({', '.join(found)}): pass --resume to continue it, "
                       "--overwrite to delete it and start again, or another --out-dir")
    for name in found:
        remove_tree(os.path.join(out_dir, name))


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root):
    """fsync every file under root, then every directory, deepest first (a directory's fsync makes
    its entries durable): after it, a power loss cannot leave a renamed-in file empty."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_file(dirpath)


def atomic_write(path, data):
    """Write bytes to `path` so that a kill or a power loss leaves the old content or the new, never a
    mix or an empty file: path.tmp, fsync, os.replace, fsync of the directory."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_file(os.path.dirname(os.path.abspath(path)))


def _delete(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def remove_tree(path):
    """Delete a directory (or file) so that a kill at any point never leaves a half-deleted `path`:
    one atomic rename to path.trash-<pid>-<ns>, then the deletion of the trash. Trash left by an
    earlier killed deletion is deleted too; trash that cannot be deleted is left, never in the way.
    NOTE: before, a kill inside shutil.rmtree(ckpt.old) left a non-empty ckpt.old that made every
    later save fail with "Directory not empty"."""
    if os.path.lexists(path):
        trash = f"{path}.trash-{os.getpid()}-{time.monotonic_ns()}"
        os.replace(path, trash)
        _delete(trash)
    for leftover in glob.glob(glob.escape(path) + ".trash-*"):
        _delete(leftover)


def recover_swap(final):
    """Repair what a kill during swap_in can leave: `final` missing while final.old is whole (killed
    between its two renames) -> final.old becomes final again; then leftovers final.tmp (a save that
    never finished), final.old and trash are deleted. Call it with the out_dir lock held."""
    if not os.path.exists(final) and os.path.isdir(final + ".old"):
        os.replace(final + ".old", final)
    for leftover in [final + ".tmp", final + ".old"] + glob.glob(glob.escape(final) + ".trash-*"):
        remove_tree(leftover)


def swap_in(tmp, final):
    """Make the directory `tmp` (fully written) the new `final`: fsync every file and directory in
    it, final -> final.old, tmp -> final, fsync the parent, delete final.old. A kill at any point
    leaves `final` whole (the old one or the new one) or only final.old, which recover_swap restores."""
    fsync_tree(tmp)
    remove_tree(final + ".old")
    if os.path.exists(final):
        os.replace(final, final + ".old")
    os.replace(tmp, final)
    fsync_file(os.path.dirname(os.path.abspath(final)))
    remove_tree(final + ".old")


def file_digests(root, skip=()):
    """{path relative to root: sha256 hex} of every file under root but `skip`."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel not in skip:
                with open(os.path.join(dirpath, name), "rb") as f:
                    out[rel] = hashlib.file_digest(f, "sha256").hexdigest()
    return dict(sorted(out.items()))


def verify_digests(root, digests):
    """RunError naming the first file under root that is missing or whose sha256 is not the one
    recorded at save (a flipped byte, a truncated copy)."""
    for rel, want in digests.items():
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise RunError(f"checkpoint file {path} is missing; the checkpoint is incomplete")
        with open(path, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != want:
                raise RunError(f"checkpoint file {path} is corrupt: its sha256 differs from the one saved in "
                               "meta.json (changed or damaged after the save)")


def nonfinite_names(named_tensors):
    """Names of the floating-point tensors holding NaN or inf, with one host sync for all of them.
    A DTensor (FSDP) is checked on its local shard: combine ranks with an all-reduce."""
    named = [(n, t.to_local() if hasattr(t, "to_local") else t) for n, t in named_tensors
             if torch.is_tensor(t) and t.is_floating_point()]
    if not named:
        return []
    bad = torch.stack([~torch.isfinite(t).all() for _, t in named]).tolist()
    return [n for (n, _), b in zip(named, bad) if b]


def optimizer_tensors(optim):
    """(name, tensor) of every state tensor of a torch optimizer (AdamW: step, exp_avg, exp_avg_sq)."""
    return [(f"state[{i}].{k}", v) for i, s in enumerate(optim.state.values()) for k, v in s.items()]


def weight_files(path):
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".safetensors", ".bin"))) \
        if os.path.isdir(path) else []


def load_checkpoint_model(path, what="model", hint=None, cls=None, **kw):
    """A checkpoint our stages saved, verified: cls.from_pretrained (default AutoModelForCausalLM)
    with no missing, unexpected or mismatched tensor and every parameter finite; anything else is
    one RunError naming the weight file and the keys. NOTE: a plain from_pretrained random-inits a
    missing tensor (a garbled name in model.safetensors) and only warns, hidden at error verbosity."""
    from safetensors import SafetensorError
    if cls is None:
        from transformers import AutoModelForCausalLM as cls
    if not os.path.isdir(path):
        raise RunError(f"{what} checkpoint {path} is missing")
    files = ", ".join(weight_files(path)) or path
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kw)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise RunError(f"cannot load {what} from {files} ({first_line(e)}): "
                       "the checkpoint is corrupt or incomplete") from None
    problems = [f"{k.replace('_', ' ')} {sorted(map(str, info[k]))}"
                for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
    if problems:
        raise RunError(f"{what} checkpoint {files}: {'; '.join(problems)}: the file is corrupt (loading it "
                       "would random-init the missing tensors)")
    bad = nonfinite_names(model.named_parameters())
    if bad:
        raise RunError(f"{what} checkpoint {files}: NaN or inf in {', '.join(bad[:5])}"
                       f"{' ...' if len(bad) > 5 else ''}")
    return model


def torch_load(path, what):
    """torch.load(path) with one RunError naming the file when it is missing or cannot be read (a
    truncated or damaged zip, a garbled pickle)."""
    try:
        return torch.load(path)
    except Exception as e:  # NOTE: damaged input raises RuntimeError, UnpicklingError, EOFError, ...
        raise RunError(f"cannot read {what} {path} ({type(e).__name__}: {first_line(e)}): "
                       "the checkpoint is corrupt") from None


def first_line(e):
    """An exception's message in one line (an OSError's strerror without the path)."""
    return getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]


def write_error(path, e):
    """One line for a failed write under `path`: "disk full at <path>" for ENOSPC / EDQUOT (torch.save
    reports a full disk as a RuntimeError: then the free space decides), else the OS error."""
    full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    if not full and not isinstance(e, OSError):
        parent = path
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(parent or ".").free < 1 << 20
    if full:
        return f"disk full at {path}"
    return f"cannot write {path} ({first_line(e)})"
