"""Tests for sft.py (helpers against naive references, subprocess smoke runs) and the shipped
models/arith-policy checkpoint."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import common
import grading
import rewards
import sft

ROOT = os.path.dirname(os.path.abspath(__file__))
POLICY = os.path.join(ROOT, "models", "arith-policy")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.join(ROOT, "data", "arith", "tokenizer"))


def test_tokenize_example_masks_the_prompt(tok):
    ids, labels = sft.tokenize_example(tok, "Compute 1 + 2.", "1 + 2 = 3\n\nThe answer is \\boxed{3}.", 256)
    prompt = common.build_prompt(tok, "Compute 1 + 2.")
    n_prompt = len(prompt)  # char-level tokenizer
    assert len(ids) == len(labels) == n_prompt + len("1 + 2 = 3\n\nThe answer is \\boxed{3}.") + 1
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[:n_prompt]) == prompt
    assert sft.tokenize_example(tok, "Compute 1 + 2.", "x" * 300, 256) is None


def test_collate_right_pads():
    ex = [([5, 6, 7], [-100, 6, 7]), ([8, 9], [-100, 9])]
    input_ids, attn, labels = sft.collate(ex, pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert attn.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert labels.tolist() == [[-100, 6, 7], [-100, 9, -100]]


def test_sum_token_nll_matches_naive_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 6, -100, -100]])
    naive = 0.0
    for b in range(2):
        for t in range(4):  # position t predicts token t + 1
            if labels[b, t + 1] != -100:
                naive -= torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]].item()
    assert math.isclose(sft.sum_token_nll(logits, labels).item(), naive, rel_tol=1e-5)


def test_lr_schedule():
    cfg = sft.Config(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert math.isclose(sft.lr_at(0, cfg), 0.1) and math.isclose(sft.lr_at(9, cfg), 1.0)
    assert math.isclose(sft.lr_at(10, cfg), 1.0) and math.isclose(sft.lr_at(60, cfg), 0.55)
    assert math.isclose(sft.lr_at(110, cfg), 0.1)
    lrs = [sft.lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_config_flags():
    cfg = common.parse_config(sft.Config, ["--max-steps", "7", "--eval-only", "--init", "x"])
    assert (cfg.max_steps, cfg.eval_only, cfg.init) == (7, True, "x")
    with pytest.raises(SystemExit):
        common.parse_config(sft.Config, ["--max_steps", "7"])  # unknown flag (underscores) is an error
    with pytest.raises(SystemExit):
        common.parse_config(sft.Config, ["--no-such-flag", "1"])
    with pytest.raises(SystemExit):  # was silently False
        common.parse_config(sft.Config, ["--eval-only", "flase"])


def test_success_truncated_is_wrong():
    """sft's accuracy is rewards.success_rewards: EOS and the right answer."""
    assert rewards.success_rewards(["1 + 2 = 3\n\nThe answer is \\boxed{3}."], ["3"], [True]) == [1.0]
    assert rewards.success_rewards(["1 + 2 = 3\n\nThe answer is \\boxed{3}."], ["3"], [False]) == [0.0]
    assert rewards.success_rewards(["The answer is \\boxed{4}."], ["3"], [True]) == [0.0]


def test_accuracy_batched_greedy_equals_one_by_one(tiny_model_dir):
    """Left padding in a batch must not change a greedy continuation (sft.accuracy, batches of 3 vs 1)."""
    model = common.load_model(tiny_model_dir)
    tk = common.load_tokenizer(tiny_model_dir)
    problems = [{"question": q, "answer": "3"} for q in
                ["Compute 1 + 2.", "Compute 45 - 67 + 891 - 2 + 33.", "Compute 9 - 9 - 9."]]
    _, batched = sft.accuracy(model, tk, problems, max_new_tokens=12, batch_size=3)
    single = [sft.accuracy(model, tk, [p], max_new_tokens=12, batch_size=1)[1][0] for p in problems]
    assert batched == single


def run_sft(args, torchrun=False):
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "sft.py"] if torchrun
           else [sys.executable, "sft.py"]) + args
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


