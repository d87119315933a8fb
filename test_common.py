"""Tests for common.py, the shared plumbing: config parsing (one boolean syntax, unknown flags,
--help), RunError's one-line exit, the runtime (device, dtype, gloo), model / tokenizer loading
errors, problem files, generation against naive greedy and plain-softmax decoding loops, and
metrics.jsonl."""

import contextlib
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

import common
import grading
from common import RunError, field
from conftest import ARITH_TOKENIZER, ROOT, build_tiny_model


@dataclass
class Cfg:
    """A tiny stage for the parser tests."""
    flag: bool = field(True, "a switch that starts on")
    other: bool = field(False, "a switch that starts off")
    n_steps: int = field(3, "how many steps")
    lr: float = field(0.5, "learning rate")
    name: str = field("x", "a name")
    limit: Optional[int] = field(None, "an optional count")
    mode: str = field("a", "a mode", choices=["a", "b"])
    paths: list = field([], "some paths")


def parse(argv, **kw):
    return common.parse_config(Cfg, argv, **kw)


# -----------------------------------------------------------------------------
# 1. config parsing

def test_parse_config_types_defaults_and_given():
    assert parse([]) == Cfg()
    cfg = parse(["--n-steps", "7", "--lr", "1e-3", "--name", "y", "--limit", "4", "--mode", "b",
                 "--paths", "p", "q"])
    assert (cfg.n_steps, cfg.lr, cfg.name, cfg.limit, cfg.mode, cfg.paths) == (7, 1e-3, "y", 4, "b", ["p", "q"])
    assert parse(["--limit", "none"]).limit is None
    assert Cfg().paths is not Cfg().paths  # a fresh list per instance
    cfg, given = parse(["--n-steps", "7", "--no-flag"], with_given=True)
    assert (cfg.n_steps, cfg.flag, given) == (7, False, {"n_steps", "flag"})


@pytest.mark.parametrize("argv,flag,other", [
    (["--no-flag", "--other"], False, True),  # the one documented syntax
    (["--flag", "false", "--other", "true"], False, True),  # backward compatible words
    (["--flag=no", "--other=1"], False, True),
    (["--other", "--flag"], True, True),
    (["--other", "FALSE"], True, False),
])
def test_booleans(argv, flag, other):
    cfg = parse(argv)
    assert (cfg.flag, cfg.other) == (flag, other)


@pytest.mark.parametrize("argv", [
    ["--other", "flase"],  # sft.py used to read this as False
    ["--other=maybe"],
    ["--no-other", "false"],
    ["--no-other=1"],
    ["--nope", "1"],  # unknown
    ["--n_steps", "7"],  # underscores are not the flag
    ["--n-step", "7"],  # abbreviations are errors too
    ["--n-steps", "1.5"],
    ["--mode", "c"],
    ["--paths"],
])
def test_bad_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_boolean_word_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse(["--other", "flase"])
    err = capsys.readouterr().err
    assert "--other" in err and "'flase'" in err and "--no-other" in err


def test_help_lists_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in ("--flag, --no-flag a switch that starts on (default: True)", "--other, --no-other",
                 "how many steps (default: 3)", "learning rate (default: 0.5)", "a name (default: 'x')",
                 "an optional count (default: None)", "{a,b}", "some paths (default: [])"):
        assert text in out, text
    assert out.count("(default: True)") == 1  # not repeated by BooleanOptionalAction


