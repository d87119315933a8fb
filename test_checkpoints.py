"""Failure modes of a run's out_dir (README "Failure modes"): NaN weights never replace a good
checkpoint, a fresh run never deletes a previous one silently, leftovers of a killed save or
deletion never block a later save, one writer per out_dir, every loaded file verified, metrics.jsonl
rewritten atomically, --resume refuses flags that change the run, a full disk is one line, and
every file is fsynced before the renames. In-process runs where one process suffices (fast);
subprocess runs for the lock and the strace-placed kills (skipped without strace)."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import common
import ppo
from conftest import ROOT, build_tiny_model

PY = sys.executable
FAST = ["--reward", "success", "--prompts-per-step", "2", "--samples-per-prompt", "1", "--max-new-tokens", "8",
        "--eval-limit", "0", "--sample-every", "0", "--minibatches", "1", "--ppo-epochs", "1", "--save-every", "1"]


def args(policy, out, *more):
    return ["--policy", policy, "--out-dir", str(out), *FAST, *more]


def fail(argv, capsys):
    """ppo.main(argv) must stop with one `error:` line (exit code 2, no traceback); returns it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        common.run_main(ppo.main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def meta(out):
    return json.load(open(os.path.join(out, "ckpt", "meta.json")))


def tree_bytes(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(root) for f in fs}


def run(cmd, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def saved_run(tiny_model_dir, tmp_path):
    """An out_dir holding a finished 1-step run with its checkpoint."""
    out = tmp_path / "run"
    ppo.main(args(tiny_model_dir, out, "--steps", "1"))
    return out


# -----------------------------------------------------------------------------
# 1. NaN weights never replace a good checkpoint

def test_nan_weights_after_an_optimizer_step_stop_the_run_and_keep_the_last_checkpoint(
        tiny_model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real, calls = ppo.optimizer_step, []

    def poisoned_second_step(models, optims, cfg, rt):  # the update of step 2 destroys one weight
        real(models, optims, cfg, rt)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(models["policy"].parameters()).view(-1)[0] = float("nan")
    monkeypatch.setattr(ppo, "optimizer_step", poisoned_second_step)
    err = fail(args(tiny_model_dir, out, "--steps", "3"), capsys)
    assert "step 2" in err and "NaN or inf in the weights" in err and "policy" in err
    assert f"checkpoint of step 1 in {out / 'ckpt'} is left intact" in err  # and it is:
    assert meta(out)["step"] == 1
    monkeypatch.setattr(ppo, "optimizer_step", real)
    ppo.main(args(tiny_model_dir, out, "--steps", "2", "--resume"))  # loads (verified finite) and goes on
    assert meta(out)["step"] == 2


def test_lr_far_too_high_stops_before_nan_weights_are_saved(tiny_model_dir, tmp_path, capsys):
    """The issue's run: the step-2 update turns the weights to NaN while every loss is finite.
    Before: saved over the good step-1 checkpoint, and --resume failed."""
    out = tmp_path / "run"
    flags = args(tiny_model_dir, out, "--reward", "prm", "--prm", tiny_model_dir, "--step-tag", "<step>", "--lr", "1e20")
    err = fail(flags + ["--steps", "3"], capsys)  # (a PRM reward: the success reward alone has no gradient here)
    assert "step 2: NaN or inf in the weights" in err and "--lr 1e+20" in err
    assert f"checkpoint of step 1 in {out / 'ckpt'} is left intact" in err and meta(out)["step"] == 1
    ppo.main(flags + ["--steps", "1", "--resume"])  # the step-1 checkpoint loads: verified, finite


def test_check_finite_weights_sees_parameters_and_optimizer_state():
    model = torch.nn.Linear(3, 2)
    optim = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optim.step()
    cfg = type("C", (), {"lr": 0.1, "critic_lr": 0.1, "out_dir": "/nonexistent"})
    rt = type("R", (), {"device": "cpu"})
    ppo.check_finite_weights({"policy": model}, {"policy": optim}, 1, cfg, rt)  # finite: no error
    optim.state[model.bias]["exp_avg"][0] = float("inf")
    with pytest.raises(common.RunError, match=r"step 1: .*policy: state\[1\]\.exp_avg.*no checkpoint"):
        ppo.check_finite_weights({"policy": model}, {"policy": optim}, 1, cfg, rt)
    optim.state[model.bias]["exp_avg"][0] = 0.0
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(common.RunError, match=r"policy: weight"):
        ppo.check_finite_weights({"policy": model}, {"policy": optim}, 1, cfg, rt)


# -----------------------------------------------------------------------------
# 2. a fresh run never deletes a previous one silently

def test_fresh_run_in_a_used_out_dir_refuses_unless_overwrite(tiny_model_dir, saved_run, capsys):
    before = tree_bytes(saved_run)
    err = fail(args(tiny_model_dir, saved_run, "--steps", "1"), capsys)
    assert str(saved_run) in err and "ckpt" in err and "metrics.jsonl" in err
    assert "--resume" in err and "--overwrite" in err
    after = tree_bytes(saved_run)
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
    err = fail(args(tiny_model_dir, saved_run, "--steps", "1", "--resume", "--overwrite"), capsys)
    assert "--resume" in err and "--overwrite" in err
    # metrics.jsonl alone (a run killed before its first save) is a previous run too
    shutil.rmtree(saved_run / "ckpt")
    (saved_run / "notes.txt").write_text("mine")
    (saved_run / "ckpt.tmp").mkdir()
    fail(args(tiny_model_dir, saved_run, "--steps", "1"), capsys)
    ppo.main(args(tiny_model_dir, saved_run, "--steps", "2", "--overwrite"))
    rows = [json.loads(x) for x in open(saved_run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and meta(saved_run)["step"] == 2
    assert (saved_run / "notes.txt").read_text() == "mine"  # only the run's own files are deleted
    assert not (saved_run / "ckpt.tmp").exists()


# -----------------------------------------------------------------------------
# 3. leftovers of a killed save or deletion never block a later save

def test_leftover_tmp_old_and_trash_dirs_do_not_block_saves(tiny_model_dir, saved_run):
    for leftover in ("ckpt.old/policy", "ckpt.tmp/critic", "ckpt.old.trash-1-2/x"):
        (saved_run / leftover).mkdir(parents=True)
        (saved_run / leftover / "model.safetensors").write_bytes(b"partial")
    ppo.main(args(tiny_model_dir, saved_run, "--steps", "3", "--resume"))
    assert meta(saved_run)["step"] == 3
    assert sorted(os.listdir(saved_run)) == [".lock", "ckpt", "metrics.jsonl"]


def test_save_checkpoint_itself_cleans_leftovers_and_never_keeps_stale_files(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification
    out = tmp_path / "run"
    models = {"policy": AutoModelForCausalLM.from_pretrained(tiny_model_dir),
              "critic": AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1)}
    optims = {k: torch.optim.AdamW(m.parameters()) for k, m in models.items()}
    tok, cfg = common.load_tokenizer(tiny_model_dir), ppo.Config(out_dir=str(out))
    for step in (1, 2):  # before the first save (no ckpt yet) and before a later one
        for leftover in ("ckpt.tmp/policy/stale.bin", "ckpt.old/critic/x", "ckpt.old.trash-7-8/y"):
            (out / leftover).parent.mkdir(parents=True, exist_ok=True)
            (out / leftover).write_bytes(b"partial")
        ppo.save_checkpoint(str(out), models, optims, tok, cfg, step, {}, master=True)
        assert meta(out)["step"] == step and sorted(os.listdir(out)) == ["ckpt"]
        assert not (out / "ckpt" / "policy" / "stale.bin").exists() and "policy/stale.bin" not in meta(out)["files"]


def test_killed_between_the_swap_renames_resumes_from_the_old_checkpoint(tiny_model_dir, saved_run):
    os.replace(saved_run / "ckpt", saved_run / "ckpt.old")  # the kill: ckpt.tmp half written, no ckpt
    (saved_run / "ckpt.tmp").mkdir()
    ppo.main(args(tiny_model_dir, saved_run, "--steps", "2", "--resume"))
    assert meta(saved_run)["step"] == 2 and sorted(os.listdir(saved_run)) == [".lock", "ckpt", "metrics.jsonl"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("when", [1, 3])
def test_strace_kill_inside_a_deletion_then_resume_finishes(tiny_model_dir, tmp_path, when):
    """SIGKILL at the `when`-th unlinkat: inside the deletion of step 2's old checkpoint (the only
    unlinkat calls of a run). Before: a half-deleted ckpt.old made every later save fail with
    "Directory not empty"."""
    out = tmp_path / "run"
    cmd = [PY, "ppo.py", *args(tiny_model_dir, out, "--steps", "3")]
    killed = run(["strace", "-f", "-o", os.devnull, "-e", "trace=unlinkat",
                  "-e", f"inject=unlinkat:signal=KILL:when={when}", *cmd])
    assert killed.returncode != 0 and meta(out)["step"] in (1, 2)  # killed inside a save
    res = run(cmd + ["--resume", "--steps", "4"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert meta(out)["step"] == 4 and sorted(os.listdir(out)) == [".lock", "ckpt", "metrics.jsonl"]
    assert [json.loads(x)["step"] for x in open(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_remove_tree_renames_before_deleting(tmp_path, monkeypatch):
    d = tmp_path / "ckpt.old"
    (d / "a").mkdir(parents=True)
    (d / "a" / "f").write_text("x")

    def killed(path, *a, **kw):  # the kill lands inside the deletion
        raise KeyboardInterrupt
    monkeypatch.setattr(common.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        common.remove_tree(str(d))
    assert not d.exists()  # the name is free at once: a save can rename onto it
    monkeypatch.undo()
    common.remove_tree(str(d))  # the next call deletes the trash
    assert os.listdir(tmp_path) == []


# -----------------------------------------------------------------------------
# 4. one writer per out_dir

def test_second_run_on_a_locked_out_dir_fails_fast_naming_the_holder(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([PY, "ppo.py", *args(tiny_model_dir, out, "--steps", "10000", "--save-every", "0")],
                             cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock, t0 = out / ".lock", time.time()
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None and time.time() - t0 < 60:
            time.sleep(0.05)
        assert first.poll() is None and lock.read_text().strip() == str(first.pid)
        t0 = time.time()
        for extra in ([], ["--resume"], ["--overwrite"]):
            second = run([PY, "ppo.py", *args(tiny_model_dir, out, "--steps", "1", *extra)])
            assert second.returncode == 2 and "Traceback" not in second.stderr
            assert f"in use by another run (pid {first.pid})" in second.stderr, second.stderr
        assert time.time() - t0 < 60
        assert first.poll() is None  # untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kill released the lock; the killed run left no checkpoint, so a new run needs --overwrite
    assert "--overwrite" in fail(args(tiny_model_dir, out, "--steps", "1"), capsys)
    ppo.main(args(tiny_model_dir, out, "--steps", "1", "--overwrite"))


def test_lock_is_reentrant_in_a_process_and_released_by_unlock(tmp_path):
    d = str(tmp_path / "o")
    common.lock_out_dir(d)
    common.lock_out_dir(d)
    probe = [PY, "-c", "import common, sys; common.lock_out_dir(sys.argv[1])", d]
    held = run(probe)
    assert held.returncode != 0 and f"pid {os.getpid()}" in held.stderr
    common.unlock_out_dir(d)
    assert run(probe).returncode == 0
    (tmp_path / "file").write_text("")
    with pytest.raises(common.RunError, match="is a file"):
        common.lock_out_dir(str(tmp_path / "file"))


# -----------------------------------------------------------------------------
# 5 + 14. every loaded file verified: one line naming the file

def flip(path, offset_frac=0.5):
    b = bytearray(open(path, "rb").read())
    i = int(len(b) * offset_frac)
    b[i:i + 8] = bytes(x ^ 0xFF for x in b[i:i + 8])
    open(path, "wb").write(bytes(b))


def garble_key(path):
    b = open(path, "rb").read()
    open(path, "wb").write(b.replace(b"model.embed_tokens.weight", b"model.embed_tokenX.weight", 1))


def nan_weights(path):
    from safetensors.torch import load_file, save_file
    sd = load_file(path)
    k = sorted(sd)[0]
    sd[k].view(-1)[0] = float("nan")
    save_file(sd, path, metadata={"format": "pt"})


def edit_meta(fn):
    def edit(path):
        m = json.load(open(path))
        fn(m)
        json.dump(m, open(path, "w"))
    return edit


CORRUPTIONS = {  # file under ckpt/, corruption, what the error must name
    "garbled-key": ("policy/model.safetensors", garble_key, ["model.safetensors", "model.embed_tokens.weight",
                                                            "model.embed_tokenX.weight"]),
    "nan-weight": ("critic/model.safetensors", nan_weights, ["critic", "model.safetensors", "NaN or inf"]),
    "safetensors-header": ("policy/model.safetensors", lambda p: flip(p, 0.0001), ["model.safetensors"]),
    "flipped-weights": ("critic/model.safetensors", flip, ["critic/model.safetensors", "sha256"]),
    "flipped-optimizers": ("optimizers.pt", flip, ["optimizers.pt", "sha256"]),
    "flipped-rng": ("rng.pt", lambda p: flip(p, 0.9), ["rng.pt", "sha256"]),
    "meta-garbage": ("meta.json", lambda p: open(p, "w").write('{"config": {"lr": 3e-5'), ["meta.json", "JSON"]),
    "meta-not-object": ("meta.json", lambda p: open(p, "w").write("[1, 2]"), ["meta.json", "integer step"]),
    "no-checksums-truncated-optimizers": ("optimizers.pt", lambda p: (
        edit_meta(lambda m: m.pop("files"))(os.path.join(os.path.dirname(p), "meta.json")),
        open(p, "r+b").truncate(100)), ["optimizers.pt"]),
    "no-checksums-garbage-rng": ("rng.pt", lambda p: (
        edit_meta(lambda m: m.pop("files"))(os.path.join(os.path.dirname(p), "meta.json")),
        torch.save({"not": "a state"}, p)), ["rng.pt"]),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoint_file_is_one_error_naming_it(case, tiny_model_dir, saved_run, capsys):
    rel, corrupt, names = CORRUPTIONS[case]
    corrupt(str(saved_run / "ckpt" / rel))
    err = fail(args(tiny_model_dir, saved_run, "--steps", "2", "--resume"), capsys)
    for name in names:
        assert name in err, (name, err)
    assert meta_step_if_readable(saved_run) in (1, None)


def meta_step_if_readable(out):
    try:
        return meta(out)["step"]
    except (ValueError, TypeError, KeyError):
        return None


def test_meta_with_unknown_keys_resumes_with_a_warning(tiny_model_dir, saved_run, capsys):
    edit_meta(lambda m: (m["config"].update(new_knob=3), m.update(provenance="v9")))(
        str(saved_run / "ckpt" / "meta.json"))
    files = meta(saved_run)["files"]
    assert "meta.json" not in files  # (meta.json lists the others: editing it breaks no checksum)
    capsys.readouterr()
    ppo.main(args(tiny_model_dir, saved_run, "--steps", "2", "--resume"))
    out = capsys.readouterr().out
    assert "WARNING" in out and "new_knob" in out and "meta.provenance" in out
    assert meta(saved_run)["step"] == 2


def test_load_checkpoint_model_accepts_a_clean_checkpoint_and_names_a_missing_key(tmp_path):
    d = build_tiny_model(tmp_path / "m")
    common.load_checkpoint_model(d, "policy")
    garble_key(os.path.join(d, "model.safetensors"))
    with pytest.raises(common.RunError, match=r"missing keys \[.*'model.embed_tokens.weight'"):
        common.load_checkpoint_model(d, "policy")


# -----------------------------------------------------------------------------
# 6. metrics.jsonl: atomic rewrite on resume, one line for a damaged row

def test_metrics_rewrite_fsyncs_before_the_rename_and_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    old = "".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(1, 5))
    path.write_text(old)
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(a), str(b)))
        real_replace(a, b)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    common.MetricsLogger(str(tmp_path), resume_step=2, master=True)
    assert path.read_text() == old[:old.index('{"step": 3')]
    tmp = str(path) + ".tmp"
    i = events.index(("replace", tmp, str(path)))
    assert ("fsync", tmp) in events[:i] and ("fsync", str(tmp_path)) in events[i:]  # file, then directory

    def killed(a, b):  # a kill (or an error) at the rename: the old file is whole, no temp is left
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", killed)
    before = path.read_text()
    with pytest.raises(KeyboardInterrupt):
        common.MetricsLogger(str(tmp_path), resume_step=1, master=True)
    assert path.read_text() == before and not os.path.exists(tmp)


@pytest.mark.parametrize("line", ["not json", "[1, 2]", "7", '"text"', b"\xff\xfe{}"])
def test_metrics_damaged_line_is_one_error_naming_file_and_line(tmp_path, line):
    path = tmp_path / "metrics.jsonl"
    good = json.dumps({"step": 1}) + "\n"
    path.write_bytes(good.encode() + (line if isinstance(line, bytes) else line.encode()) + b"\n" + good.encode())
    with pytest.raises(common.RunError, match=rf"metrics.jsonl:2: not a JSON object"):
        common.MetricsLogger(str(tmp_path), resume_step=5, master=True)
    assert path.read_bytes().startswith(good.encode())  # untouched
    path.write_text(good + "\n" + good + '{"step": 2, "to')  # blank line kept out, torn last line dropped
    common.MetricsLogger(str(tmp_path), resume_step=5, master=True)
    assert path.read_text() == good + good


# -----------------------------------------------------------------------------
# 8. --resume refuses flags that change what the run is

def test_resume_refuses_flags_that_change_the_run(tiny_model_dir, saved_run, tmp_path, capsys):
    other = build_tiny_model(tmp_path / "other", seed=1)
    err = fail(args(other, saved_run, "--steps", "2", "--resume", "--lr", "1", "--seed", "3"), capsys)
    assert f"--policy '{other}' (saved: '{tiny_model_dir}')" in err
    assert "--lr 1.0 (saved: 3e-05)" in err and "--seed 3 (saved: 0)" in err and "--steps" not in err.split("safe")[0]
    err = fail(args(tiny_model_dir, saved_run, "--steps", "2", "--resume", "--reward", "orm"), capsys)
    assert "--reward 'orm' (saved: 'success')" in err
    assert meta(saved_run)["step"] == 1
    # the saved values again, and the flags that only say how long / how often / where: accepted
    ppo.main(args(tiny_model_dir, saved_run, "--steps", "2", "--resume", "--eval-every", "7", "--save-every", "2",
                  "--sample-every", "0", "--device", "cpu", "--grade-workers", "1", "--micro-batch-size", "1"))
    m = meta(saved_run)
    assert m["step"] == 2 and m["config"]["eval_every"] == 7 and m["config"]["policy"] == tiny_model_dir


# -----------------------------------------------------------------------------
# 12. a full disk: one line, no partial ckpt.tmp, the previous checkpoint kept

@pytest.mark.parametrize("error", ["enospc", "torch-runtime"])
def test_disk_full_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(
        error, tiny_model_dir, saved_run, capsys, monkeypatch):
    before = tree_bytes(saved_run / "ckpt")
    real_save = torch.save

    def full_disk(obj, path, *a, **kw):
        real_save(obj, path, *a, **kw)  # a partial file is left behind
        if error == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1234 vs 1200")
    monkeypatch.setattr(torch, "save", full_disk)
    if error == "torch-runtime":  # torch.save's way of saying so: the free space decides
        monkeypatch.setattr(common.shutil, "disk_usage", lambda p: SimpleNamespace(total=10 << 30, used=10 << 30, free=0))
    err = fail(args(tiny_model_dir, saved_run, "--steps", "2", "--resume"), capsys)
    assert f"disk full at {saved_run / 'ckpt.tmp'}" in err and "step 2" in err
    assert "checkpoint of step 1" in err and "kept" in err
    assert not (saved_run / "ckpt.tmp").exists() and not list(saved_run.glob("ckpt.tmp*"))
    assert tree_bytes(saved_run / "ckpt") == before
    monkeypatch.undo()
    ppo.main(args(tiny_model_dir, saved_run, "--steps", "2", "--resume"))  # room again: it goes on
    assert meta(saved_run)["step"] == 2


def test_write_error_names_other_os_errors():
    e = OSError(errno.EACCES, "Permission denied", "/x/ckpt.tmp")
    assert common.write_error("/x/ckpt.tmp", e) == "cannot write /x/ckpt.tmp (Permission denied)"
    assert common.write_error("/x/ckpt.tmp", OSError(errno.ENOSPC, "No space")) == "disk full at /x/ckpt.tmp"


# -----------------------------------------------------------------------------
# power loss: every file and directory of a checkpoint is fsynced before it is renamed in

def test_save_fsyncs_every_checkpoint_file_before_the_swap(tiny_model_dir, saved_run, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))),
                                                     real_replace(a, b))[1])
    ppo.main(args(tiny_model_dir, saved_run, "--steps", "2", "--resume"))
    tmp, final = str(saved_run / "ckpt.tmp"), str(saved_run / "ckpt")
    i = events.index(("replace", tmp, final))
    synced = {e[1] for e in events[:i] if e[0] == "fsync"}
    files = {os.path.join(tmp, rel) for rel in tree_bytes(final)}
    dirs = {tmp, os.path.join(tmp, "policy"), os.path.join(tmp, "critic")}
    assert files | dirs <= synced, sorted(files | dirs - synced)
    assert str(saved_run / "metrics.jsonl") in synced  # its rows up to the checkpoint survive too
    assert ("fsync", str(saved_run)) in events[i:]  # the renames themselves
