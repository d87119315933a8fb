"""
Pick how long the arith PRM trains, on the validation split (scripts/build_arith.sh, stage 4).

Why: the PRM is judged by how well it ranks the start policy's own answers to one question (the
within-problem AUC, the figure best-of-N and RL depend on), and how far training helps that
ranking is not stable. The likelihood PRM starts from its base's own step log-likelihoods, which
already rank well. On the CPU that built the previous shipped PRM, its 3 epochs on the Monte-Carlo
labels added a little (0.890 -> 0.894 valid AUC). On the AMD machine that built the shipped one,
from a base trained by the same command, every amount of training measured lowered it (0.869
before training, 0.781 / 0.770 / 0.816 / 0.829 after 150 / 450 / 900 / 1,334 steps), so the
shipped PRM is step 0 (README "Rebuilt on another CPU"). So the build saves snapshots along the run
(prm_train.py --save-steps, step 0 = --init with the fitted scale) and keeps the best on valid
instead of trusting the epoch count.

The rule (fixed before the rebuild that first used it):
  1. sample the start policy's answers to every validation problem: evaluate.py's table settings
     (--samples 8 --temperature 0.5 --seed 0; greedy answers are not used);
  2. score them with each candidate (evaluate.py's min over steps) and take its within-problem AUC
     (evaluate.within_problem_auc: right vs wrong answers to one question, problems with both);
  3. keep the candidate with the highest AUC; a tie goes to the one listed first (the build lists
     the end of the run first, so a tie keeps the full training).
The chosen checkpoint is copied to --out-dir (one already there stays) with selection.json: the
rule, every candidate's AUC and best-of-8 accuracy, the pick.

Usage (build_arith.sh runs it; sampling 4,000 answers took about 1 min, scoring about 25 s per
candidate, one core):
    python scripts/pick_prm.py --policy models/arith-policy --candidates models/arith-prm \\
        out/prm-steps/step-0 out/prm-steps/step-445 --out-dir models/arith-prm
"""
import os
import sys
import tempfile
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402
import evaluate  # noqa: E402
import rewards  # noqa: E402
from common import field, print0  # noqa: E402
from pick_policy import install  # noqa: E402  (scripts/ is this file's folder: on sys.path when run)


@dataclass
class Config:
    policy: str = field("models/arith-policy", "the start policy whose answers the PRM must rank")
    candidates: list[str] = field([], "PRM checkpoints (prm_train.py's end and its --save-steps snapshots); "
                                      "a tie goes to the one listed first")
    out_dir: str = field("models/arith-prm", "where the chosen checkpoint goes, with selection.json")
    samples_file: str = field("", "score this evaluate.py samples.jsonl instead of sampling ('' = sample)")
    dataset: str = field("arith", "dataset of the validation problems")
    split: str = field("valid", "the split the choice is made on (never test)")
    samples: int = field(8, "answers per problem")
    temperature: float = field(0.5, "sampling temperature (evaluate.py's table setting)")
    seed: int = field(0, "sampling seed")
    limit: int = field(0, "the first N problems of the split (0 = all; the build uses all)")


def choose(aucs):
    """{candidate: AUC or None} in listed order -> the highest AUC, the first listed on a tie; None
    when no candidate has one. Pure: test_prm.py pins it."""
    scored = [c for c, a in aucs.items() if a is not None]
    return max(scored, key=lambda c: (aucs[c], -list(aucs).index(c))) if scored else None


def sample_answers(cfg, scratch):
    """Step 1: evaluate.py's sampler and grader -> its samples.jsonl records (kind "sample")."""
    evaluate.main(["--policy", cfg.policy, "--dataset", cfg.dataset, "--split", cfg.split, "--no-greedy",
                   "--samples", str(cfg.samples), "--temperature", str(cfg.temperature), "--seed", str(cfg.seed),
                   "--eval-limit", str(cfg.limit), "--out-dir", scratch])
    return os.path.join(scratch, "samples.jsonl")


def rank_quality(path, groups):
    """Step 2: (within-problem AUC, best-of-N accuracy) of one PRM on the grouped sample records."""
    rm = rewards.load_reward_model_or_exit(path, "prm", device="cpu")
    flat = [r for g in groups for r in g]
    scores = iter(rewards.score_responses(rm, [r["question"] for r in flat], [r["response"] for r in flat],
                                          batch_size=64))
    agg = [[evaluate.aggregate_prm(next(scores), "min") for _ in g] for g in groups]
    correct = [[bool(r["correct"]) for r in g] for g in groups]
    auc, n = evaluate.within_problem_auc(agg, correct)
    best = sum(c[evaluate.best_of_n(s)] for s, c in zip(agg, correct)) / len(groups)
    print0(f"{path}: within-problem AUC {auc if auc is None else round(auc, 4)} over {n} problems, "
           f"best-of-{len(groups[0])} {best:.3f}")
    return auc, best


def main(argv=None):
    cfg = common.parse_config(Config, argv)
    common.require(cfg.split != "test", "--split test: the PRM's training length is chosen on validation, never on test")
    common.require(cfg.candidates, "--candidates: give at least one PRM checkpoint")
    for path in cfg.candidates:
        common.require(os.path.isdir(path), f"{path}: no such checkpoint directory")
    with tempfile.TemporaryDirectory() as scratch:
        path = cfg.samples_file or sample_answers(cfg, scratch)
        common.require(os.path.isfile(path), f"--samples-file {path}: not found (an evaluate.py samples.jsonl)")
        groups = {}
        for r in common.read_jsonl(path):
            if r["kind"] == "sample":
                groups.setdefault(r["problem"], []).append(r)
    groups = list(groups.values())
    common.require(groups, f"{path}: no sampled answers (evaluate.py --samples > 0)")

    quality = {c: rank_quality(c, groups) for c in cfg.candidates}
    chosen = choose({c: q[0] for c, q in quality.items()})
    if chosen is None:
        raise common.RunError("no problem has both a right and a wrong answer among the samples: "
                              "the within-problem AUC is undefined, nothing to choose by")

    install(chosen, cfg.out_dir, {"chosen": chosen, "within_problem_auc": {c: q[0] for c, q in quality.items()},
                                  "best_of_n": {c: q[1] for c, q in quality.items()}, "n_problems": len(groups),
                                  "config": asdict(cfg)})
    print0(f"chosen {chosen} (within-problem AUC {quality[chosen][0]:.4f}) -> {cfg.out_dir}")


if __name__ == "__main__":
    common.run_main(main)