def test_description_defaults_to_the_module_docstring(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    assert "Tests for common.py, the shared plumbing" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse(["--help"], description="my stage")
    assert "my stage" in capsys.readouterr().out


def test_a_field_without_help_is_refused():
    @dataclass
    class Bad:
        x: int = 1

    with pytest.raises(TypeError, match="Bad.x has no help"):
        common.parse_config(Bad, [])


# -----------------------------------------------------------------------------
# 2. RunError and run_main

SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import common

def main(argv=None):
    cfg = common.parse_config(Cfg, argv)
    print("started", flush=True)
    raise common.RunError(f"policy {{cfg.policy!r}} not found: train it with sft.py")

from dataclasses import dataclass

@dataclass
class Cfg:
    policy: str = common.field("models/x", "policy dir")

if __name__ == "__main__":
    common.run_main(main)
"""


def test_run_error_is_one_line_on_stderr_with_exit_code_2(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT.format(root=ROOT))
    res = subprocess.run([sys.executable, str(script), "--policy", "nope"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2
    assert res.stderr == "error: policy 'nope' not found: train it with sft.py\n"
    assert res.stdout == "started\n"


def test_run_main_interrupt_and_bugs(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        common.run_main(interrupted)
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted\n"

    def bug(argv):
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        common.run_main(bug)
    common.run_main(lambda argv: None)  # success: no exit


# -----------------------------------------------------------------------------
# 3. runtime

def test_setup_runtime_cpu_and_seed(capsys):
    rt = common.setup_runtime("cpu", seed=3)
    got = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(got, torch.rand(4))
    assert (rt.rank, rt.world_size, rt.local_rank, rt.master, rt.device) == (0, 1, 0, True, "cpu")
    assert (rt.bf16, rt.dtype) == (False, torch.float32) and isinstance(rt.amp, contextlib.nullcontext)
    assert "device cpu x 1 rank(s): fp32 (CPU" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_setup_runtime_errors():
    with pytest.raises(RunError, match="--device cuda: no CUDA GPU"):
        common.setup_runtime("cuda")
    with pytest.raises(RunError, match="no CUDA GPU"):
        common.setup_runtime("cuda:1")
    with pytest.raises(RunError, match="expected auto, cpu, cuda or cuda:N"):
        common.setup_runtime("tpu")
    with pytest.raises(RunError, match="bfloat16"):
        common.setup_runtime("cpu", dtype="bfloat16")
    assert common.setup_runtime("auto").device == "cpu"


def test_setup_runtime_under_torchrun_env_uses_gloo_on_cpu(monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)
    rt = common.setup_runtime("cpu")
    try:
        assert torch.distributed.get_backend() == "gloo" and (rt.rank, rt.world_size, rt.master) == (0, 1, True)
        common.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_print0_only_on_rank_0(monkeypatch, capsys):
    common.print0("a", 1)
    monkeypatch.setenv("RANK", "1")
    common.print0("b", 2)
    assert capsys.readouterr().out == "a 1\n"


# -----------------------------------------------------------------------------
# 4. models, tokenizers, files

def test_load_model_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network: fail fast
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "empty").mkdir()
    hint = "train it with sft.py"
    for path in (str(tmp_path / "nope"), "./nope", "models/arith-polcy", "a/b/c", ""):
        with pytest.raises(RunError) as e:
            common.load_model(path, "policy", hint)
        assert str(e.value) == f"policy {path!r} not found: {hint}"
    with pytest.raises(RunError, match=r"^cannot load policy from 'empty' \(.*\): train it with sft.py$"):
        common.load_model("empty", "policy", hint)
    # a bare name or org/name is a hub id (ppo.py used to refuse `--policy gpt2`); offline it fails
    # with the hub's reason, not as a missing local path
    assert common.model_source("gpt2", "policy", hint) == "gpt2"
    assert common.model_source("Qwen/Qwen2.5-Math-1.5B-Instruct", "policy", hint) == "Qwen/Qwen2.5-Math-1.5B-Instruct"
    with pytest.raises(RunError, match=r"^cannot load tokenizer from 'no-such-model-xyz' \("):
        common.load_tokenizer("no-such-model-xyz")


def test_load_model_and_tokenizer_of_a_checkpoint(tiny_model_dir):
    from transformers import AutoModelForTokenClassification

    model = common.load_model(tiny_model_dir, "policy", "-", dtype=torch.float32)
    tok = common.load_tokenizer(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == len(tok)
    critic = common.load_model(tiny_model_dir, "critic", "-", cls=AutoModelForTokenClassification, num_labels=1)
    assert critic.score.out_features == 1
    assert common.model_eos_ids(model, tok) == {tok.eos_token_id}


def test_qwen2_checkpoint_keeps_the_saved_char_tokenizer(tmp_path):
    """transformers 5 reloads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which drops the
    spaces of our character vocabulary; load_tokenizer keeps the class it was saved with."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(ARITH_TOKENIZER)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    text = "Q: Compute 12 + 3.\nA: 12 + 3 = 15\n\nThe answer is \\boxed{15}."
    tk = common.load_tokenizer(str(tmp_path))
    ids = tk(text, add_special_tokens=False)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"] and tk.decode(ids) == text


def test_no_dropout():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.3), torch.nn.Sequential(torch.nn.Dropout(0.1)))
    assert all(d.p == 0.0 for d in common.no_dropout(m).modules() if isinstance(d, torch.nn.Dropout))


