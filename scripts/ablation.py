"""
The project's headline experiment (issues 7 and 15): the reward ablation of Gao et al. 2024 in
miniature on the arith world (the start --policy, whose demonstrations already hold unneeded
"So far we have ..." / "Check: ..." steps, and the --prm / --orm). The README's table is the v2 one:
--policy models/arith-policy-v2 --prm models/arith-prm-tag --orm models/arith-orm-tag, with
models/arith-policy-v2 as it was up to commit 9640bfd (git checkout 9640bfd -- models/arith-policy-v2;
the path now holds the v3 reward models' base from another CPU); the defaults
are the shipped v3 assets (models/arith-policy, the likelihood arith-prm and the implicit arith-orm). PPO with twelve
reward VARIANTS (below: a ppo.py --reward mode, for some with one more flag), several seeds, ppo.py's
own defaults except the budget; every main run's final checkpoint evaluated once on the test split
with evaluate.py; an optional eta sweep for clip / clip_delta judged on the validation split;
best-of-N with the shipped PRM / ORM on the starting policy; a results table in the paper's shape,
training curves and decoded samples. One command reproduces all of it:

    python scripts/ablation.py                      # everything below, skipping finished pieces
    python scripts/ablation.py --stages table,plot  # redraw from what is on disk

The v1 results (6 modes from the verbose start with hand-set PPO flags; the README keeps their
text) are superseded by this v2 driver, whose default --tag writes over results/ablation*.

NOTE: settings are chosen on the validation split, the test split is reported once. ppo.py's
defaults were tuned on valid, its greedy evals during training and the eta sweep use valid; only
the main runs' final checkpoints and the start are evaluated on test, the eta-sweep runs never are.

Algorithm (the numbers match comments in the code)
  0. (stage `verbose`, not in the default stages; the v1 results only) fine-tune --policy into a
     verbose starting policy, see make_verbose_policy, -> OUT_DIR/verbose_policy. The v1 table
     started from it (models/arith-policy-verbose at commit c819b1e); the v2 start needs none.
  1. Runs: for every (seed, variant) a `ppo.py` subprocess with ppo_flags (the budget: --steps,
     --prompts-per-step, --samples-per-prompt, --max-new-tokens, greedy evals on the validation
     split; everything else ppo.py's defaults) plus variant_flags (the variant's --reward and extra
     flags, --seed, --eta, --out-dir), OMP_NUM_THREADS=1 each, `jobs` at a time; stdout to
     OUT_DIR/<variant>_s<seed>.log, run dir OUT_DIR/<variant>_s<seed>/ (metrics.jsonl,
     ckpt/policy). A finished run (ckpt/meta.json) is skipped when its saved config holds the same
     flags; one made with other flags (an old run in the same OUT_DIR) stops the stage before any
     run starts. The eta sweep (--eta-sweep) runs clip and clip_delta at each other eta on the
     first seed, OUT_DIR/<variant>_eta<eta>_s<seed>/.
  2. Evaluations: evaluate.py (greedy + `eval_samples` samples at T = 1 on the first `eval_limit`
     problems of the split, the same for all) with --split test on the starting policy ("base")
     and every main run -> OUT_DIR/eval/<run>/results.json; with --split valid on the eta-sweep
     runs and the first seed's clip / clip_delta at the default eta -> OUT_DIR/eval/<run>_valid/.
     Skipped when results.json exists with the same flags and is newer than the checkpoint (other
     flags: the stage stops, as in 1).
  3. Best-of-N: for each N in `bon_n`, evaluate.py on the starting policy with N samples and
     --prm/--orm, --split test -> OUT_DIR/eval/base_bon<N>/.
  4. Table: mean ± std over seeds per variant of greedy accuracy, sampling accuracy, response
     tokens, steps per response, repeated-step fraction, truncated fraction (greedy responses,
     evaluate.py's diagnostics) and extra steps per response (extra_steps: the greedy responses'
     steps that restate a result or check one, from samples.jsonl), next to the paper's
     Qwen2-1.5B-Instruct MATH numbers where the paper has the row (METHOD §6); the eta-sweep table
     (validation split, seed 0, from the `_valid` evals only); the best-of-N table (rows N: greedy,
     maj@N, pass@N, best_of_n_prm, best_of_n_orm); the stages' wall-clock ->
     RESULTS_DIR/<tag>.md and <tag>.json (every number).
  5. Plots: per variant (mean over seeds, thin lines per seed) rollout response tokens, steps per
     response, rollout accuracy, greedy valid accuracy, repeated-step fraction and truncated
     fraction vs PPO step, 2 x 3 panels -> RESULTS_DIR/<tag>_curves.png (+ scripts/plot.py on the
     seed-0 runs -> <tag>_curves_seed0.png); decoded greedy test responses of the prm policy next
     to the clip_delta one (seed 0), the first 4 problems where prm's is wrong or longer ->
     RESULTS_DIR/<tag>_samples.md.
  Every stage's wall seconds are added to OUT_DIR/timing.json (stage -> seconds), shown in the table.

Defaults: the 12 variants x 3 seeds = 36 runs of 50 PPO steps x 64 prompts x 1 sample (a quarter
of ppo.py's 200 steps), max 160 new tokens, greedy valid evals every 25 steps on 200 problems; test
evals on all 500 problems, greedy + 4 samples; best-of-8 and best-of-16.

Commands
  The v2 table: 12 variants x 3 seeds (36 PPO runs), test evals, best-of-8 and -16:
      python scripts/ablation.py
  Eta sweep for clip and clip_delta on seed 0, judged on valid (adds 6 runs; finished runs are skipped):
      python scripts/ablation.py --eta-sweep 0.3,0.7,0.9
  Some variants, one seed:
      python scripts/ablation.py --modes success,prm,clip_delta --seeds 0
  Rebuild the v1 verbose start (2 min; from models/arith-policy, so from the v1 policy only after
  `git checkout c819b1e -- models`):
      python scripts/ablation.py --stages verbose

NOTE: std is the sample std (ddof = 1) over seeds; with one seed only the value is shown.
NOTE: runs with the same seed see the same prompts in the same order, so the seed-0 rollout-length
curves of variants that do not change the length coincide.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python scripts/ablation.py` finds common.py
PY = sys.executable

import common  # noqa: E402  (after the path line above)
from common import field  # noqa: E402

# The paper's numbers (METHOD §6): MATH, Qwen2-1.5B-Instruct, greedy / sampling accuracy in %.
# Only these rows have them; the other variants' paper cells stay blank.
PAPER = {
    "base": (24.90, 16.79), "success": (30.58, 27.05), "orm": (30.57, 27.12), "prm": (11.16, 14.68),
    "clip": (30.30, 28.40), "delta": (30.68, 27.96), "clip_delta": (31.44, 28.20),
}

# The v2 variants: name -> (ppo.py --reward mode, extra ppo.py flags). The run dir is <name>_s<seed>.
VARIANTS = {
    "success": ("success", ()),
    "orm": ("orm", ()),
    "prm": ("prm", ()),
    "prm_normed": ("prm_normed", ()),
    "prm_lenpen": ("prm_lenpen", ()),
    "clip": ("clip", ()),
    "delta": ("delta", ()),
    "delta_keep": ("delta", ("--delta-last", "keep")),
    "clip_delta": ("clip_delta", ()),
    "min": ("min", ()),
    "prm_noscore": ("prm", ("--truncation", "no-score")),
    "clip_delta_noscore": ("clip_delta", ("--truncation", "no-score")),
}
SWEEP_VARIANTS = ("clip", "clip_delta")  # the eta sweep; also evaluated on valid at the default eta


@dataclasses.dataclass
class Config:
    modes: str = field(",".join(VARIANTS), "variants (comma list; see VARIANTS)")
    seeds: str = field("0,1,2", "PPO seeds (comma list)")
    steps: int = field(50, "ppo.py --steps (the budget; every other PPO setting is ppo.py's default)")
    prompts_per_step: int = field(64, "ppo.py --prompts-per-step")
    samples_per_prompt: int = field(1, "ppo.py --samples-per-prompt")
    eta: float = field(0.5, "ppo.py --eta of the main runs")
    max_new_tokens: int = field(160, "training and evaluation length limit")
    train_eval_every: int = field(25, "ppo.py --eval-every (greedy eval curve on the validation split)")
    train_eval_limit: int = field(200, "ppo.py --eval-limit (first N validation problems)")
    eta_sweep: str = field("", "e.g. '0.3,0.7,0.9': clip and clip_delta at each other eta, first seed, "
                           "evaluated on the validation split only ('' = off)")
    eval_limit: int = field(0, "evaluate.py --eval-limit: the first N problems of the split (0 = all 500)")
    eval_samples: int = field(4, "evaluate.py --samples for each trained policy and the start")
    bon_n: str = field("8,16", "best-of-N on the starting policy: one evaluate.py run per N (comma list)")
    policy: str = field("models/arith-policy", "the starting policy (v2 and v3: its demonstrations already hold "
                        "unneeded steps; the v1 results used the verbose start of make_verbose_policy)")
    prm: str = field("models/arith-prm", "PRM for every variant but success / orm, and best-of-N")
    orm: str = field("models/arith-orm", "ORM for the orm runs and best-of-N")
    jobs: int = field(2, "concurrent subprocesses (each OMP_NUM_THREADS=1)")
    stages: str = field("train,eval,bon,table,plot", "which stages to run (comma list; also: verbose)")
    out_dir: str = field("out/ablation", "run dirs, logs, evals, timing.json (gitignored)")
    results_dir: str = field("results", "small outputs: tables, plots, samples")
    smooth: int = field(5, "plot: moving-average window over PPO steps for the rollout curves")
    tag: str = field("ablation", "results file prefix: RESULTS_DIR/<tag>.md, <tag>.json, <tag>_curves.png, ...")


def ppo_flags(cfg: Config) -> list[str]:
    """The settings shared by every run: the budget and the eval split. NOTE: nothing else, so that
    every other PPO setting is ppo.py's default, tuned on the validation split (ppo.py docstring)."""
    return [
        "--policy", cfg.policy, "--prm", cfg.prm, "--orm", cfg.orm,
        "--steps", str(cfg.steps), "--prompts-per-step", str(cfg.prompts_per_step),
        "--samples-per-prompt", str(cfg.samples_per_prompt), "--max-new-tokens", str(cfg.max_new_tokens),
        "--eval-every", str(cfg.train_eval_every), "--eval-limit", str(cfg.train_eval_limit),
        "--eval-split", "valid", "--save-every", "0", "--sample-every", "0",
    ]


