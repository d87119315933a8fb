"""
Pick the arith starting policy on the validation split (scripts/build_arith.sh, stage 2).

Why: where arithmetic "clicks" during SFT is not a stable function of the step count. The same
command (sft.py, 1,350 steps at lr 3e-3, one thread) ends at 55% greedy validation accuracy on the
CPU that built the shipped policy and at 72% on another CPU, because float rounding differs
between CPUs and the high learning rate amplifies it. The paper's premise is a start inside the
30-70% band of its instruct models, so the build checks the band instead of trusting the count.

The rule (fixed before the rebuild that first used it; README "The arith world v3"):
  1. the default checkpoint (the end of the 1,350-step schedule) if its greedy accuracy on the
     whole validation split is inside [--low, --high];
  2. else the candidate (a snapshot saved along either SFT run by `sft.py --save-steps`, or the
     end of the 1,500-step run) inside the band whose accuracy is nearest --target; a tie goes to
     the one listed first;
  3. none inside: one error line with every accuracy (train longer or shorter by hand).
Only the default is evaluated when it passes, so on the machine that built the shipped assets the
rule costs one greedy pass and changes nothing.

The same script checks the reward models' base with a floor instead of a band (`--floor F`): the
base must read arithmetic at least as well as the shipped one (80.4% greedy on valid) for the
likelihood PRM built on it to separate right steps from wrong ones (README "Rebuilt on another
CPU": a 72% base gave a PRM at 0.83 within-problem AUC on valid, the 80% base 0.87 on the same labels).
  1. the default (the 1,500-step end) if its greedy accuracy is >= F;
  2. else the first candidate listed with accuracy >= F (the build's top-up snapshots, in step
     order: the least extra training that passes);
  3. else the most accurate checkpoint of all, with a warning (the world is weaker than documented);
  4. no candidates given and the default below F: exit code 3 and nothing written, so that the
     build runs the top-up only where it is needed. The chosen checkpoint is copied to --out-dir (a
kept default stays where it is) with selection.json: the rule, every accuracy measured, the pick.

Usage (build_arith.sh runs it; greedy over 500 problems took 4-5 s per checkpoint on one core):
    python scripts/pick_policy.py --default models/arith-policy \\
        --candidates out/sft-steps/policy-1100 out/sft-steps/policy-1200 models/arith-policy-v2 \\
        --out-dir models/arith-policy
"""
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402
import sft  # noqa: E402
from common import field, print0  # noqa: E402


@dataclass
class Config:
    default: str = field("models/arith-policy", "the checkpoint kept when it is inside the band")
    candidates: list[str] = field([], "checkpoints to choose from when the default is not")
    out_dir: str = field("models/arith-policy", "where the chosen checkpoint goes, with selection.json")
    dataset: str = field("arith", "dataset of the validation problems")
    split: str = field("valid", "the split the choice is made on (never test)")
    limit: int = field(0, "the first N problems of the split (0 = all; the build uses all)")
    low: float = field(0.30, "lower edge of the greedy-accuracy band")
    high: float = field(0.70, "upper edge of the band")
    target: float = field(0.50, "a candidate nearest this accuracy wins")
    floor: float = field(0.0, "> 0: the floor rule instead of the band (the reward models' base, docstring)")
    max_new_tokens: int = field(160, "generation budget (as sft.py and evaluate.py)")
    batch_size: int = field(250, "prompts per generate call")


def choose(accuracies, default, low, high, target):
    """The rule above on {checkpoint: greedy accuracy}; returns the chosen checkpoint, or None when
    nothing is inside [low, high]. Pure: test_sft.py pins it."""
    if default in accuracies and low <= accuracies[default] <= high:
        return default
    inside = [c for c, a in accuracies.items() if c != default and low <= a <= high]
    return min(inside, key=lambda c: abs(accuracies[c] - target)) if inside else None


def choose_floor(accuracies, default, floor):
    """The floor rule on {checkpoint: greedy accuracy} (listed order kept): the default when it is
    >= floor, else the first other checkpoint >= floor, else None. Pure: test_sft.py pins it."""
    if default in accuracies and accuracies[default] >= floor:
        return default
    return next((c for c, a in accuracies.items() if c != default and a >= floor), None)


