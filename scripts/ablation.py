"""
The project's headline experiment (issue 7): the reward ablation of Gao et al. 2024 in miniature on
the arith world. PPO from models/arith-policy with --reward success | orm | prm | clip | delta |
clip_delta (identical settings otherwise, several seeds), every final checkpoint evaluated with
evaluate.py, best-of-N with the shipped PRM / ORM on the starting policy, a results table in the
paper's shape, training curves and decoded samples. One command reproduces all of it:

    python scripts/ablation.py                      # everything below, skipping finished pieces
    python scripts/ablation.py --stages table,plot  # redraw from what is on disk

Algorithm (the numbers match comments in the code)
  0. (stage `verbose`, not in the default stages; the v1 results only) fine-tune --policy into a
     verbose starting policy, see make_verbose_policy, -> OUT_DIR/verbose_policy. The v1 table
     started from it (models/arith-policy-verbose at commit c819b1e); the v2 start needs none.
  1. Runs: for every (seed, mode) a `ppo.py` subprocess with the shared PPO flags (PPO_FLAGS below
     plus --steps/--seed/--reward), OMP_NUM_THREADS=1 each, `jobs` at a time; stdout to
     OUT_DIR/<mode>_s<seed>.log, run dir OUT_DIR/<mode>_s<seed>/ (metrics.jsonl, ckpt/policy). A
     run whose ckpt/meta.json exists is skipped. The optional eta sweep (clip and clip_delta,
     seed 0) uses the same flags with --eta.
  2. Evaluations: evaluate.py on every final policy (greedy + `eval_samples` samples at T = 1 on the
     first `eval_limit` arith test problems, the same for all) -> OUT_DIR/eval/<run>/results.json;
     and once on the starting policy ("base"). Skipped when results.json exists.
  3. Best-of-N: evaluate.py on the starting policy with `bon_n` samples and --prm/--orm.
  4. Table: mean ± std over seeds per mode of greedy accuracy, sampling accuracy, response tokens,
     steps per response and repeated-step fraction (greedy responses, evaluate.py's headline
     diagnostics), next to the paper's Qwen2-1.5B-Instruct MATH numbers (METHOD §6) ->
     RESULTS_DIR/ablation.md and ablation.json. Best-of-N -> the same files.
  5. Plots: per mode (mean over seeds, thin lines per seed) rollout response tokens, steps per
     response, rollout accuracy and greedy eval accuracy vs PPO step -> RESULTS_DIR/ablation_curves.png
     (+ scripts/plot.py on the seed-0 runs -> RESULTS_DIR/ablation_curves_seed0.png); decoded
     greedy samples of the prm policy next to the clip_delta one -> RESULTS_DIR/ablation_samples.md.

Commands (what produced results/; see the README for hardware and wall-clock)
  Headline table, verbose start, 6 modes x 3 seeds, all 500 test problems, best-of-8:
      python scripts/ablation.py
  Eta sweep for clip and clip_delta on seed 0 (adds 6 runs; finished runs are skipped):
      python scripts/ablation.py --eta-sweep 0.3,0.5,0.7,0.9
  The same from the shipped policy (results/ablation_shipped*):
      python scripts/ablation.py --policy models/arith-policy --out-dir out/ablation_shipped --tag ablation_shipped
  Rebuild the verbose start from models/arith-policy (2 min, byte-identical to the shipped one):
      python scripts/ablation.py --stages verbose

NOTE: std is the sample std (ddof = 1) over seeds; with one seed only the value is shown.
NOTE: runs with the same seed see the same prompts in the same order, so the seed-0 rollout-length
curves of modes that do not change the length coincide.
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
PAPER = {
    "base": (24.90, 16.79), "success": (30.58, 27.05), "orm": (30.57, 27.12), "prm": (11.16, 14.68),
    "clip": (30.30, 28.40), "delta": (30.68, 27.96), "clip_delta": (31.44, 28.20),
}


@dataclasses.dataclass
class Config:
    modes: str = field("success,orm,prm,clip,delta,clip_delta", "reward modes (comma list)")
    seeds: str = field("0,1,2", "PPO seeds (comma list)")
    steps: int = field(40, "PPO steps per run")
    prompts_per_step: int = field(8, "ppo.py --prompts-per-step")
    samples_per_prompt: int = field(8, "ppo.py --samples-per-prompt")
    lr: float = field(3e-5, "ppo.py --lr")
    lam: float = field(0.95, "ppo.py --lam")
    beta: float = field(0.02, "ppo.py --beta (KL per token)")
    alpha: float = field(1.0, "ppo.py --alpha")
    eta: float = field(0.5, "ppo.py --eta")
    max_new_tokens: int = field(160, "training and evaluation length limit")
    train_eval_every: int = field(10, "ppo.py --eval-every (greedy eval curve)")
    train_eval_limit: int = field(100, "ppo.py --eval-limit")
    eta_sweep: str = field("", "e.g. '0.3,0.5,0.7,0.9': clip and clip_delta, first seed ('' = off)")
    eval_limit: int = field(0, "evaluate.py --eval-limit: the first N arith test problems (0 = all 500)")
    eval_samples: int = field(4, "evaluate.py --samples for each trained policy")
    bon_n: int = field(8, "best-of-N samples on the starting policy")
    policy: str = field("models/arith-policy", "the starting policy (v2: its demonstrations already hold "
                        "unneeded steps; the v1 results used the verbose start of make_verbose_policy)")
    prm: str = field("models/arith-prm", "PRM for the prm / clip / delta / clip_delta runs and best-of-N")
    orm: str = field("models/arith-orm", "ORM for the orm runs and best-of-N")
    jobs: int = field(2, "concurrent subprocesses (each OMP_NUM_THREADS=1)")
    stages: str = field("train,eval,bon,table,plot", "which stages to run (comma list; also: verbose)")
    out_dir: str = field("out/ablation", "run dirs, logs, evals (gitignored)")
    results_dir: str = field("results", "small outputs: tables, plots, samples")
    smooth: int = field(5, "plot: moving-average window over PPO steps for the rollout curves")
    tag: str = field("ablation", "results file prefix: RESULTS_DIR/<tag>.md, <tag>.json, <tag>_curves.png, ...")


def ppo_flags(cfg: Config) -> list[str]:
    """The settings shared by every run (only --reward, --seed, --eta and --out-dir vary)."""
    return [
        "--policy", cfg.policy, "--prm", cfg.prm, "--orm", cfg.orm,
        "--steps", str(cfg.steps), "--prompts-per-step", str(cfg.prompts_per_step),
        "--samples-per-prompt", str(cfg.samples_per_prompt), "--lr", str(cfg.lr), "--lam", str(cfg.lam),
        "--beta", str(cfg.beta), "--alpha", str(cfg.alpha), "--max-new-tokens", str(cfg.max_new_tokens),
        "--ppo-epochs", "2", "--minibatches", "2", "--temperature", "1.0", "--gamma", "1.0",
        "--eval-every", str(cfg.train_eval_every), "--eval-limit", str(cfg.train_eval_limit),
        "--save-every", "0", "--sample-every", "0", "--no-anneal-lr",  # constant lr, as in the paper
    ]


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
    """(name, mode, seed, eta) of every PPO run, seed-major so that a partial set has whole seeds."""
    out = []
    for seed in [int(s) for s in cfg.seeds.split(",")]:
        for mode in cfg.modes.split(","):
            out.append((f"{mode}_s{seed}", mode, seed, cfg.eta))
    if cfg.eta_sweep:
        seed = int(cfg.seeds.split(",")[0])
        for mode in ("clip", "clip_delta"):
            for eta in [float(e) for e in cfg.eta_sweep.split(",")]:
                if eta != cfg.eta:
                    out.append((f"{mode}_eta{eta:g}_s{seed}", mode, seed, eta))
    return out


def parallel(jobs: int, tasks: list):
    with ThreadPoolExecutor(jobs) as ex:
        for fut in [ex.submit(t) for t in tasks]:
            fut.result()


def train(cfg: Config):
    # 1. PPO runs, `jobs` at a time; finished runs are skipped.
    def task(name, mode, seed, eta):
        def go():
            run = os.path.join(cfg.out_dir, name)
            if os.path.exists(os.path.join(ROOT, run, "ckpt", "meta.json")):
                return
            if os.path.exists(os.path.join(ROOT, run)):
                shutil.rmtree(os.path.join(ROOT, run))  # a partial run: start over
            cmd = [PY, "ppo.py", *ppo_flags(cfg), "--reward", mode, "--seed", str(seed), "--eta", str(eta),
                   "--out-dir", run]
            s = sh(cmd, os.path.join(ROOT, cfg.out_dir, name + ".log"))
            print(f"train {name}: {s:.0f}s", flush=True)
        return go
    parallel(cfg.jobs, [task(*r) for r in run_names(cfg)])


def evaluate(cfg: Config, policy: str, name: str, samples: int, extra: list[str] = ()):
    out = os.path.join(cfg.out_dir, "eval", name)
    if os.path.exists(os.path.join(ROOT, out, "results.json")):
        return
    cmd = [PY, "evaluate.py", "--policy", policy, "--dataset", "arith", "--split", "test",
           "--eval-limit", str(cfg.eval_limit), "--samples", str(samples), "--temperature", "1.0",
           "--max-new-tokens", str(cfg.max_new_tokens), "--seed", "0", "--out-dir", out, *extra]
    s = sh(cmd, os.path.join(ROOT, cfg.out_dir, "eval", name + ".log"))
    print(f"eval {name}: {s:.0f}s", flush=True)


def evals(cfg: Config):
    # 2. evaluate.py on every finished run and on the starting policy.
    os.makedirs(os.path.join(ROOT, cfg.out_dir, "eval"), exist_ok=True)
    tasks = [lambda: evaluate(cfg, cfg.policy, "base", cfg.eval_samples)]
    for name, *_ in run_names(cfg):
        pol = os.path.join(cfg.out_dir, name, "ckpt", "policy")
        if os.path.exists(os.path.join(ROOT, cfg.out_dir, name, "ckpt", "meta.json")):
            tasks.append(lambda pol=pol, name=name: evaluate(cfg, pol, name, cfg.eval_samples))
        else:
            print(f"eval: {name} has no final checkpoint, skipped", flush=True)
    parallel(cfg.jobs, tasks)


def bon(cfg: Config):
    # 3. Best-of-N with the PRM and the ORM on the starting policy.
    os.makedirs(os.path.join(ROOT, cfg.out_dir, "eval"), exist_ok=True)
    evaluate(cfg, cfg.policy, f"base_bon{cfg.bon_n}", cfg.bon_n, ["--prm", cfg.prm, "--orm", cfg.orm])


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
]


def table(cfg: Config):
    # 4. Mean ± std over seeds per mode -> markdown + json.
    rows, js = [], {"config": vars(cfg), "modes": {}, "runs": {}}
    base = load(os.path.join(cfg.out_dir, "eval", "base", "results.json"))
    hdr = "| mode | seeds | " + " | ".join(h for _, h, _, _ in COLS) + " | paper greedy / sampling (MATH) |"
    rows += [hdr, "|" + "---|" * (len(COLS) + 3)]
    if base:
        cells = [f"{base[k] * sc:.{d}f}" for k, _, sc, d in COLS]
        rows.append(f"| base (start) | - | " + " | ".join(cells) + f" | {PAPER['base'][0]:.2f} / {PAPER['base'][1]:.2f} |")
        js["modes"]["base"] = {k: base[k] for k, *_ in COLS}
    groups: dict[str, list[dict]] = {}
    for name, mode, seed, eta in run_names(cfg):
        r = load(os.path.join(cfg.out_dir, "eval", name, "results.json"))
        if r is None:
            continue
        js["runs"][name] = {k: r[k] for k, *_ in COLS}
        key = mode if eta == cfg.eta else f"{mode} (eta={eta:g})"
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        cells, entry = [], {"n_seeds": len(rs)}
        for k, _, sc, d in COLS:
            m, s = mean_std([r[k] * sc for r in rs])
            cells.append(f"{m:.{d}f} ± {s:.{d}f}" if len(rs) > 1 else f"{m:.{d}f}")
            entry[k] = {"mean": m / sc, "std": s / sc}
        mode = key.split(" ")[0]
        paper = f"{PAPER[mode][0]:.2f} / {PAPER[mode][1]:.2f}" if " " not in key else ""
        rows.append(f"| {key} | {len(rs)} | " + " | ".join(cells) + f" | {paper} |")
        js["modes"][key] = entry
    n_prob = (base or {}).get("n_problems", "?")
    md = [f"PPO ablation on the arith world from {cfg.policy} ({cfg.steps} PPO steps x {cfg.prompts_per_step * cfg.samples_per_prompt}"
          f" rollouts); evaluate.py on {n_prob} arith test problems: greedy + {cfg.eval_samples} samples at T=1,"
          f" max {cfg.max_new_tokens} new tokens. Diagnostics over the greedy responses. mean ± std over seeds.", "",
          *rows, ""]
    b = load(os.path.join(cfg.out_dir, "eval", f"base_bon{cfg.bon_n}", "results.json"))
    if b:
        n = cfg.bon_n
        keys = ["greedy_accuracy", "sampling_accuracy", f"maj@{n}", f"pass@{n}"]
        bon_keys = sorted(k for k in b if k.startswith("best_of_n") and isinstance(b[k], (int, float)))
        md += [f"Best-of-{n} on the starting policy {cfg.policy} ({b['n_problems']} arith test problems, {n} samples at T=1):", "",
               "| metric | accuracy % |", "|---|---|"]
        md += [f"| {k} | {b[k] * 100:.1f} |" for k in keys + bon_keys if k in b]
        js["best_of_n"] = {k: b[k] for k in keys + bon_keys if k in b}
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
            ("eval/greedy_accuracy", f"greedy accuracy ({cfg.train_eval_limit} test problems)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    axes = axes.ravel()

    def smooth(xs: list[float], w: int) -> list[float]:  # trailing moving average
        return [sum(xs[max(0, i - w + 1):i + 1]) / len(xs[max(0, i - w + 1):i + 1]) for i in range(len(xs))]

    for i, mode in enumerate(cfg.modes.split(",")):
        runs = [read_metrics(os.path.join(cfg.out_dir, f"{mode}_s{s}", "metrics.jsonl")) for s in cfg.seeds.split(",")]
        runs = [r for r in runs if r]
        if not runs:
            continue
        for ax, (k, title) in zip(axes, keys):
            curves = [{m["step"]: m[k] for m in r if k in m} for r in runs]
            steps = sorted(set.intersection(*[set(c) for c in curves]))
            w = 1 if k.startswith("eval") else cfg.smooth
            for c in curves:
                ax.plot(sorted(c), smooth([c[s] for s in sorted(c)], w), color=f"C{i}", alpha=0.25, lw=0.8)
            ax.plot(steps, smooth([sum(c[s] for c in curves) / len(curves) for s in steps], w), color=f"C{i}",
                    lw=2, label=f"{mode} (n={len(runs)})", marker="o" if k.startswith("eval") else None)
            ax.set_title(title + (f", {w}-step moving avg" if w > 1 else ""), fontsize=9)
            ax.set_xlabel("PPO step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
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
    # Decoded greedy samples: prm next to clip_delta, the first problems.
    def samples(name):
        p = os.path.join(ROOT, cfg.out_dir, "eval", name, "samples.jsonl")
        return [json.loads(l) for l in open(p) if '"kind": "greedy"' in l] if os.path.exists(p) else []
    a, b = samples(f"prm_s{seed0}"), samples(f"clip_delta_s{seed0}")
    if a and b:
        md = [f"Greedy responses on the first arith test problems: `prm` (seed {seed0}) vs `clip_delta` (seed {seed0}).", ""]
        for x, y in list(zip(a, b))[:4]:
            md += [f"**Q:** {x['question']} (gold {x['gold']})", ""]
            for tag, r in (("prm", x), ("clip_delta", y)):
                md += [f"`{tag}`: correct={r['correct']}, {r['response_tokens']} tokens, {r['steps']} steps,"
                       f" {r['repeated_steps']} repeated, truncated={r['truncated']}", "", "```", r["response"], "```", ""]
        open(os.path.join(ROOT, cfg.results_dir, cfg.tag + "_samples.md"), "w").write("\n".join(md))
        print("wrote", os.path.join(cfg.results_dir, cfg.tag + "_samples.md"))


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


def main(argv=None):
    cfg = common.parse_config(Config, argv)
    os.makedirs(os.path.join(ROOT, cfg.out_dir), exist_ok=True)
    t0 = time.time()
    stages = cfg.stages.split(",")
    for st, fn in (("verbose", make_verbose_policy), ("train", train), ("eval", evals), ("bon", bon), ("table", table), ("plot", plot)):
        if st in stages:
            fn(cfg)
            print(f"== stage {st} done at {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    common.run_main(main)