def variant_flags(variant: str, seed: int, eta: float, run_dir: str) -> list[str]:
    """The flags of one run on top of ppo_flags: the variant's extra flags and --reward, then
    --seed, --eta and --out-dir."""
    mode, extra = VARIANTS[variant]
    return [*extra, "--reward", mode, "--seed", str(seed), "--eta", str(eta), "--out-dir", run_dir]


def differs(saved: dict, flags: list[str]) -> list[str]:
    """The `--name value` pairs of `flags` whose value is not the one in a saved config (ppo.py's
    ckpt/meta.json, evaluate.py's results.json), as 'name: saved -> wanted'. --out-dir is left out
    (a moved OUT_DIR keeps its runs). NOTE: values compare as strings, str(saved) == flag, which
    holds for the ints, floats and paths this driver passes."""
    out = []
    for k, v in zip(flags[::2], flags[1::2]):
        key = k[2:].replace("-", "_")
        if k != "--out-dir" and str(saved.get(key)) != v:
            out.append(f"{k[2:]}: {saved.get(key)} -> {v}")
    return out


def finished(path: str, flags: list[str], config_of) -> bool:
    """Whether the output whose marker file is `path` (relative to ROOT) exists and was made with
    `flags`; config_of(json) -> its saved config. Made with other flags: a RunError."""
    js = load(path)
    if js is None:
        return False
    bad = differs(config_of(js), flags)
    if bad:
        raise common.RunError(f"{path} records other settings ({'; '.join(bad)}): an older run or eval "
                              "in this OUT_DIR; delete that run / eval directory or use another --out-dir")
    return True