TINY = ["--init", "scratch", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-inner", "64",
        "--max-steps", "4", "--batch-size", "8", "--micro-batch-size", "2", "--warmup-steps", "2",
        "--eval-limit", "3", "--max-new-tokens", "8", "--eval-every", "2"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft-smoke") / "ckpt"
    run_sft(TINY + ["--out-dir", str(out)])
    return out


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_smoke_saves_loadable_checkpoint(smoke_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = smoke_run
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "eval/greedy_accuracy" in r] == [2, 4]
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["max_steps"] == 4 and meta["config"]["n_embd"] == 32 and meta["step"] == 4
    model = AutoModelForCausalLM.from_pretrained(out)
    tk = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 32
    assert (model.generation_config.pad_token_id, model.generation_config.eos_token_id) == (0, 1)
    enc = tk([common.build_prompt(tk, "Compute 1 + 2.")], return_tensors="pt", add_special_tokens=False)
    seq = model.generate(**enc, max_new_tokens=5)
    assert seq.shape[1] <= enc["input_ids"].shape[1] + 5


def test_scratch_qwen2_builds_and_runs(tok):
    cfg = sft.Config(arch="qwen2", n_layer=1, n_embd=32, n_head=2, n_inner=64)
    model = sft.build_scratch_model(cfg, tok)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == len(tok)
    ids, labels = sft.tokenize_example(tok, "Compute 1 + 2.", "1 + 2 = 3", 256)
    input_ids, attn, labels = sft.collate([(ids, labels)], tok.pad_token_id)
    assert torch.isfinite(sft.sum_token_nll(model(input_ids=input_ids, attention_mask=attn).logits, labels))


def test_qwen2_checkpoint_reloads_the_char_tokenizer_unchanged(tok, tmp_path):
    """transformers 5 would reload a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which drops the
    spaces of our char vocabulary; common.load_tokenizer (used by every stage) keeps it as saved."""
    cfg = sft.Config(arch="qwen2", n_layer=1, n_embd=32, n_head=2, n_inner=64)
    sft.build_scratch_model(cfg, tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    text = "Q: Compute 12 + 3.\nA: 12 + 3 = 15\n\nThe answer is \\boxed{15}."
    tk = common.load_tokenizer(str(tmp_path))
    ids = tk(text, add_special_tokens=False)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"] and tk.decode(ids) == text


def test_sft_fine_tunes_a_pretrained_path_and_is_deterministic(tiny_model_dir, tmp_path):
    """--init <path>: the same seed gives bit-identical weights (CPU)."""
    from safetensors.torch import load_file

    args = ["--init", tiny_model_dir, "--max-steps", "2", "--batch-size", "4", "--micro-batch-size", "4",
            "--eval-every", "0", "--eval-limit", "2", "--max-new-tokens", "4"]
    sft.main(args + ["--out-dir", str(tmp_path / "a")])
    sft.main(args + ["--out-dir", str(tmp_path / "b")])
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    base = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], base[k]) for k in a)  # it did train


def test_save_steps_snapshot_is_the_model_after_that_step(tiny_model_dir, tmp_path):
    """--save-steps 2 in a 4-step run saves the weights after update 2: the final weights of a run
    stopped at step 2 (inside the warmup the learning rate does not depend on --max-steps, and the
    data order does not either)."""
    from safetensors.torch import load_file

    args = ["--init", tiny_model_dir, "--batch-size", "4", "--micro-batch-size", "4", "--warmup-steps", "10",
            "--eval-every", "0", "--eval-limit", "2", "--max-new-tokens", "4"]
    sft.main(args + ["--max-steps", "4", "--save-steps", "2", "--out-dir", str(tmp_path / "long")])
    sft.main(args + ["--max-steps", "2", "--out-dir", str(tmp_path / "short")])
    snap = load_file(tmp_path / "long" / "step-2" / "model.safetensors")
    short = load_file(tmp_path / "short" / "model.safetensors")
    final = load_file(tmp_path / "long" / "model.safetensors")
    assert all(torch.equal(snap[k], short[k]) for k in snap)
    assert any(not torch.equal(snap[k], final[k]) for k in snap)  # steps 3-4 moved on from it
    assert (tmp_path / "long" / "step-2" / "tokenizer.json").exists()
    meta = json.loads((tmp_path / "long" / "step-2" / "meta.json").read_text())  # what made it
    assert meta["step"] == 2 and meta["metrics"]["step"] == 2 and meta["config"]["max_steps"] == 4
    assert common.load_model(str(tmp_path / "long" / "step-2")).generation_config.pad_token_id is not None
    with pytest.raises(common.RunError, match="--save-steps"):
        sft.main(args + ["--max-steps", "4", "--save-steps", "4", "--out-dir", str(tmp_path / "bad")])


