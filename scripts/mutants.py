"""
Mutation check: does the test suite catch known one-line bugs in the objective and the rewards?

Each mutant below is one exact text replacement in one file (a sign, a clip, a mask, an
off-by-one) plus the tests that should notice it. The tool applies each mutant to a scratch copy
of the checkout and runs those tests; a mutant the tests do not catch is a hole in the suite.
The README's method section and Gao et al. 2024 (arXiv 2410.15115) say what the correct code does.

Algorithm (the numbers match comments in the code)
  1. Copy the checkout: every file `git ls-files -co --exclude-standard` lists (tracked files and
     untracked, non-ignored ones, so tests being written now are included; models/ too, some tests
     load the shipped checkpoints) into a fresh temporary directory. Files are copied, not
     hard-linked, so nothing a test writes can reach the real checkout.
  2. Replace the mutant's `original` snippet, which must occur exactly once in its file, with
     `mutated`.
  3. Run `python -m pytest -q -x -p no:cacheprovider <tests>` in the copy with OMP_NUM_THREADS=1,
     killing the whole process group after --timeout seconds.
  4. Verdict from pytest's exit status: 1 (a test failed) = CAUGHT; 0 (all passed) = SURVIVED;
     anything else (snippet not found once, collection error, no tests selected, timeout) = ERROR.
     Print one line per mutant with the time taken and the first failing test; exit 1 when any
     mutant SURVIVED or ERRORed.

Commands
    python scripts/mutants.py --check          # every snippet still occurs exactly once (< 1 s)
    python scripts/mutants.py --list           # names, files, test selections
    python scripts/mutants.py --only ppo-clip-min --only ppo-value-clip-removed   # a few
    python scripts/mutants.py --only ppo-clip-min -k ppo_token_losses   # one, narrowed to one test (3 s)
    python scripts/mutants.py --jobs 2         # all of them (slow: a survivor runs its whole test file)

Expected: every mutant CAUGHT. After editing a function named below, run --check: a snippet that
no longer matches fails it (and is an ERROR in a run); update its `original` and `mutated` here.
Adding a mutant: append a Mutant(...) to MUTANTS with a selection as narrow as still catches it
(a test file, or a file plus "-k", "expr"); inject it by hand once to see which test fails.

NOTE: ../shared is not copied, so tests that read ../shared/data skip, as in a fresh clone.
NOTE: pytest exits 1 for an erroring test as well as a failing one; both count as CAUGHT.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Mutant:
    name: str  # short id for --only
    file: str  # path relative to the repository root
    original: str  # exact snippet; must occur exactly once in `file`
    mutated: str  # what replaces it
    tests: list  # pytest selection: test files, optionally followed by "-k", "expr"
    bug: str  # the bug in words (--list)


PYTEST_EXIT = {2: "interrupted, e.g. a collection error", 3: "internal error", 4: "usage error",
               5: "no tests selected"}

PPO, PRM, EVAL, REWARDS = ["test_ppo.py"], ["test_prm.py"], ["test_evaluate.py"], ["test_rewards.py"]
GRADING = ["test_grading.py"]

MUTANTS = [
    # ppo.py: the PPO loss
    Mutant("ppo-clip-min", "ppo.py",
           "pg_loss = torch.maximum(pg_loss1, pg_loss2)",
           "pg_loss = torch.minimum(pg_loss1, pg_loss2)",
           PPO, "PPO clip: min instead of max of the two policy-loss terms"),
    Mutant("ppo-ratio-inverted", "ppo.py",
           "ratio = torch.exp(logp - old_logp)",
           "ratio = torch.exp(old_logp - logp)",
           PPO, "importance ratio old / new instead of new / old"),
    Mutant("ppo-value-clip-removed", "ppo.py",
           "v_loss = 0.5 * torch.maximum(v_loss_unclipped, v_loss_clipped)",
           "v_loss = 0.5 * v_loss_unclipped",
           PPO, "value loss without the clipped term"),
    Mutant("ppo-loss-microbatch-mean", "ppo.py",
           'loss = (L["pg"].sum() + L["vf"].sum()) * rt.world_size / n_tok',
           'loss = (L["pg"].sum() + L["vf"].sum()) / ro.mask[r].sum().clamp(min=1)',
           PPO, "loss normalised per micro-batch instead of by the global minibatch's token count"),
    Mutant("ppo-grads-not-zeroed", "ppo.py",
           "optims[name].zero_grad(set_to_none=True)",
           "pass",
           PPO, "gradients accumulate across minibatches"),
    Mutant("ppo-grad-clip-removed", "ppo.py",
           "torch.nn.utils.clip_grad_norm_(models[name].parameters(), cfg.max_grad_norm)",
           "pass",
           PPO, "grad-norm clipping skipped"),
    # ppo.py: rollout, log-probs, rewards
    Mutant("ppo-ref-logp-from-policy", "ppo.py",
           "policy_logprobs(ref, ids[s], attn[s], P, cfg.temperature,",
           "policy_logprobs(policy, ids[s], attn[s], P, cfg.temperature,",
           PPO, "reference log-probs computed with the policy (KL always 0)"),
    Mutant("ppo-logp-ignores-temperature", "ppo.py",
           "temperature=max(temperature, 1e-6), entropy=entropy,",
           "temperature=1.0, entropy=entropy,",
           PPO, "log-probs at temperature 1 whatever the sampling temperature"),
    Mutant("ppo-logp-entropy-grad-sign", "ppo.py",
           "z, -bt[s, None], out=z)",
           "z, bt[s, None], out=z)",
           ["test_logprobs.py"], "the fused backward pushes the entropy bonus the wrong way"),
    Mutant("ppo-logp-grad-ignores-temperature", "ppo.py",
           "g_logp / temperature  # (n,) g_logp / T",
           "g_logp  # (n,) g_logp / T",
           ["test_logprobs.py"], "the fused backward forgets d(z / T) / dz = 1 / T"),
    Mutant("ppo-truncated-keeps-success", "rewards.py",
           "todo = [i for i, f in enumerate(finished) if f]",
           "todo = list(range(len(finished)))",
           REWARDS, "a truncated but correct response keeps its success reward (every stage's accuracy;"
           " ppo.score also zeroes it in rewards.apply_truncation, so test_ppo.py alone cannot see it)"),
    Mutant("ppo-alpha-ignored", "ppo.py",
           "values = cfg.alpha * values * kmask",
           "values = values * kmask",
           PPO, "learned reward not scaled by alpha"),
    Mutant("kl-sign", "ppo.py",
           "(score_rewards - beta * kl) * mask, kl",
           "(score_rewards + beta * kl) * mask, kl",
           PPO, "KL penalty added to the reward instead of subtracted"),
    # ppo.py: advantages
    Mutant("gae-gamma-dropped", "ppo.py",
           "rewards_[:, t] + gamma * nxt - values[:, t]",
           "rewards_[:, t] + nxt - values[:, t]",
           PPO, "GAE bootstrap V_{t+1} not discounted by gamma"),
    Mutant("gae-lambda-dropped", "ppo.py",
           "gamma * lam * last",
           "gamma * last",
           PPO, "GAE recursion without lambda"),
    Mutant("gae-returns-without-values", "ppo.py",
           "return adv, (adv + values) * m",
           "return adv, adv * m",
           PPO, "value targets = advantages instead of advantages + values"),
    Mutant("whiten-mean-over-padding", "ppo.py",
           "mean = s[0] / s[1].clamp(min=1)",
           "mean = x.mean()",
           PPO, "advantage whitening subtracts the mean over all entries, padding included"),
    Mutant("masked-mean-denominator", "ppo.py",
           "(x * mask).sum() / mask.sum().clamp(min=1)",
           "(x * mask).sum() / mask.numel()",
           PPO, "masked_mean divides by every entry instead of the valid ones"),
    # rewards.py: transforms and token placement
    Mutant("return-to-go-past-the-end", "rewards.py",
           "G_next = torch.cat([G[:, 1:], torch.zeros_like(G[:, :1])], dim=1)",
           "G_next = torch.cat([G[:, 1:], G[:, -1:]], dim=1)",
           REWARDS, "delta-keep / min: the last step's return-to-go taken from itself instead of 0"),
    Mutant("min-form-max", "rewards.py",
           ".cummin(dim=1)",
           ".cummax(dim=1)",
           REWARDS, "min-form credit uses the suffix max"),
    Mutant("softmin-sign", "rewards.py",
           "logits = (-x / temperature)",
           "logits = (x / temperature)",
           REWARDS, "softmin weights favour the largest scores"),
    Mutant("prm-normed-not-normed", "rewards.py",
           "return _masked(scores, mask) / n",
           "return _masked(scores, mask)",
           REWARDS, "prm_normed forgets to divide by the step count"),
    Mutant("lenpen-sign", "rewards.py",
           "scores.float() - penalty",
           "scores.float() + penalty",
           REWARDS, "the length penalty pays for every step"),
    Mutant("truncation-no-score-ignored", "rewards.py",
           'if policy == "no-score":',
           "if False:",
           REWARDS + PPO, "--truncation no-score keeps the learned terms of a cut response"),
    Mutant("logp-over-padding-rows", "ppo.py",
           "w, b = weight[:vocab_size].to(dt), None if bias is None else bias[:vocab_size].to(dt)  # (V, H), (V,)",
           "w, b = weight.to(dt), None if bias is None else bias.to(dt)  # (V, H), (V,)",
           ["test_logprobs.py"], "log-probs normalised over the embedding's padding rows the sampler never emits"),
    Mutant("clip-bound", "rewards.py",
           "torch.clamp(scores.float() - eta, max=0.0)",
           "torch.clamp(scores.float() - eta, min=0.0)",
           REWARDS, "Clip: max(x - eta, 0) instead of min(x - eta, 0)"),
    Mutant("delta-off-by-one", "rewards.py",
           "out = torch.where(idx == n - 2, x, out)",
           "out = torch.where(idx == n - 1, x, out)",
           REWARDS, "Delta keeps the last step's score instead of the second-to-last"),
    Mutant("place-success-off-by-one", "rewards.py",
           "last = (response_mask.long().sum(dim=1) - 1).clamp(min=0)",
           "last = response_mask.long().sum(dim=1).clamp(max=T - 1)",
           REWARDS, "success reward one token after the last response token"),
    Mutant("place-step-next-token", "rewards.py",
           "idx = step_end_idx.clamp(0, T - 1)",
           "idx = (step_end_idx + 1).clamp(0, T - 1)",
           REWARDS, "step reward on the token after the step's last character"),
    Mutant("step-end-token-off-by-one", "rewards.py",
           "if holds(mid, c):",
           "if holds(mid, c + 1):",
           REWARDS + ["test_qwen_vocab.py"], "step end mapped to the token after the one holding its last character"),
    Mutant("sample-unscaled-u", "common.py",
           "(u * cdf[:, -1])[:, None]",
           "u[:, None]",
           PPO, "u compared against a CDF that may end below 1: the last id is emitted"),
    Mutant("sample-row-budget-ignored", "common.py",
           "live &= ~done & (budgets[active] > t + 1)",
           "live &= ~done & (T > t + 1)",
           ["test_common.py", "-k", "sample"], "common.sample runs every row to the longest budget (labels: "
           "completions past their prefix's budget)"),
    Mutant("sample-noise-by-batch-position", "common.py",
           "u = torch.rand(n_rows, generator=gen, device=device)[rows[active]]",
           "u = torch.rand(n_rows, generator=gen, device=device)[active]",
           ["test_common.py", "-k", "sample"], "a row's noise depends on its place in the batch, not its global index"),
    Mutant("step-end-first-bytes", "rewards.py",
           "return len(prefix) >= c and prefix[c - 1] == text[c - 1]",
           "return len(prefix) >= c",
           ["test_qwen_vocab.py"], "a byte-split last character's reward lands on the token holding its first bytes"),
    Mutant("grader-comma-space-thousands", "grading.py",
           'if re.search(r",\\s", s):',
           "if False:",
           GRADING, "'32, 349' read as the number 32349"),
    # prm_train.py
    Mutant("prm-bce-padded-tags", "prm_train.py",
           "return (loss * tag_mask).sum()",
           "return loss.sum()",
           PRM, "PRM BCE summed over padded tag slots too"),
    Mutant("prm-hard-label-half", "prm_train.py",
           "float(y) if soft else float(y > 0)",
           "float(y) if soft else float(y >= 0.5)",
           PRM, "hard MC label thresholded at 0.5 instead of > 0"),
    Mutant("prm-mc-prefix-no-separator", "prm_train.py",
           "prefix = text[: ends[k]] + step_sep",
           "prefix = text[: ends[k]]",
           PRM, "MC rollout prefix built without the step separator"),
    # the implicit form (rewards.implicit_margins / implicit_input)
    Mutant("implicit-ratio-sign", "rewards.py",
           "cum = ((logp(model) - ref_logp) * keep).cumsum(1)",
           "cum = ((ref_logp - logp(model)) * keep).cumsum(1)",
           [PRM[0], "-k", "implicit"], "implicit margin uses log pi_ref / pi instead of log pi / pi_ref"),
    Mutant("implicit-prompt-counted", "rewards.py",
           "keep = (t >= start[:, None]) & attention_mask[:, 1:].bool()",
           "keep = attention_mask[:, 1:].bool()",
           [PRM[0], "-k", "implicit"], "implicit margin sums the prompt's log-ratios too"),
    Mutant("implicit-step-end-off-by-one", "rewards.py",
           "ends = [holding(e - 1) for e in char_ends]",
           "ends = [holding(e - 2) for e in char_ends]",
           [PRM[0], "-k", "implicit"], "implicit margin stops one token before the step's last token"),
    # common.generate (evaluate.py's responses)
    Mutant("eval-eos-dropped", "common.py",
           "Generation(toks[:end + 1], True)",
           "Generation(toks[:end], True)",
           EVAL, "EOS dropped from the response (and its token count)"),
    # the build's SFT snapshots and its pick of the start (scripts/build_arith.sh)
    Mutant("sft-snapshot-before-update", "sft.py",
           "        if step + 1 in cfg.save_steps and rt.master:",
           "        if step + 2 in cfg.save_steps and rt.master:",
           ["test_sft.py", "-k", "save_steps"], "--save-steps K saves the weights after update K - 1"),
    Mutant("pick-band-edge-open", "scripts/pick_policy.py",
           "if default in accuracies and low <= accuracies[default] <= high:",
           "if default in accuracies and low < accuracies[default] < high:",
           ["test_sft.py", "-k", "pick_policy_rule"], "a default on the band's edge is replaced"),
    Mutant("pick-farthest", "scripts/pick_policy.py",
           "return min(inside, key=lambda c: abs(accuracies[c] - target)) if inside else None",
           "return max(inside, key=lambda c: abs(accuracies[c] - target)) if inside else None",
           ["test_sft.py", "-k", "pick_policy_rule"], "the pick takes the candidate farthest from the target"),
    # the build's PRM snapshots and its pick of the PRM's training length
    Mutant("prm-snapshot-after-next-update", "prm_train.py",
           "        if step + 1 in cfg.save_steps and rt.master:\n            snapshot(step + 1)",
           "        if step in cfg.save_steps and rt.master:\n            snapshot(step)",
           ["test_prm.py", "-k", "save_steps"], "--save-steps K saves the weights after update K + 1"),
    Mutant("pick-prm-tie-last", "scripts/pick_prm.py",
           "key=lambda c: (aucs[c], -list(aucs).index(c))",
           "key=lambda c: (aucs[c], list(aucs).index(c))",
           ["test_prm.py", "-k", "pick_prm_rule"], "a tie goes to the last listed (not the full training)"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the mutants and exit")
    p.add_argument("--check", action="store_true",
                   help="only check that every original snippet occurs exactly once and the mutated file compiles")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run this mutant (repeatable)")
    p.add_argument("-k", dest="keyword", default="", metavar="EXPR",
                   help="narrow every selection with pytest -k EXPR (default: the mutant's own selection)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once (default: 1)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per mutant before ERROR (default: 1200)")
    p.add_argument("--keep", action="store_true", help="keep the scratch copies (their paths are printed)")
    args = p.parse_args(argv)
    names = {m.name for m in MUTANTS}
    unknown = [n for n in args.only if n not in names]
    if unknown:
        p.error(f"unknown mutant(s) {', '.join(unknown)}; see --list")
    return args


def read(root, rel):
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return f.read()


def mutate(source, m):
    """The mutated source, or an error string when the original does not occur exactly once."""
    n = source.count(m.original)
    if n != 1:
        return None, f"original snippet found {n} times in {m.file} (expected once): {m.original!r}"
    return source.replace(m.original, m.mutated), None


def check(mutants):
    """Each original occurs once, differs from its mutant, and the mutated file still compiles."""
    bad = 0
    for m in mutants:
        try:
            src, err = mutate(read(ROOT, m.file), m)
            if err is None and m.original == m.mutated:
                err = "mutated == original"
            if err is None:
                compile(src, m.file, "exec")
        except (OSError, SyntaxError) as e:
            err = f"{type(e).__name__}: {e}"
        print(f"{'ok' if err is None else 'FAIL':4} {m.name:30} {m.file}" + (f": {err}" if err else ""))
        bad += err is not None
    if len({m.name for m in MUTANTS}) != len(MUTANTS):
        print("FAIL duplicate mutant names")
        bad += 1
    print(f"{len(mutants) - bad}/{len(mutants)} snippets ok")
    return bad == 0


def copy_checkout(dst):
    """1. Tracked + untracked non-ignored files of the checkout -> dst (copies, not links)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):  # deleted in the working tree, or a submodule
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel))