def sh(cmd: list[str], log: str) -> float:
    """Run one subprocess (1 thread) with output to `log`; return wall seconds; raise on failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise common.RunError(f"failed ({rc}): {' '.join(cmd)} (see {log})")
    return time.time() - t0


def run_names(cfg: Config) -> list[tuple[str, str, int, float]]:
    """(name, variant, seed, eta) of every PPO run, seed-major so that a partial set has whole seeds;
    then the eta sweep. An unknown variant is a RunError."""
    variants = cfg.modes.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise common.RunError(f"unknown variant(s) {', '.join(unknown)}: expected some of {', '.join(VARIANTS)}")
    out = []
    for seed in [int(s) for s in cfg.seeds.split(",")]:
        for variant in variants:
            out.append((f"{variant}_s{seed}", variant, seed, cfg.eta))
    if cfg.eta_sweep:
        seed = int(cfg.seeds.split(",")[0])
        for variant in SWEEP_VARIANTS:
            for eta in [float(e) for e in cfg.eta_sweep.split(",")]:
                if eta != cfg.eta:
                    out.append((f"{variant}_eta{eta:g}_s{seed}", variant, seed, eta))
    return out


def valid_runs(cfg: Config) -> list[tuple[str, str, int, float]]:
    """The runs also (sweep: only) evaluated on the validation split: the eta sweep and the first
    seed's SWEEP_VARIANTS at the default eta, i.e. every run of a sweep variant on the first seed."""
    seed0 = int(cfg.seeds.split(",")[0])
    return [r for r in run_names(cfg) if r[1] in SWEEP_VARIANTS and r[2] == seed0]