def test_pick_policy_rule():
    """scripts/pick_policy.choose: the default when it is inside the band; else the candidate inside
    nearest the target (first listed on a tie); None when nothing is inside."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from pick_policy import choose

    band = dict(low=0.3, high=0.7, target=0.5)
    assert choose({"d": 0.55, "a": 0.50}, "d", **band) == "d"        # inside: kept, even if another is nearer
    assert choose({"d": 0.30, "a": 0.50}, "d", **band) == "d"        # the edges belong to the band
    assert choose({"d": 0.72, "a": 0.45, "b": 0.58, "c": 0.50}, "d", **band) == "c"
    assert choose({"d": 0.20, "a": 0.75, "b": 0.66}, "d", **band) == "b"   # the one inside, far or not
    assert choose({"d": 0.72, "a": 0.45, "b": 0.55}, "d", **band) == "a"   # a tie: the first listed
    assert choose({"d": 0.72, "a": 0.71, "b": 0.10}, "d", **band) is None
    assert choose({"d": 0.72}, "d", **band) is None                   # candidates not evaluated yet


def test_pick_policy_keeps_or_copies_and_says_why(tiny_model_dir, tmp_path):
    """End to end on a tiny random model (greedy accuracy 0 with 4 tokens): a band that holds 0 keeps
    the default in place; a band that starts above 0 is one error line naming each accuracy; a
    default outside it and a candidate inside it (the shipped policy) copies the candidate to --out-dir."""
    import shutil

    script = os.path.join(ROOT, "scripts", "pick_policy.py")
    default = tmp_path / "default"
    shutil.copytree(tiny_model_dir, default)
    base = [sys.executable, script, "--default", str(default), "--max-new-tokens", "4"]
    run = lambda *a: subprocess.run(base + list(a), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)

    res = run("--low", "0", "--target", "0", "--out-dir", str(default))
    assert res.returncode == 0, res.stderr[-2000:]
    sel = json.loads((default / "selection.json").read_text())
    assert sel["chosen"] == str(default) and sel["greedy_accuracy"] == {str(default): 0.0} and sel["n_problems"] == 500

    res = run("--candidates", tiny_model_dir, "--out-dir", str(tmp_path / "out"))
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and last.startswith("error: no checkpoint inside the greedy band [0.3, 0.7]")
    assert f"{tiny_model_dir} 0.000" in last and not (tmp_path / "out").exists()

    res = run("--candidates", tiny_model_dir, "--low", "0.0", "--target", "0.0", "--out-dir", str(tmp_path / "out"),
              "--split", "test")
    assert res.returncode == 2 and "never on test" in res.stderr

    # the shipped policy reads arithmetic, the tiny default does not: the candidate is copied over
    res = run("--candidates", POLICY, "--low", "0.05", "--high", "1", "--target", "1", "--limit", "20",
              "--max-new-tokens", "160", "--out-dir", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-2000:]
    sel = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert sel["chosen"] == POLICY and sel["greedy_accuracy"][str(default)] == 0.0 and sel["accuracy"] > 0.05
    shipped = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert shipped == open(os.path.join(POLICY, "model.safetensors"), "rb").read()


def test_eval_only_reports_greedy_and_sampling(tiny_model_dir, tmp_path):
    sft.main(["--eval-only", "--init", tiny_model_dir, "--eval-limit", "3", "--eval-samples", "2",
              "--max-new-tokens", "4", "--out-dir", str(tmp_path)])
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["eval/n"] == 3 and row["eval/samples"] == 2
    assert row["eval/greedy_accuracy"] == 0.0 and row["eval/sampling_accuracy"] == 0.0  # 4 tokens cannot finish
    assert row["eval/greedy_truncated"] == 1.0
    assert not (tmp_path / "model.safetensors").exists()


def test_sft_torchrun_two_processes_gloo(smoke_run, tmp_path):
    """2 ranks x 2 micro-batches = the same global batch and update as 1 process x 4 micro-batches."""
    out = tmp_path / "ddp"
    res = run_sft(TINY + ["--out-dir", str(out), "--device", "cpu"], torchrun=True)
    assert "per rank: 4 sequences/step = 2 micro-batches of 2" in res.stdout
    assert (out / "model.safetensors").exists() and (out / "meta.json").exists()
    single, ddp = read_metrics(smoke_run), read_metrics(out)
    assert [r["step"] for r in ddp] == [r["step"] for r in single]
    for a, b in zip(single, ddp):
        assert math.isclose(a["train/loss"], b["train/loss"], rel_tol=1e-4), (a, b)


# -----------------------------------------------------------------------------
# the shipped policy

@pytest.mark.skipif(not os.path.isdir(POLICY), reason="models/arith-policy not built yet")
def test_shipped_policy_loads_and_answers_in_boxed_form():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    size = sum(os.path.getsize(os.path.join(POLICY, f)) for f in os.listdir(POLICY))
    assert size < 10e6, f"models/arith-policy is {size / 1e6:.1f} MB"
    model = AutoModelForCausalLM.from_pretrained(POLICY)
    tk = AutoTokenizer.from_pretrained(POLICY)
    problems = common.load_problems("arith", "test", limit=8)
    prompts = [common.build_prompt(tk, p["question"]) for p in problems]
    enc = tk(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    seq = model.generate(**enc)  # plain generate: generation_config is greedy, max_new_tokens 160
    n_correct = 0
    for p, row in zip(problems, seq[:, enc["input_ids"].shape[1]:].tolist()):
        assert tk.eos_token_id in row, "response hit the length limit"
        text = tk.decode(row, skip_special_tokens=True)
        assert grading.extract_answer(text) is not None and "\\boxed{" in text, text
        assert len(rewards.split_steps(text)) >= 2, text
        n_correct += grading.is_correct(text, p["answer"])
    assert 0 < n_correct < len(problems) or len(problems) < 8  # neither solved nor hopeless
    meta = json.loads(open(os.path.join(POLICY, "meta.json")).read())
    assert meta["config"]["init"] == "scratch"