BELOW_FLOOR = 3  # exit code: the default is below --floor and there was no candidate to take instead


def greedy_accuracy(path, problems, cfg):
    model_cfg = sft.Config(init=path, max_new_tokens=cfg.max_new_tokens)
    model, tokenizer = sft.load_model_and_tokenizer(model_cfg, "cpu")
    t0 = time.time()
    acc, _ = sft.accuracy(model, tokenizer, problems, cfg.max_new_tokens, batch_size=cfg.batch_size)
    print0(f"{path}: greedy {acc:.3f} on {len(problems)} {cfg.dataset}/{cfg.split} problems ({time.time() - t0:.0f} s)")
    return acc


def main(argv=None):
    cfg = common.parse_config(Config, argv)
    common.require(cfg.split != "test", "--split test: checkpoints are chosen on validation, never on test")
    common.require(0 <= cfg.floor <= 1, f"--floor {cfg.floor}: need 0 <= floor <= 1")
    common.require(0 <= cfg.low <= cfg.target <= cfg.high <= 1,
                   f"--low {cfg.low} --target {cfg.target} --high {cfg.high}: need 0 <= low <= target <= high <= 1")
    for path in [cfg.default] + cfg.candidates:
        common.require(os.path.isdir(path), f"{path}: no such checkpoint directory")
    problems = sft.load_split(cfg.dataset, cfg.split, cfg.limit or None)

    if cfg.floor > 0:
        rule, wanted = (lambda acc: choose_floor(acc, cfg.default, cfg.floor)), f">= {cfg.floor}"
    else:
        rule, wanted = (lambda acc: choose(acc, cfg.default, cfg.low, cfg.high, cfg.target)), f"inside [{cfg.low}, {cfg.high}]"

    # 1. the default; 2. the candidates only when it fails the rule
    accuracies = {cfg.default: greedy_accuracy(cfg.default, problems, cfg)}
    if rule(accuracies) is None:
        if cfg.floor > 0 and not cfg.candidates:  # floor rule 4.: the caller trains candidates
            print0(f"default below the floor {cfg.floor}: no candidates given (exit code {BELOW_FLOOR})")
            sys.exit(BELOW_FLOOR)
        print0(f"default not {wanted}: evaluating {len(cfg.candidates)} candidates")
        for path in cfg.candidates:
            accuracies[path] = greedy_accuracy(path, problems, cfg)
    chosen = rule(accuracies)
    if chosen is None and cfg.floor > 0:  # floor rule 3.
        chosen = max(accuracies, key=accuracies.get)
        print0(f"WARNING: no checkpoint reaches the floor {cfg.floor}: keeping the most accurate, {chosen} "
               f"({accuracies[chosen]:.3f}); the reward models built on it will be weaker than documented")
    if chosen is None:  # band rule 3.
        raise common.RunError(f"no checkpoint with greedy accuracy {wanted} on {cfg.split}: "
                              + ", ".join(f"{p} {a:.3f}" for p, a in accuracies.items()))

    # copy (a kept default that is already --out-dir stays), then selection.json
    if os.path.abspath(chosen) != os.path.abspath(cfg.out_dir):
        if os.path.isdir(cfg.out_dir):
            shutil.rmtree(cfg.out_dir)
        shutil.copytree(chosen, cfg.out_dir)
    record = {"chosen": chosen, "accuracy": accuracies[chosen], "rule": f"greedy accuracy {wanted}",
              "passed": rule(accuracies) is not None, "greedy_accuracy": accuracies,
              "n_problems": len(problems), "config": asdict(cfg), "command": "python " + " ".join(sys.argv)}
    common.atomic_write(os.path.join(cfg.out_dir, "selection.json"), json.dumps(record, indent=2).encode())
    print0(f"chosen {chosen} (greedy {accuracies[chosen]:.3f}) -> {cfg.out_dir}")


if __name__ == "__main__":
    common.run_main(main)