def parallel(jobs: int, tasks: list):
    with ThreadPoolExecutor(jobs) as ex:
        for fut in [ex.submit(t) for t in tasks]:
            fut.result()


def train(cfg: Config):
    # 1. PPO runs, `jobs` at a time; finished runs are skipped, a finished run with other flags
    #    stops the stage before any run starts.
    def flags(name, variant, seed, eta):
        return ppo_flags(cfg) + variant_flags(variant, seed, eta, os.path.join(cfg.out_dir, name))

    def meta(name):
        return os.path.join(cfg.out_dir, name, "ckpt", "meta.json")

    todo = [r for r in run_names(cfg) if not finished(meta(r[0]), flags(*r), lambda js: js["config"])]

    def task(name, variant, seed, eta):
        def go():
            run = os.path.join(ROOT, cfg.out_dir, name)
            if os.path.exists(run):
                shutil.rmtree(run)  # a partial run: start over
            s = sh([PY, "ppo.py", *flags(name, variant, seed, eta)], run + ".log")
            print(f"train {name}: {s:.0f}s", flush=True)
        return go
    parallel(cfg.jobs, [task(*r) for r in todo])


def eval_flags(cfg: Config, policy: str, name: str, samples: int, split: str, extra=()) -> list[str]:
    return ["--policy", policy, "--dataset", "arith", "--split", split, "--eval-limit", str(cfg.eval_limit),
            "--samples", str(samples), "--temperature", "1.0", "--max-new-tokens", str(cfg.max_new_tokens),
            "--seed", "0", "--out-dir", os.path.join(cfg.out_dir, "eval", name), *extra]


def evaluate(cfg: Config, policy: str, name: str, samples: int, split: str = "test", extra=()):
    """evaluate.py -> OUT_DIR/eval/<name>/, unless it finished with the same flags after the policy's
    checkpoint was written. NOTE: an eval older than its checkpoint (a run redone) is redone."""
    flags = eval_flags(cfg, policy, name, samples, split, extra)
    res = os.path.join(cfg.out_dir, "eval", name, "results.json")
    meta = os.path.join(ROOT, os.path.dirname(policy), "meta.json")  # a PPO checkpoint's; none for the start
    redo = os.path.exists(meta) and os.path.exists(os.path.join(ROOT, res)) and \
        os.path.getmtime(meta) > os.path.getmtime(os.path.join(ROOT, res))
    if not redo and finished(res, flags, lambda js: js.get("config", {})):
        return
    s = sh([PY, "evaluate.py", *flags], os.path.join(ROOT, cfg.out_dir, "eval", name + ".log"))
    print(f"eval {name}: {s:.0f}s", flush=True)


def evals(cfg: Config):
    # 2. evaluate.py on the start and every finished main run (test), on the sweep runs and the
    #    first seed's clip / clip_delta (valid). NOTE: the eta-sweep runs never see the test split.
    os.makedirs(os.path.join(ROOT, cfg.out_dir, "eval"), exist_ok=True)
    jobs = [(cfg.policy, "base", "test")]
    for name, variant, seed, eta in run_names(cfg):
        if eta == cfg.eta:
            jobs.append((os.path.join(cfg.out_dir, name, "ckpt", "policy"), name, "test"))
    for name, *_ in valid_runs(cfg):
        jobs.append((os.path.join(cfg.out_dir, name, "ckpt", "policy"), name + "_valid", "valid"))
    tasks = []
    for pol, name, split in jobs:
        if pol != cfg.policy and not os.path.exists(os.path.join(ROOT, os.path.dirname(pol), "meta.json")):
            print(f"eval: {name} has no final checkpoint, skipped", flush=True)
            continue
        finished(os.path.join(cfg.out_dir, "eval", name, "results.json"),  # stale evals stop the stage now
                 eval_flags(cfg, pol, name, cfg.eval_samples, split), lambda js: js.get("config", {}))
        tasks.append(lambda pol=pol, name=name, split=split: evaluate(cfg, pol, name, cfg.eval_samples, split))
    parallel(cfg.jobs, tasks)