def test_read_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert common.read_jsonl(p) == [{"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: not valid JSON"):
        common.read_jsonl(p)


# -----------------------------------------------------------------------------
# 5. generation vs naive decoding loops (one full forward per token, no cache, no padding)

PROMPTS = ["Question: Compute 12 + 7.\nAnswer: ", "Question: 3 * 4?\nAnswer: ", "Q: 1\nA: "]


@pytest.fixture(scope="module")
def model_tok(tmp_path_factory):
    """A tiny random model whose checkpoint asks for repetition_penalty 1.5 and top_k 1 (Qwen
    checkpoints ship such defaults); generate must not apply them. NOTE: the output head is untied
    and random: with tied embeddings a random model's greedy output just repeats the last token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path_factory.mktemp("gen-model"), seed=3)
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    head = torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.2
    model.lm_head.weight, model.config.tie_word_embeddings = torch.nn.Parameter(head), False
    g = model.generation_config
    g.repetition_penalty, g.top_k, g.do_sample, g.temperature = 1.5, 1, True, 1.0
    return model, tok


@torch.no_grad()
def naive_decode(model, ids, n, pick, rows=1):
    """n tokens appended one at a time from a full forward of the unpadded sequence, for `rows`
    copies of the prompt at once. Returns the first row's tokens (rows=1) or every row's."""
    ids = torch.tensor([ids] * rows)  # (R, L)
    out = []
    for _ in range(n):
        tok = pick(model(input_ids=ids).logits[:, -1].float())  # (R,)
        out.append(tok.tolist())
        ids = torch.cat([ids, tok[:, None]], 1)
    per_row = [list(r) for r in zip(*out)]
    return per_row[0] if rows == 1 else per_row


def greedy(logits):
    return logits.argmax(-1)


def test_generate_greedy_is_argmax_whatever_the_checkpoint_and_padding(model_tok):
    model, tok = model_tok
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    want = [naive_decode(model, x, 12, greedy) for x in ids]
    got = common.generate(model, tok, PROMPTS, 12, batch_size=3, eos_ids={len(tok) + 5})  # one left-padded batch
    assert [g.tokens for g in got] == want and not any(g.finished for g in got)
    assert common.generate(model, tok, ids[::-1], 12, batch_size=2, sort=False, eos_ids={len(tok) + 5}) == \
        [(w, False) for w in want[::-1]]
    assert model.generation_config.repetition_penalty == 1.5  # the checkpoint's config is restored


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generate_samples_from_the_plain_softmax(model_tok, temperature):
    """Same seed, same draws as torch.multinomial on softmax(logits / T): no top-k, no penalty."""
    model, tok = model_tok
    ids = tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    torch.manual_seed(11)
    want = naive_decode(model, ids, 16, lambda lg: torch.multinomial(torch.softmax(lg / temperature, -1), 1)[:, 0],
                        rows=8)
    assert naive_decode(model, ids, 16, greedy) not in want  # sampling does differ from top_k = 1
    torch.manual_seed(11)
    got = common.generate(model, tok, [ids] * 8, 16, temperature, eos_ids={len(tok) + 5})
    assert got == [(w, False) for w in want]


def test_generate_eos_ends_the_response_and_budgets_cut(model_tok):
    """A response ends at its first EOS, kept (finished); a per-prompt budget truncates."""
    model, tok = model_tok
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    full = [naive_decode(model, x, 10, greedy) for x in ids]
    eos = full[0][4]  # pretend the 5th greedy token of prompt 0 is EOS
    end = full[0].index(eos)
    got = common.generate(model, tok, ids, [10, 10, 3], eos_ids={eos})
    assert got[0] == (full[0][:end + 1], True)
    for g, f, budget in zip(got[1:], full[1:], [10, 3]):
        f = f[:budget]
        assert g == ((f[:f.index(eos) + 1], True) if eos in f else (f, False))


# common.sample: the KV-cached sampler (ppo.py's rollouts, prm_train.py's labels)

def left_pad(ids, pad_id):
    """Token-id lists -> left-padded (B, P) ids and attention mask."""
    P = max(len(x) for x in ids)
    x, attn = torch.full((len(ids), P), pad_id), torch.zeros((len(ids), P), dtype=torch.long)
    for i, row in enumerate(ids):
        x[i, P - len(row):], attn[i, P - len(row):] = torch.tensor(row), 1
    return x, attn


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sample_draws_one_uniform_per_global_row_and_token_with_row_budgets(model_tok, temperature):
    """common.sample (KV cache, left padding, rows leaving the batch at their own budgets) against the
    naive loop: token t of the row with global index r inverts the CDF of softmax(logits / T) at
    U[t, r], U[t] = rand(n_rows) from the generator. A row cut at its budget is not finished, its
    length is the budget, and pad follows it."""
    model, tok = model_tok
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS] * 2  # (6 rows)
    budgets, rows, n_rows = [12, 5, 12, 3, 9, 12], torch.tensor([7, 1, 4, 0, 9, 2]), 10
    x, attn = left_pad(ids, tok.pad_token_id)
    out, lengths, fin = common.sample(model, x, attn, torch.tensor(budgets), temperature, set(), tok.pad_token_id,
                                      torch.Generator().manual_seed(3), rows, n_rows)
    g = torch.Generator().manual_seed(3)
    U = torch.stack([torch.rand(n_rows, generator=g) for _ in range(max(budgets))])  # (T, n_rows)
    assert out.shape == (6, 12) and lengths.tolist() == budgets and not fin.any()
    for b, (row, budget) in enumerate(zip(ids, budgets)):
        t = iter(range(budget))
        u = U[:, rows[b]]  # (T,) this row's uniforms
        want = naive_decode(model, row, budget, lambda lg: common.inverse_cdf(torch.softmax(lg / temperature, -1),
                                                                              u[next(t)][None]))
        assert out[b, :budget].tolist() == want and (out[b, budget:] == tok.pad_token_id).all(), b


def test_sample_row_budget_and_eos(model_tok):
    """Greedy, budgets [10, 3, 10]: row 0 ends at its first EOS (finished, EOS counted); row 1 has
    no EOS in its first 3 tokens and stops there (length 3, not finished); an int budget is every
    row's; the results equal common.generate's."""
    model, tok = model_tok
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    full = [naive_decode(model, x, 10, greedy) for x in ids]
    eos = next(t for t in full[0][2:] if t not in full[1][:3])  # row 0 ends at it, row 1 not within 3
    x, attn = left_pad(ids, tok.pad_token_id)
    out, lengths, fin = common.sample(model, x, attn, [10, 3, 10], 0.0, {eos}, tok.pad_token_id)
    end = full[0].index(eos) + 1
    assert (lengths[0], fin[0]) == (end, True) and out[0, :end].tolist() == full[0][:end]
    assert (lengths[1], fin[1]) == (3, False) and out[1, :3].tolist() == full[1][:3]
    assert (out[1, 3:] == tok.pad_token_id).all()
    gens = common.generate(model, tok, ids, [10, 3, 10], eos_ids={eos}, sort=False)
    assert [(out[b, :n].tolist(), bool(f)) for b, (n, f) in enumerate(zip(lengths, fin))] == gens
    same, Ls, fs = common.sample(model, x, attn, 10, 0.0, {eos}, tok.pad_token_id)
    assert Ls[0] == end and fs[0] and same[2, :Ls[2]].tolist() == out[2, :lengths[2]].tolist()


def test_sampled_row_alone_equals_the_row_in_a_batch(model_tok):
    """A row's tokens, length and finished flag depend on its global index only: the same row alone
    (no padding, no other rows leaving the batch) samples the same; EOS and budgets mixed."""
    model, tok = model_tok
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS] * 2
    budgets, pad = [14, 4, 14, 9, 14, 6], tok.pad_token_id
    x, attn = left_pad(ids, pad)
    free, _, _ = common.sample(model, x, attn, budgets, 1.0, set(), pad, torch.Generator().manual_seed(5))
    sampled = torch.cat([free[b, 1:budgets[b]] for b in range(len(ids))])
    eos = int(sampled.mode().values)  # a token the rows do sample: some finish early
    out, lengths, fin = common.sample(model, x, attn, budgets, 1.0, {eos}, pad, torch.Generator().manual_seed(5))
    assert fin.any() and not fin.all()
    for b in range(len(ids)):
        one, n, f = common.sample(model, *left_pad([ids[b]], pad), [budgets[b]], 1.0, {eos}, pad,
                                  torch.Generator().manual_seed(5), torch.tensor([b]), len(ids))
        assert (int(n[0]), bool(f[0])) == (int(lengths[b]), bool(fin[b]))
        assert one[0, :n[0]].tolist() == out[b, :lengths[b]].tolist(), b


def test_nucleus_keeps_hugging_face_top_p_tokens(model_tok):
    """common.nucleus keeps the tokens Hugging Face's top_p keeps (and zeroes the rest); at a tiny
    top_p, sampling is greedy."""
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 2  # (b, V)
    for top_p in (0.05, 0.3, 0.8, 0.95):
        kept = common.nucleus(torch.softmax(logits, -1), top_p) > 0
        assert torch.equal(kept, TopPLogitsWarper(top_p)(None, logits.clone()) > float("-inf")), top_p
    model, tok = model_tok
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    x, attn = left_pad(ids, tok.pad_token_id)
    greedy_out = common.sample(model, x, attn, 8, 0.0, set(), tok.pad_token_id)[0]
    top1 = common.sample(model, x, attn, 8, 1.0, set(), tok.pad_token_id, torch.Generator().manual_seed(0),
                         top_p=1e-6)[0]
    assert torch.equal(top1, greedy_out)


# -----------------------------------------------------------------------------
# 6. metrics.jsonl

def rows(path):
    return [json.loads(x) for x in open(path)]


def test_metrics_logger_fresh_append_and_log(tmp_path):
    out = tmp_path / "run"
    log = common.MetricsLogger(str(out))
    log.log({"step": 1, "reward/total": 0.5})
    log.log({"step": 2, "reward/total": 0.25})
    log.close()
    assert open(out / "metrics.jsonl").read() == '{"step": 1, "reward/total": 0.5}\n{"step": 2, "reward/total": 0.25}\n'
    common.MetricsLogger(str(out), append=True).log({"eval/n": 3})
    assert rows(out / "metrics.jsonl")[-1] == {"eval/n": 3} and len(rows(out / "metrics.jsonl")) == 3
    common.MetricsLogger(str(out))  # a fresh run starts a fresh file
    assert open(out / "metrics.jsonl").read() == ""
    common.MetricsLogger(str(out), master=False).log({"step": 9})  # other ranks write nothing
    assert open(out / "metrics.jsonl").read() == ""


def test_metrics_logger_resume_keeps_rows_up_to_the_step_atomically(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    path = out / "metrics.jsonl"
    original = "".join(json.dumps({"step": s, "x": s / 2}) + "\n" for s in range(6)) + '{"eval/n": 4}\n{"step": 6, "x'
    path.write_text(original)
    replaced = []
    real_replace = os.replace

    def replace(src, dst):  # the old file is untouched until the new one is complete
        assert open(path).read() == original and str(dst) == str(path) and str(src) != str(path)
        replaced.append(rows(src))
        real_replace(src, dst)

    monkeypatch.setattr(common.os, "replace", replace)
    log = common.MetricsLogger(str(out), resume_step=3)
    want = [{"step": s, "x": s / 2} for s in range(4)] + [{"eval/n": 4}]
    assert replaced == [want] and rows(path) == want  # steps <= 3 and the stepless row; torn line gone
    log.log({"step": 4, "x": 9.0})
    assert rows(path) == want + [{"step": 4, "x": 9.0}]
    assert not os.path.exists(str(path) + ".tmp")


def test_metrics_logger_wandb_missing_is_a_run_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(RunError, match="pip install wandb"):
        common.MetricsLogger(str(tmp_path), wandb_project="proj", config=Cfg())


def test_metrics_logger_wandb_gets_the_rows(tmp_path, monkeypatch):
    calls = []

    class FakeWandb:
        def init(self, **kw):
            calls.append(("init", kw))

        def log(self, row, step):
            calls.append(("log", row, step))

        def finish(self):
            calls.append(("finish",))

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb())
    log = common.MetricsLogger(str(tmp_path), wandb_project="proj", config=Cfg(n_steps=5))
    log.log({"step": 2, "a": 1.0})
    log.close()
    assert calls[0][0] == "init" and calls[0][1]["project"] == "proj" and calls[0][1]["config"]["n_steps"] == 5
    assert calls[1:] == [("log", {"step": 2, "a": 1.0}, 2), ("finish",)]


# -----------------------------------------------------------------------------
# Data: load_problems (the problem files every stage reads)

def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def test_load_problems_formats(tmp_path):
    path = _write(tmp_path / "p.jsonl", [
        {"question": "Q1", "solution": "s", "answer": "3"},
        {"problem": "Q2", "solution": "\\boxed{4}", "answer": "4"},  # raw MATH row
        {"question": "Q3", "answer": "work\n#### 1,250"},            # raw GSM8K row
    ])
    rows = common.load_problems(path)
    assert [r["question"] for r in rows] == ["Q1", "Q2", "Q3"]
    assert [r["answer"] for r in rows] == ["3", "4", "1250"]
    assert len(common.load_problems(path, limit=2)) == 2
    arith = common.load_problems("arith", "test", limit=3)
    assert len(arith) == 3 and all(grading.is_correct(r["solution"], r["answer"]) for r in arith)


def test_load_problems_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"a\.jsonl:2: no question"):  # file:line (was "row 2")
        common.load_problems(_write(tmp_path / "a.jsonl", [{"question": "Q", "answer": "1"}, {"question": "Q"}]))
    with pytest.raises(ValueError, match=r"b\.jsonl:1: no question"):
        common.load_problems(_write(tmp_path / "b.jsonl", [{"question": " ", "answer": "1"}]))
    with pytest.raises(ValueError, match=r"c\.jsonl:2"):
        common.load_problems(_write(tmp_path / "c.jsonl", [{"question": "Q", "answer": "1"}, "{not json"]))
    with pytest.raises(FileNotFoundError, match="unknown dataset"):
        common.load_problems("no-such-dataset")
    monkeypatch.setattr(common, "DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        common.load_problems("gsm8k")
