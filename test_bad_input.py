"""Bad input, found early and reported in one line (issue 17, items 7, 9, 10, 11, 13, 14, 15): data
rows checked at load (file:line, --skip-bad), the grader's time bounds and counters, the PRM label
reader, overlong prompts, flag checks, and sft.py saving before its final eval."""

import contextlib
import json
import os
import time
from types import SimpleNamespace

import pytest
import torch

import common
import evaluate as ev
import grading as G
import ppo
import prm_train
import rewards
import sft
from conftest import ARITH_TOKENIZER

# short, passes the screen, and slow for sympy (a product of eight expanded powers)
SLOW = "\\boxed{(a+b)^{8}(c+d)^{8}(e+f)^{8}(g+h)^{8}(i+j)^{8}(k+l)^{8}(m+n)^{8}(o+p)^{8}}"


def write_rows(path, rows):
    """rows: dicts (one JSON line each) or raw strings (written as they are)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def good(i):
    return {"question": f"What is {i} + 1?", "solution": f"{i} + 1 = {i + 1}\n\nThe answer is \\boxed{{{i + 1}}}.",
            "answer": str(i + 1)}


# -----------------------------------------------------------------------------
# 9. every gold checked at load: file:line and the reason, or --skip-bad with a count

def test_ungradable_gold_is_found_at_load_with_file_and_line(tmp_path, capsys):
    path = write_rows(tmp_path / "d.jsonl", [good(1), "", "", {"question": "q?", "answer": "\\frac{"}, good(2)])
    with pytest.raises(ValueError, match=r"d\.jsonl:4: ungradable gold.*--skip-bad"):  # line 4, not "row 2"
        common.load_problems(path)
    problems = common.load_problems(path, skip_bad=True)
    assert [p["answer"] for p in problems] == ["2", "3"]
    assert problems[1]["_where"] == f"{path}:5"
    assert "skipped 1 bad row(s)" in capsys.readouterr().out
    assert common.load_problems(path, limit=1) == [{**good(1), "_where": f"{path}:1"}]  # limit stops before it


def test_every_stage_refuses_a_bad_gold_before_training(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [good(1), {"question": "q?", "answer": "\\sqrt{"}])
    with pytest.raises(common.RunError, match=r"d\.jsonl:2: ungradable gold"):
        ppo.load_data(ppo.Config(dataset=path, eval_limit=0))  # was: found at the step that drew it
    assert len(ppo.load_data(ppo.Config(dataset=path, eval_limit=0, skip_bad=True))[0]) == 1
    with pytest.raises(common.RunError, match=r"d\.jsonl:2: ungradable gold"):
        ev.load_problems(ev.Config(dataset=path))
    with pytest.raises(common.RunError, match=r"d\.jsonl:2: ungradable gold"):
        sft.load_split(path, "test")
    cfg = prm_train.Config(dataset=path, out_dir=str(tmp_path / "prm"))
    rt = SimpleNamespace(world_size=1, rank=0, master=True)
    with pytest.raises(common.RunError, match=r"d\.jsonl:2: ungradable gold"):
        prm_train.label(cfg, rt, None, str(tmp_path / "labels.jsonl"))


def test_gold_check_is_fast_on_the_arith_train_set():
    t = time.perf_counter()
    assert len(common.load_problems("arith", "train")) == 10_000
    assert time.perf_counter() - t < 5.0


# -----------------------------------------------------------------------------
# 10. the grader's time bounds and counters

def test_serial_grading_bounds_each_slow_pair_and_counts_it():
    G.is_correct("\\boxed{0.5}", "\\frac{1}{2}")  # math-verify imported outside the timing
    statuses = []
    t = time.perf_counter()
    out = G.grade_batch([SLOW] * 3 + ["\\boxed{0.5}", "\\boxed{7}"], ["x^2"] * 3 + ["\\frac{1}{2}", "7"],
                        processes=1, pair_timeout_s=0.5, statuses=statuses)
    elapsed = time.perf_counter() - t
    assert out == [False, False, False, True, True]
    assert statuses == ["timeout"] * 3 + ["ok", "ok"]
    assert elapsed < 3 * 0.5 + 1.5  # unbounded serial mode took 2-3 s per slow pair


def test_serial_batch_deadline_keeps_cheap_pairs_and_counts_the_rest():
    statuses = []
    t = time.perf_counter()
    out = G.grade_batch([SLOW] * 6 + ["\\boxed{42}"] * 4, ["x^2"] * 6 + ["42"] * 4, processes=1,
                        timeout_s=1.0, pair_timeout_s=0.5, statuses=statuses)
    assert time.perf_counter() - t < 1.0 + 0.5 + 1.0
    assert out == [False] * 6 + [True] * 4  # integer pairs never need the time budget
    assert statuses.count("timeout") == 6


def test_pool_grading_innocent_pairs_behind_slow_ones_are_all_true():
    G.grade_batch(["\\boxed{0.5}"] * 2, ["\\frac{1}{2}"] * 2, processes=2)  # workers started and warm
    responses = [SLOW] * 6 + ["\\boxed{42}"] * 32 + ["\\boxed{0.5}"] * 8
    golds = ["x^2"] * 6 + ["42"] * 32 + ["\\frac{1}{2}"] * 8
    statuses = []
    # 6 slow pairs on 2 workers: 3 rounds of 2-3 s used to exhaust a 6 s batch before the queue drained
    out = G.grade_batch(responses, golds, processes=2, timeout_s=6.0, pair_timeout_s=0.5, statuses=statuses)
    assert out == [False] * 6 + [True] * 40
    assert statuses == ["timeout"] * 6 + ["ok"] * 40


def test_grader_errors_are_counted_not_raised(monkeypatch):
    def boom(ans):
        raise RuntimeError("grader bug")

    monkeypatch.setattr(G, "_normalize_answer", boom)
    statuses = []
    assert G.grade_batch(["\\boxed{0.5}", "\\boxed{3}"], ["\\frac{1}{2}", "3"], processes=1,
                         statuses=statuses) == [False, True]
    assert statuses == ["error", "ok"]
    st = []
    assert rewards.success_rewards(["\\boxed{3}", "\\boxed{3}"], ["3", "3"], [False, True], statuses=st) == [0.0, 1.0]
    assert st == ["ok", "ok"]


def test_ppo_step_metrics_count_grade_timeouts_and_errors(monkeypatch):
    monkeypatch.setattr(G, "PAIR_TIMEOUT_S", 0.5)
    texts = [SLOW, "\\boxed{0.5}", "\\boxed{3}"]

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return texts[ids[0]]

    real = G._normalize_answer
    monkeypatch.setattr(G, "_normalize_answer", lambda a: (_ for _ in ()).throw(RuntimeError()) if a == "0.5" else real(a))
    batch = [{"question": "q", "answer": g} for g in ("x^2", "\\frac{1}{2}", "3")]
    ro = SimpleNamespace(resp=torch.tensor([[0], [1], [2]]), lengths=torch.tensor([1, 1, 1]),
                         finished=torch.tensor([True, True, True]), mask=torch.ones(3, 1, dtype=torch.bool),
                         values=torch.zeros(3, 1))
    cfg = SimpleNamespace(grade_workers=1, dataset="d", reward="success", truncation="zero-success", beta=0.0)
    sc = ppo.score(None, Tok(), batch, ro, cfg, 1)
    assert sc.success.tolist() == [0.0, 0.0, 1.0] and sc.grading == {"timeouts": 1, "errors": 1}
    z = torch.zeros(3, 1)
    stats = {k: torch.tensor(1.0) for k in ppo.STATS}
    row = ppo.step_metrics(1, ro, sc, z, z, z, stats, 1.0, cfg, SimpleNamespace(B=3, device="cpu"))
    assert row["reward/grade_timeouts"] == 1.0 and row["reward/grade_errors"] == 1.0


# -----------------------------------------------------------------------------
# 11. the PRM label reader

def rec(i, sample=0):
    return {"id": i, "sample": sample, "question": f"q{i} é", "steps": ["a"], "labels": [1.0], "correct": 1}


def test_label_reader_skips_a_corrupt_middle_line_and_keeps_the_rest(tmp_path, capsys):
    path = write_rows(tmp_path / "l.jsonl", [rec(0), "{not json", rec(1), rec(2)])
    size = os.path.getsize(path)
    assert [r["id"] for r in prm_train.read_labels_resumable(path)] == [0, 1, 2]  # was [0]: all after it lost
    assert os.path.getsize(path) == size  # nothing cut
    assert f"{path}:2" in capsys.readouterr().out


def test_label_reader_cuts_only_a_torn_last_line_and_relabels_its_problem(tmp_path):
    path = tmp_path / "l.jsonl"
    whole = json.dumps(rec(0, 0)) + "\n" + json.dumps(rec(0, 1)) + "\n" + json.dumps(rec(1, 0)) + "\n"
    path.write_bytes(whole.encode() + json.dumps(rec(1, 1)).encode()[:20])  # a crash mid-append
    rows = prm_train.read_labels_resumable(str(path))
    assert path.read_bytes() == whole.encode() and len(rows) == 3
    # problem 1 has one of its 2 samples: it is not done, and its partial record leaves the file
    assert prm_train.drop_partial_problems(str(path), rows, samples_per_problem=2) == {0}
    assert [(r["id"], r["sample"]) for r in prm_train.read_labels_resumable(str(path))] == [(0, 0), (0, 1)]
    # an unterminated but complete last line is kept, and the missing newline added
    path.write_bytes(json.dumps(rec(5)).encode())
    assert [r["id"] for r in prm_train.read_labels_resumable(str(path))] == [5]
    assert path.read_bytes().endswith(b"}\n")


def test_label_reader_reads_crlf_without_cutting_bytes(tmp_path):
    path = tmp_path / "l.jsonl"
    data = "".join(json.dumps(rec(i), ensure_ascii=False) + "\r\n" for i in range(3)).encode("utf-8")
    path.write_bytes(data)
    assert [r["id"] for r in prm_train.read_labels_resumable(str(path))] == [0, 1, 2]
    assert path.read_bytes() == data


# -----------------------------------------------------------------------------
# 13. overlong questions and prompts

def test_huge_question_is_a_load_error_or_skipped(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [good(1), {"question": "x" * 1_000_000, "answer": "1"}])
    with pytest.raises(ValueError, match=r"d\.jsonl:2: question of 1,000,000 characters"):
        common.load_problems(path)
    assert len(common.load_problems(path, skip_bad=True)) == 1


def test_prompt_longer_than_the_model_is_refused_before_generation(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ARITH_TOKENIZER)
    path = write_rows(tmp_path / "d.jsonl", [good(1), {"question": "1 + " * 200 + "1", "answer": "201"}])
    problems = common.load_problems(path)
    with pytest.raises(common.RunError, match=r"d\.jsonl:2: a [\d,]+-token prompt, more than the model's 512"):
        common.check_prompt_lengths(tok, problems, 512, "d")
    assert len(common.check_prompt_lengths(tok, problems, 512, "d", skip_bad=True)) == 1
    with pytest.raises(common.RunError, match=r"d\.jsonl:2: a [\d,]+-token prompt"):
        ev.main(["--policy", tiny_model_dir, "--dataset", path, "--samples", "0", "--device", "cpu",
                 "--out-dir", str(tmp_path / "ev")])


# -----------------------------------------------------------------------------
# 14. / 15. one-line errors for bad rows, files and flags

def test_non_object_rows_and_non_utf8_name_the_file_and_line(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [good(1), "", "[1, 2]"])
    with pytest.raises(ValueError, match=r"d\.jsonl:3: expected a JSON object per line, got list"):
        common.read_jsonl(path)
    for call in (lambda: ppo.load_data(ppo.Config(dataset=path, eval_limit=0)),
                 lambda: ev.load_problems(ev.Config(dataset=path)), lambda: sft.load_split(path, "test"),
                 lambda: prm_train.read_records(path)):
        with pytest.raises(common.RunError, match=r"d\.jsonl:3: expected a JSON object"):
            call()
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(json.dumps(good(1)).encode() + b"\n\n" + b'{"question": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:3: not UTF-8"):
        common.load_problems(str(bad))


def test_prm_records_with_bad_fields_name_the_line(tmp_path):
    path = write_rows(tmp_path / "r.jsonl", [rec(0), "", {"question": "q", "steps": ["a"], "labels": ["x"]}])
    with pytest.raises(common.RunError, match=r"r\.jsonl:3: steps must be strings, labels numbers"):
        prm_train.read_records(path)


def test_sft_missing_solution_names_the_line(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ARITH_TOKENIZER)
    path = write_rows(tmp_path / "d.jsonl", [good(1), "", {"question": "q?", "answer": "2"}])
    rows = sft.load_split(path, "train")
    with pytest.raises(common.RunError, match=r"d\.jsonl:3: no solution to train on"):
        sft.tokenize_dataset(tok, rows, 256, "d")
    assert len(sft.tokenize_dataset(tok, rows, 256, "d", skip_bad=True)) == 1


@pytest.mark.parametrize("flags,msg", [
    (["--prompts-per-step", "0"], "--prompts-per-step 0: must be >= 1"),
    (["--samples-per-prompt", "-1"], "--samples-per-prompt -1: must be >= 1"),
    (["--ppo-epochs", "0"], "--ppo-epochs 0: must be >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
    (["--minibatches", "0"], "--minibatches 0: must be >= 1"),
    (["--eval-limit", "-1"], "--eval-limit -1: must be >= 0"),
    (["--steps", "-2"], "--steps -2: must be >= 0"),
    (["--temperature", "0"], "--temperature 0.0: must be > 0"),
    (["--temperature", "-1"], "--temperature -1.0: must be > 0"),
])
def test_ppo_bad_flags_are_one_line_errors_before_anything_loads(flags, msg):
    with pytest.raises(common.RunError, match="^" + msg.replace("+", r"\+")):
        ppo.check_config(common.parse_config(ppo.Config, flags))


def test_ppo_out_dir_file_wandb_and_device(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(common.RunError, match="is a file, not a directory"):
        ppo.main(["--out-dir", str(f)])
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(common.RunError, match="--wandb needs the wandb package"):
        ppo.main(["--wandb", "proj", "--out-dir", str(tmp_path / "o")])
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(common.RunError, match="no CUDA GPU is visible"):
            ppo.main(["--device", "cuda", "--out-dir", str(tmp_path / "o2")])


def test_ppo_empty_dataset_fails_before_models_load(tmp_path):
    path = write_rows(tmp_path / "empty.jsonl", [""])
    with pytest.raises(common.RunError, match="no training problems"):  # the policy does not exist either
        ppo.main(["--dataset", path, "--policy", str(tmp_path / "no-policy"), "--device", "cpu",
                  "--out-dir", str(tmp_path / "o")])


def test_ppo_zero_steps_claims_no_checkpoint(tmp_path, tiny_model_dir, capsys):
    path = write_rows(tmp_path / "d.jsonl", [good(i) for i in range(4)])
    ppo.main(["--dataset", path, "--policy", tiny_model_dir, "--reward", "success", "--steps", "0",
              "--eval-limit", "0", "--prompts-per-step", "2", "--device", "cpu", "--out-dir", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert "no checkpoint written" in out and "checkpoint in" not in out


@pytest.mark.parametrize("flags,msg", [
    (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["--temperature", "-1"], "--temperature -1.0: must be >= 0"),
    (["--eval-limit", "-1"], "--eval-limit -1: must be >= 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
])
def test_evaluate_bad_flags_are_one_line_errors(flags, msg):
    with pytest.raises(common.RunError, match="^" + msg):
        ev.check_inputs(common.parse_config(ev.Config, flags))


def test_sft_and_prm_train_bad_flags_and_missing_init(tmp_path):
    with pytest.raises(common.RunError, match="^--eval-limit -1: must be >= 0"):
        sft.check_config(common.parse_config(sft.Config, ["--eval-limit", "-1"]))
    with pytest.raises(common.RunError, match="^--batch-size 0: must be >= 1"):
        prm_train.check_config(common.parse_config(prm_train.Config, ["--batch-size", "0"]))
    with pytest.raises(common.RunError, match="^--temperature 0.0: must be > 0"):
        prm_train.check_config(common.parse_config(prm_train.Config, ["--temperature", "0"]))
    for init in ("models/nope", "nope:x"):
        with pytest.raises(common.RunError, match=f"^--init tokenizer '{init}' not found"):
            sft.main(["--init", init, "--device", "cpu", "--out-dir", str(tmp_path / "s")])


def test_prm_label_only_on_an_empty_dataset_fails(tmp_path):
    path = write_rows(tmp_path / "empty.jsonl", [""])
    with pytest.raises(common.RunError, match="no problems to label"):
        prm_train.main(["--dataset", path, "--label-only", "--device", "cpu", "--out-dir", str(tmp_path / "p")])


# -----------------------------------------------------------------------------
# 7. sft.py saves before its final eval

def test_sft_saves_the_model_before_a_failing_final_eval(tmp_path, monkeypatch):
    out = tmp_path / "sft"

    def failing_eval(*a, **k):
        raise RuntimeError("final eval crashed")

    monkeypatch.setattr(sft, "eval_greedy", failing_eval)
    with pytest.raises(RuntimeError, match="final eval crashed"):
        sft.main(["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-inner", "32", "--max-steps", "2",
                  "--batch-size", "4", "--micro-batch-size", "4", "--eval-limit", "2", "--eval-every", "0",
                  "--max-new-tokens", "4", "--device", "cpu", "--out-dir", str(out)])
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert json.loads((out / "meta.json").read_text())["step"] == 2


def test_sft_eval_counts_ungradable_pairs_as_wrong(capsys):
    assert sft.grade_counted(["\\boxed{1}", "\\boxed{2}"], ["\\frac{", "2"], [True, True]) == [0.0, 1.0]
    assert "1 errors" in capsys.readouterr().out