def bon_sizes(cfg: Config) -> list[int]:
    return [int(n) for n in cfg.bon_n.split(",") if n.strip()]


def bon(cfg: Config):
    # 3. Best-of-N with the PRM and the ORM on the starting policy, one evaluate.py run per N.
    os.makedirs(os.path.join(ROOT, cfg.out_dir, "eval"), exist_ok=True)
    parallel(cfg.jobs, [lambda n=n: evaluate(cfg, cfg.policy, f"base_bon{n}", n, "test",
                                             ["--prm", cfg.prm, "--orm", cfg.orm]) for n in bon_sizes(cfg)])


def load(path: str):
    p = os.path.join(ROOT, path)
    return json.load(open(p)) if os.path.exists(p) else None


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    s = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else float("nan")
    return m, s


COLS = [  # (results.json key, header, scale, decimals)
    ("greedy_accuracy", "greedy acc %", 100, 1),
    ("sampling_accuracy", "sampling acc %", 100, 1),
    ("mean_response_tokens", "length (tokens)", 1, 1),
    ("steps_per_response", "steps", 1, 2),
    ("repeated_step_fraction", "repeated-step frac", 1, 3),
    ("truncated_fraction", "truncated frac", 1, 3),
    ("extra_steps_per_response", "extra steps / resp", 1, 2),  # not in results.json: extra_steps
]
EXTRA_STEPS = ("So far we have", "Check:")  # the arith v2 world's unneeded steps: restate, check


def extra_steps(samples_path: str):
    """Mean over the greedy responses of samples.jsonl (relative to ROOT) of the steps (split on a
    blank line) that restate a result or check one (EXTRA_STEPS); None without the file or greedy rows.
    NOTE: arith-specific; they are correct-looking steps, not exact repeats, so the repeated-step
    fraction misses them (README, "`prm` and `clip_delta` from the new start")."""
    p = os.path.join(ROOT, samples_path)
    if not os.path.exists(p):
        return None
    rows = [r for r in map(json.loads, open(p, encoding="utf-8")) if r.get("kind") == "greedy"]
    if not rows:
        return None
    n = sum(st.strip().startswith(EXTRA_STEPS) for r in rows for st in r["response"].split("\n\n"))
    return n / len(rows)


def load_eval(cfg: Config, name: str):
    """OUT_DIR/eval/<name>/results.json plus extra_steps_per_response from its samples.jsonl; None if absent."""
    r = load(os.path.join(cfg.out_dir, "eval", name, "results.json"))
    if r is None:
        return None
    return dict(r, extra_steps_per_response=extra_steps(os.path.join(cfg.out_dir, "eval", name, "samples.jsonl")))


def aggregate(rs: list[dict]) -> tuple[list[str], dict]:
    """Table cells (mean ± std over the runs, the value alone for one run, '-' when no run has the
    key) and the json entry ({key: {mean, std}} in the results.json scale) of COLS over runs `rs`."""
    cells, entry = [], {"n_seeds": len(rs)}
    for k, _, sc, d in COLS:
        xs = [r[k] * sc for r in rs if r.get(k) is not None]
        if not xs:
            cells.append("-")
            entry[k] = None
            continue
        m, s = mean_std(xs)
        cells.append(f"{m:.{d}f} ± {s:.{d}f}" if len(xs) > 1 else f"{m:.{d}f}")
        entry[k] = {"mean": m / sc, "std": s / sc}
    return cells, entry


def paper(row: str) -> str:
    return f"{PAPER[row][0]:.2f} / {PAPER[row][1]:.2f}" if row in PAPER else ""