def run_mutant(m, keyword, timeout, keep):
    """Steps 1-4 for one mutant -> (verdict, seconds, detail)."""
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix=f"mutant-{m.name}-")
    tree = os.path.join(tmp, os.path.basename(ROOT))
    try:
        copy_checkout(tree)
        # 2. apply the one replacement
        src, err = mutate(read(tree, m.file), m)
        if err:
            return "ERROR", time.time() - t0, err
        with open(os.path.join(tree, m.file), "w", encoding="utf-8") as f:
            f.write(src)
        # 3. run the selection; the process group goes down on timeout (tests start subprocesses)
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests]
        cmd += ["-k", keyword] if keyword else []
        proc = subprocess.Popen(cmd, cwd=tree, env=dict(os.environ, OMP_NUM_THREADS="1"), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return "ERROR", time.time() - t0, f"timeout after {timeout:.0f}s"
        # 4. verdict
        lines = log.strip().splitlines() or [""]
        if proc.returncode == 1:
            failed = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
            return "CAUGHT", time.time() - t0, (failed or lines)[0][:160]
        if proc.returncode == 0:
            return "SURVIVED", time.time() - t0, lines[-1]
        tail = "\n".join("    " + ln for ln in lines[-15:])
        why = PYTEST_EXIT.get(proc.returncode, "unexpected")
        return "ERROR", time.time() - t0, f"pytest exit {proc.returncode} ({why}):\n{tail}"
    finally:
        if keep:
            print(f"kept {tree}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:30} {m.file:13} {' '.join(m.tests):18} {m.bug}")
        return
    if args.check:
        sys.exit(0 if check(mutants) else 1)
    print(f"{len(mutants)} mutants, {args.jobs} at a time, timeout {args.timeout:.0f}s each", flush=True)
    results = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_mutant, m, args.keyword, args.timeout, args.keep): m for m in mutants}
        for fut in as_completed(futures):
            m = futures[fut]
            results[m.name] = verdict, secs, detail = fut.result()
            print(f"{verdict:8} {m.name:30} {secs:6.1f}s  {detail}", flush=True)
    counts = {v: sum(r[0] == v for r in results.values()) for v in ("CAUGHT", "SURVIVED", "ERROR")}
    print(" ".join(f"{v.lower()} {n}" for v, n in counts.items()) + f" of {len(mutants)}")
    for v in ("SURVIVED", "ERROR"):
        names = [m.name for m in mutants if results[m.name][0] == v]
        if names:
            print(f"{v.lower()}: {' '.join(names)}")
    sys.exit(1 if counts["SURVIVED"] or counts["ERROR"] else 0)


if __name__ == "__main__":
    main()