def table(cfg: Config):
    # 4. Mean ± std over seeds per variant (main runs, test split) -> markdown + json; the eta-sweep
    #    table from the `_valid` evals only; the best-of-N table; the stages' wall-clock.
    hdr_cols = " | ".join(h for _, h, _, _ in COLS)
    rows, js = [], {"config": vars(cfg), "modes": {}, "runs": {}, "eta_sweep": {}, "best_of_n": {}}
    base = load_eval(cfg, "base")
    rows += [f"| variant | seeds | {hdr_cols} | paper greedy / sampling (MATH) |", "|" + "---|" * (len(COLS) + 3)]
    if base:
        cells, _ = aggregate([base])
        rows.append("| base (start) | - | " + " | ".join(cells) + f" | {paper('base')} |")
        js["modes"]["base"] = {k: base.get(k) for k, *_ in COLS}
    groups: dict[str, list[dict]] = {}
    for name, variant, seed, eta in run_names(cfg):
        r = load_eval(cfg, name) if eta == cfg.eta else None  # sweep runs: valid only, below
        if r is None:
            continue
        js["runs"][name] = {k: r.get(k) for k, *_ in COLS}
        groups.setdefault(variant, []).append(r)
    for variant, rs in groups.items():
        cells, js["modes"][variant] = aggregate(rs)
        rows.append(f"| {variant} | {len(rs)} | " + " | ".join(cells) + f" | {paper(variant)} |")
    n_prob = (base or {}).get("n_problems", "?")
    md = [f"PPO ablation v2 on the arith world from {cfg.policy}: {cfg.steps} PPO steps x"
          f" {cfg.prompts_per_step * cfg.samples_per_prompt} rollouts, every other PPO setting ppo.py's default"
          f" (eta {cfg.eta:g}); final policies evaluated once on {n_prob} arith test problems: greedy +"
          f" {cfg.eval_samples} samples at T=1, max {cfg.max_new_tokens} new tokens. Diagnostics over the greedy"
          f" responses; extra steps / resp: greedy steps starting with {' or '.join(repr(x) for x in EXTRA_STEPS)}."
          " mean ± std over seeds. Paper: Qwen2-1.5B-Instruct on MATH, for the rows it has.", "", *rows, ""]
    # The eta sweep: validation split, first seed; the default eta comes from the same seed's main runs.
    order = {v: i for i, v in enumerate(SWEEP_VARIANTS)}
    sweep = []
    for name, variant, seed, eta in sorted(valid_runs(cfg), key=lambda r: (order[r[1]], r[3])):
        r = load_eval(cfg, name + "_valid")
        if r is None:
            continue
        cells, entry = aggregate([r])
        sweep.append(f"| {variant} | {eta:g} | " + " | ".join(cells) + " |")
        js["eta_sweep"][name + "_valid"] = {"variant": variant, "eta": eta, "seed": seed, **entry}
    if sweep:
        seed0 = cfg.seeds.split(",")[0]
        md += [f"Eta sweep (validation split, seed {seed0}; evaluate.py as above on the valid problems):", "",
               f"| variant | eta | {hdr_cols} |", "|" + "---|" * (len(COLS) + 2), *sweep, ""]
    # Best-of-N on the start: one row per N.
    bon_rows = []
    for n in bon_sizes(cfg):
        b = load(os.path.join(cfg.out_dir, "eval", f"base_bon{n}", "results.json"))
        if b is None:
            print(f"table: no best-of-{n} eval (OUT_DIR/eval/base_bon{n}/results.json)", flush=True)
            continue
        keys = ["greedy_accuracy", f"maj@{n}", f"pass@{n}", "best_of_n_prm", "best_of_n_orm"]
        missing = [k for k in keys if not isinstance(b.get(k), (int, float))]
        if missing:
            print(f"table: base_bon{n}/results.json has no {', '.join(missing)}", flush=True)
        bon_rows.append(f"| {n} | " + " | ".join("-" if k in missing else f"{b[k] * 100:.1f}" for k in keys) + " |")
        js["best_of_n"][str(n)] = {"n_problems": b.get("n_problems"), **{k: b.get(k) for k in keys}}
    if bon_rows:
        md += [f"Best-of-N on the starting policy {cfg.policy} (arith test problems, N samples at T=1, accuracy %;"
               f" reranked by {cfg.prm} / {cfg.orm}):", "",
               "| N | greedy | maj@N | pass@N | best_of_n_prm | best_of_n_orm |", "|---|---|---|---|---|---|",
               *bon_rows, ""]
    timing = load(os.path.join(cfg.out_dir, "timing.json")) or {}
    js["timing"] = timing
    if timing:
        md.append("stage wall-clock (OUT_DIR/timing.json, summed over invocations): "
                  + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items()))
    os.makedirs(os.path.join(ROOT, cfg.results_dir), exist_ok=True)
    open(os.path.join(ROOT, cfg.results_dir, cfg.tag + ".md"), "w").write("\n".join(md) + "\n")
    json.dump(js, open(os.path.join(ROOT, cfg.results_dir, cfg.tag + ".json"), "w"), indent=1)
    print("\n".join(md))


def read_metrics(path: str) -> list[dict]:
    p = os.path.join(ROOT, path)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []


def plot(cfg: Config):
    # 5. Curves (mean over seeds, thin per-seed lines) and decoded samples.
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("rollout/response_tokens", "response tokens (rollouts)"),
            ("rollout/steps_per_response", "steps per response (rollouts)"),
            ("rollout/accuracy", "rollout accuracy (T=1)"),
            ("eval/greedy_accuracy", f"greedy accuracy ({cfg.train_eval_limit} valid problems)"),
            ("rollout/repeated_step_fraction", "repeated-step fraction (rollouts)"),
            ("rollout/truncated_fraction", "truncated fraction (rollouts)")]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    axes = axes.ravel()

    def smooth(xs: list[float], w: int) -> list[float]:  # trailing moving average
        return [sum(xs[max(0, i - w + 1):i + 1]) / len(xs[max(0, i - w + 1):i + 1]) for i in range(len(xs))]

    for i, variant in enumerate(cfg.modes.split(",")):
        runs = [read_metrics(os.path.join(cfg.out_dir, f"{variant}_s{s}", "metrics.jsonl")) for s in cfg.seeds.split(",")]
        runs = [r for r in runs if r]
        if not runs:
            continue
        color, ls = f"C{i % 10}", "-" if i < 10 else "--"  # NOTE: 12 variants, 10 colours: the last two dashed
        for ax, (k, title) in zip(axes, keys):
            curves = [{m["step"]: m[k] for m in r if k in m} for r in runs]
            steps = sorted(set.intersection(*[set(c) for c in curves]))
            w = 1 if k.startswith("eval") else cfg.smooth
            for c in curves:
                ax.plot(sorted(c), smooth([c[s] for s in sorted(c)], w), color=color, ls=ls, alpha=0.25, lw=0.8)
            ax.plot(steps, smooth([sum(c[s] for c in curves) / len(curves) for s in steps], w), color=color, ls=ls,
                    lw=2, label=f"{variant} (n={len(runs)})", marker="o" if k.startswith("eval") else None)
            ax.set_title(title + (f", {w}-step moving avg" if w > 1 else ""), fontsize=9)
            ax.set_xlabel("PPO step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.join(ROOT, cfg.results_dir), exist_ok=True)
    out = os.path.join(ROOT, cfg.results_dir, cfg.tag + "_curves.png")
    fig.savefig(out, dpi=100)
    print("wrote", out)
    seed0 = cfg.seeds.split(",")[0]
    paths = [os.path.join(cfg.out_dir, f"{m}_s{seed0}", "metrics.jsonl") for m in cfg.modes.split(",")]
    paths = [p for p in paths if os.path.exists(os.path.join(ROOT, p))]
    if paths:
        tmp = os.path.join(cfg.out_dir, "plot_seed0")
        sh([PY, "scripts/plot.py", *paths, "--out", os.path.join(tmp, "curves.png")], os.path.join(ROOT, cfg.out_dir, "plot_seed0.log"))
        shutil.copy(os.path.join(ROOT, tmp, "curves.png"), os.path.join(ROOT, cfg.results_dir, cfg.tag + "_curves_seed0.png"))
    # Decoded greedy test responses: prm next to clip_delta, seed 0, the first 4 problems where prm's
    # is wrong or longer (the hacking the table measures), else the first 4.
    a, b = greedy_rows(cfg, f"prm_s{seed0}"), greedy_rows(cfg, f"clip_delta_s{seed0}")
    if a and b:
        pairs = pick_pairs(a, b)
        md = [f"Greedy responses on arith test problems: `prm` (seed {seed0}) vs `clip_delta` (seed {seed0}), the first"
              " problems where the prm response is wrong or longer than the clip_delta one.", ""]
        for x, y in pairs:
            md += [f"**Q:** {x['question']} (gold {x['gold']})", ""]
            for tag, r in (("prm", x), ("clip_delta", y)):
                md += [f"`{tag}`: correct={r['correct']}, {r['response_tokens']} tokens, {r['steps']} steps,"
                       f" {r['repeated_steps']} repeated, truncated={r['truncated']}", "", "```", r["response"], "```", ""]
        open(os.path.join(ROOT, cfg.results_dir, cfg.tag + "_samples.md"), "w").write("\n".join(md))
        print("wrote", os.path.join(cfg.results_dir, cfg.tag + "_samples.md"))


def greedy_rows(cfg: Config, name: str) -> list[dict]:
    p = os.path.join(ROOT, cfg.out_dir, "eval", name, "samples.jsonl")
    return [r for r in map(json.loads, open(p, encoding="utf-8")) if r["kind"] == "greedy"] if os.path.exists(p) else []


def pick_pairs(a: list[dict], b: list[dict], n: int = 4) -> list[tuple[dict, dict]]:
    """(prm row, clip_delta row) of the first n problems both answered where the prm response is wrong
    or has more tokens; topped up with the first other problems when fewer than n qualify."""
    by_problem = {r["problem"]: r for r in b}
    pairs = [(x, by_problem[x["problem"]]) for x in a if x["problem"] in by_problem]
    hit = [(x, y) for x, y in pairs if not x["correct"] or x["response_tokens"] > y["response_tokens"]]
    return (hit + [p for p in pairs if p not in hit])[:n]


def make_verbose_policy(cfg: Config):
    # 0. The "verbose" starting policy of the investigation: models/arith-policy fine-tuned 200 steps
    #    on the arith train split where 30% of the solutions carry one correct-but-useless step,
    #    "So the result is N.", before the final answer line. NOTE: the shipped policy puts
    #    probability ~1e-6 on anything but EOS after its answer line, so PPO can never sample a
    #    longer solution and no reward can make it longer; this policy makes extra steps explorable.
    import random
    out = os.path.join(ROOT, cfg.out_dir, "verbose_policy")
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return
    data = os.path.join(ROOT, cfg.out_dir, "verbose_data", "train.jsonl")
    os.makedirs(os.path.dirname(data), exist_ok=True)
    rng = random.Random(0)
    with open(os.path.join(ROOT, "data", "arith", "train.jsonl")) as fin, open(data, "w") as fout:
        for line in fin:
            r = json.loads(line)
            steps = r["solution"].split("\n\n")
            if rng.random() < 0.3:
                steps.insert(len(steps) - 1, f"So the result is {r['answer']}.")
            fout.write(json.dumps(dict(r, solution="\n\n".join(steps))) + "\n")
    cmd = [PY, "sft.py", "--init", "models/arith-policy", "--dataset", data, "--train-split", "train",
           "--eval-split", "train", "--max-steps", "200", "--lr", "3e-4", "--min-lr", "1e-4", "--warmup-steps", "10",
           "--eval-every", "1000", "--eval-limit", "50", "--out-dir", out]
    print(f"verbose policy: {sh(cmd, out + '.log'):.0f}s", flush=True)


def add_timing(cfg: Config, stage: str, seconds: float) -> dict:
    """Add a finished stage's wall seconds to OUT_DIR/timing.json (stage -> seconds); return it.
    NOTE: summed over invocations, so an interrupted-then-resumed stage counts both parts; a rerun
    that finds everything finished adds about 0 s (table and plot add their few seconds each time)."""
    path = os.path.join(ROOT, cfg.out_dir, "timing.json")
    timing = load(path) or {}
    timing[stage] = timing.get(stage, 0.0) + seconds
    tmp = path + ".tmp"
    json.dump(timing, open(tmp, "w"), indent=1)
    os.replace(tmp, path)
    return timing


def main(argv=None):
    cfg = common.parse_config(Config, argv)
    run_names(cfg)  # an unknown variant stops here, before any stage
    os.makedirs(os.path.join(ROOT, cfg.out_dir), exist_ok=True)
    t0 = time.time()
    stages = cfg.stages.split(",")
    for st, fn in (("verbose", make_verbose_policy), ("train", train), ("eval", evals), ("bon", bon), ("table", table), ("plot", plot)):
        if st in stages:
            t = time.time()
            fn(cfg)
            add_timing(cfg, st, time.time() - t)
            print(f"== stage {st} done at {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    common.run_main(main)
