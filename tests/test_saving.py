"""Saving that survives kills, full disks and a second run (issue 17): the final model is swapped in atomically
(the old one or the new one, never a mix), one run writes into an output_dir at a time, an unwritable output_dir
fails before training, and resuming an ended run does no work."""

import errno
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from posttrain import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer, load_model
from posttrain import checkpoint as ckpt
from posttrain.checkpoint import OutputDirError
from posttrain import output_dir as odir
from posttrain.output_dir import output_dir_lock
from posttrain.cli import main
from posttrain.data import toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": ROOT}

# A child that trains one SFT step of tiny:llama-5m (a 20 MB model) and saves it into argv[1]; it prints
# SAVING right before save_model, so the parent can kill it at a random moment of the save.
CHILD = textwrap.dedent("""
    import sys, time
    from posttrain import SFTConfig, SFTTrainer
    from posttrain.data import toy
    out, seed = sys.argv[1], int(sys.argv[2])
    args = SFTConfig(output_dir=out, per_device_train_batch_size=2, max_steps=1, save_strategy="no", disable_tqdm=True,
                     report_to="none", seed=seed, max_length=32, learning_rate=1e-2, logging_steps=1)
    trainer = SFTTrainer("tiny:llama-5m", args, train_dataset=toy.prompt_completion(4, seed=0))
    trainer.train()
    print("SAVING", flush=True)
    start = time.perf_counter()
    trainer.save_model()
    print("SAVED", time.perf_counter() - start, flush=True)
""")


def weights_hash(path) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(load_model(str(path)).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_child(script, out, seed, kill_after=None):
    """Run the child to the end (returns its save time), or kill -9 it ``kill_after`` seconds into its save."""
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV, cwd=ROOT)
    try:
        for line in proc.stdout:
            if line.startswith("SAVING"):
                if kill_after is not None:
                    time.sleep(kill_after)
                    proc.kill()
                    proc.wait(timeout=30)
                    return None
            elif line.startswith("SAVED"):
                proc.wait(timeout=60)
                return float(line.split()[1])
        raise AssertionError(f"child ended early (exit {proc.wait(timeout=60)})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def kill_trials(tmp_path, trials: int) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    old_dir = tmp_path / "old"
    run_child(script, old_dir, seed=1)
    reference = tmp_path / "reference"
    shutil.copytree(old_dir, reference)
    seconds = run_child(script, reference, seed=0)
    old, new = weights_hash(old_dir), weights_hash(reference)
    assert old != new
    rng, outcomes = random.Random(0), {"old": 0, "new": 0}
    for trial in range(trials):
        out = tmp_path / f"trial-{trial}"
        shutil.copytree(old_dir, out)
        # from before the save starts to a little after it ends (the child's timing varies)
        run_child(script, out, seed=0, kill_after=rng.uniform(0, 1.5 * seconds + 0.02))
        got = weights_hash(out)  # posttrain's loader: finishes a committed swap, refuses a broken one
        assert got in (old, new), f"trial {trial}: a model that is neither the old nor the new one"
        outcomes["old" if got == old else "new"] += 1
        assert ckpt.has_complete_model(str(out)) and not (out / ckpt.IN_PROGRESS_MARKER).exists()
        shutil.rmtree(out)
    print(f"kill -9 during the final save, {trials} trials: {outcomes}")
    return outcomes


def test_kill_during_final_save_leaves_old_or_new_model(tmp_path):
    outcomes = kill_trials(tmp_path, trials=5)
    assert sum(outcomes.values()) == 5


@pytest.mark.slow
def test_kill_during_final_save_20_trials(tmp_path):
    outcomes = kill_trials(tmp_path, trials=20)
    assert sum(outcomes.values()) == 20


def _save_model(trainer, monkeypatch=None, fail_after_replaces=None):
    """trainer.save_model(), with os.replace in posttrain.checkpoint failing (a kill) after ``fail_after_replaces``."""
    if fail_after_replaces is not None:
        real, calls = os.replace, {"n": 0}

        def replace(src, dst):
            if calls["n"] >= fail_after_replaces:
                raise KeyboardInterrupt("killed while moving files")
            calls["n"] += 1
            return real(src, dst)

        monkeypatch.setattr(ckpt.os, "replace", replace)
    try:
        trainer.save_model()
    finally:
        if fail_after_replaces is not None:
            monkeypatch.setattr(ckpt.os, "replace", real)


def sft(out, seed=0, **kw):
    args = dict(output_dir=str(out), per_device_train_batch_size=2, max_steps=1, save_strategy="no",
                disable_tqdm=True, report_to="none", seed=seed, max_length=32, learning_rate=1e-2, logging_steps=1)
    args.update(kw)
    return SFTTrainer("tiny:llama", SFTConfig(**args), train_dataset=toy.prompt_completion(8, seed=0))


def test_every_interruption_point_of_the_swap(tmp_path, monkeypatch):
    """Deterministic version of the kill test: stop the swap after each of its renames in turn."""
    base = tmp_path / "base"
    old_trainer = sft(base, seed=1)
    old_trainer.save_model()
    manifest = json.loads((base / ckpt.COMPLETE_MARKER).read_text())
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(manifest["files"])
    old = weights_hash(base)
    trainer = sft(tmp_path / "unused", seed=0)
    trainer.train()
    seen = set()
    for point in range(40):
        out = tmp_path / f"p{point}"
        shutil.copytree(base, out)
        trainer.args.output_dir = str(out)
        try:
            _save_model(trainer, monkeypatch, fail_after_replaces=point)
        except KeyboardInterrupt:
            pass
        else:
            break
        seen.add(weights_hash(out))
        assert not (out / ckpt.IN_PROGRESS_MARKER).exists() and not (out / ckpt.FINAL_STAGING).exists() \
            or seen == {old}
    new = weights_hash(out)
    assert point > 5 and seen == {old, new}  # interrupted before the commit: old; after: finished, new


def test_interrupted_save_is_never_taken_for_a_model(tmp_path):
    out = tmp_path / "out"
    (out / ckpt.FINAL_STAGING).mkdir(parents=True)
    (out / ckpt.FINAL_STAGING / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(OutputDirError, match="interrupted save"):
        load_model(str(out))
    # a journal whose staged files are gone cannot be finished: a clear error, not the old weights
    trainer = sft(tmp_path / "m", seed=0)
    trainer.save_model()
    (tmp_path / "m" / ckpt.IN_PROGRESS_MARKER).write_text(json.dumps(
        {"staging": ckpt.FINAL_STAGING, "files": {"model.safetensors": 123}, "remove": [], "pid": 1, "host": "h"}))
    with pytest.raises(OutputDirError, match="was left by an interrupted save"):
        load_model(str(tmp_path / "m"))
    os.remove(tmp_path / "m" / ckpt.IN_PROGRESS_MARKER)
    # a truncated file of a finished save is caught by the sizes in the completion marker
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(OutputDirError, match="not a complete model"):
        load_model(str(tmp_path / "m"))
    # a directory that posttrain did not write loads as before
    plain = tmp_path / "plain"
    load_model("tiny:llama").save_pretrained(plain)
    load_model(str(plain))


# ---- one writer per output_dir -----------------------------------------------------------------------------------
def _holder(out):
    """A live process holding ``out``'s lock (another run)."""
    code = ("import sys, time; from posttrain.output_dir import output_dir_lock\n"
            "with output_dir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_into_the_same_output_dir_exits_2(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toy.prompt_completion(8, seed=0)))
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        start = time.perf_counter()
        code = main(["sft", "--model", "tiny:llama", "--dataset", str(data), "--output_dir", str(out), "--max_steps",
                     "1", "--disable_tqdm", "true", "--report_to", "none"])
        err = capsys.readouterr().err
        assert code == 2 and "is in use by another posttrain run" in err and f"pid {holder.pid}" in err, err
        assert time.perf_counter() - start < 30 and not (out / "model.safetensors").exists()  # failed at the start
        # overwrite_output_dir takes the directory over (with a warning)
        trainer = sft(out, save_strategy="steps", save_steps=1)
        trainer.args.overwrite_output_dir = True
        trainer.train()
        assert (out / "checkpoint-1").is_dir()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_taken_over_and_released(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / odir.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "token": "x"}))
    trainer = sft(out, save_strategy="steps", save_steps=1)
    with caplog.at_level("WARNING", logger="posttrain.checkpoint"):
        trainer.train()
    assert "that process is gone" in caplog.text
    assert (out / "checkpoint-1").is_dir() and not (out / odir.LOCK_FILE).exists()  # released at the end
    # released on an exception too; and a lock held by this process is re-entrant
    with pytest.raises(RuntimeError):
        with output_dir_lock(str(out)):
            with output_dir_lock(str(out)):
                assert json.loads((out / odir.LOCK_FILE).read_text())["pid"] == os.getpid()
            raise RuntimeError
    assert not (out / odir.LOCK_FILE).exists()


def test_extra_checkpoints_removed_at_the_next_start(tmp_path):
    """A kill between a checkpoint's rename and the rotation leaves limit + 1 checkpoints: the next start removes one."""
    out = tmp_path / "out"
    for step in (2, 4, 6):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    (out / ckpt.STAGING_DIR / "checkpoint-8").mkdir(parents=True)
    with output_dir_lock(str(out), save_total_limit=2):
        assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-4",
                                                                                            "checkpoint-6"]
        assert not (out / ckpt.STAGING_DIR).exists()


# ---- resuming an ended run -------------------------------------------------------------------------------------------
def test_resume_of_a_finished_run_does_no_work(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toy.prompt_completion(16, seed=0)))
    out = tmp_path / "out"
    argv = ["sft", "--model", "tiny:llama", "--dataset", str(data), "--output_dir", str(out), "--max_steps", "2",
            "--save_steps", "1", "--disable_tqdm", "true", "--report_to", "none", "--per_device_train_batch_size", "4"]
    assert main(argv) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(argv + ["--resume_from_checkpoint", "true"]) == 0
    assert "posttrain sft: saved to" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert after == before  # no checkpoint-3, the final model untouched
    # the online trainers too (GRPO): resume from the last checkpoint of an ended run
    rows = toy.arithmetic_problems(16, seed=0)
    args = dict(output_dir=str(tmp_path / "g"), max_steps=2, per_device_train_batch_size=8, num_generations=2,
                max_completion_length=4, disable_tqdm=True, save_strategy="steps", save_steps=1, report_to="none")
    GRPOTrainer("tiny:llama", ["arithmetic"], args=GRPOConfig(**args), train_dataset=rows).train()
    again = GRPOTrainer("tiny:llama", ["arithmetic"], args=GRPOConfig(**args), train_dataset=rows)
    again.train(resume_from_checkpoint=True)
    assert again.finished_at_start and again.state.global_step == 2
    assert sorted(p.name for p in (tmp_path / "g").iterdir() if p.name.startswith("checkpoint")) == \
        ["checkpoint-1", "checkpoint-2"]


# ---- unwritable output_dir, full disk --------------------------------------------------------------------------------
def _readonly_dirs(tmp_path):
    """Directories this process cannot write into, found in a way that holds as root (which ignores permissions)."""
    found = []
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        found.append(str(locked / "out"))
    sysfs = os.statvfs("/sys") if os.path.isdir("/sys") else None
    if sysfs is not None and sysfs.f_flag & os.ST_RDONLY:
        found.append("/sys/posttrain-test-out")  # a read-only mount (as in most containers)
    return found


def test_unwritable_output_dir_fails_before_training(tmp_path, capsys, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toy.prompt_completion(8, seed=0)))
    (tmp_path / "a-file").write_text("")
    cases = [(str(tmp_path / "a-file" / "out"), "a part of that path is a file")]
    cases += [(d, "read-only file system|No permission to write") for d in _readonly_dirs(tmp_path)]
    for out, message in cases:
        code = main(["sft", "--model", "tiny:llama", "--dataset", str(data), "--output_dir", out, "--max_steps", "1",
                     "--disable_tqdm", "true", "--report_to", "none"])
        err = capsys.readouterr().err
        assert code == 2 and out in err, err
        assert __import__("re").search(message, err), err
    # a read-only mount (simulated where none can be made: root ignores permissions) and a full disk, at the probe
    real_open = open
    for code_, expected in ((errno.EROFS, "is on a read-only file system"),
                            (errno.ENOSPC, "No space left on the disk holding")):
        def failing(file, *args, **kwargs):
            if odir.PROBE_FILE in str(file):
                raise OSError(code_, os.strerror(code_), str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr("builtins.open", failing)
        out = str(tmp_path / f"out-{code_}")
        code = main(["sft", "--model", "tiny:llama", "--dataset", str(data), "--output_dir", out, "--max_steps", "1",
                     "--disable_tqdm", "true", "--report_to", "none"])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and out in err, err
        assert not os.path.exists(os.path.join(out, odir.LOCK_FILE))
        monkeypatch.undo()


def test_disk_full_while_saving_names_the_disk_and_the_log_never_repeats_a_step(tmp_path, monkeypatch):
    """GRPO's checkpoint at step 4 hits a full disk (an OSError, then torch's C++ writer): a clear error naming the
    directory, the failed staging removed; the retry resumes from checkpoint-2 and logs every step once."""
    import safetensors.torch
    import torch

    rows = toy.arithmetic_problems(16, seed=0)
    out = tmp_path / "out"
    args = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=8, num_generations=2,
                max_completion_length=4, disable_tqdm=True, save_strategy="steps", save_steps=2, report_to="none",
                logging_steps=1)
    real_save_file, real_save = safetensors.torch.save_file, torch.save
    for failure in ("oserror", "iostream"):
        shutil.rmtree(out, ignore_errors=True)
        calls = {"n": 0}

        def save_file(tensors, path, *a, **kw):
            calls["n"] += 1
            if calls["n"] == 2 and failure == "oserror":  # the second checkpoint (step 4)
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return real_save_file(tensors, path, *a, **kw)

        def save(obj, path, *a, **kw):
            if failure == "iostream" and "checkpoint-4" in str(path):
                raise RuntimeError("basic_ios::clear: iostream error")
            return real_save(obj, path, *a, **kw)

        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
        monkeypatch.setattr(torch, "save", save)
        if failure == "iostream":  # torch's writer says no errno: the free space tells a full disk
            monkeypatch.setattr(ckpt, "_free_bytes", lambda path: 0)
        trainer = GRPOTrainer("tiny:llama", ["arithmetic"], args=GRPOConfig(**args), train_dataset=rows)
        with pytest.raises(OutputDirError, match=f"No space left on the disk holding {out}"):
            trainer.train()
        assert (out / "checkpoint-2").is_dir() and not (out / ckpt.STAGING_DIR / "checkpoint-4").exists()
        assert not (out / odir.LOCK_FILE).exists()
        monkeypatch.undo()
        retry = GRPOTrainer("tiny:llama", ["arithmetic"], args=GRPOConfig(**args), train_dataset=rows)
        retry.train(resume_from_checkpoint=True)
        steps = [e["step"] for e in retry.state.log_history]
        assert steps == [1, 2, 3, 4], steps
        saved = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
        assert [e["step"] for e in saved["log_history"]] == [1, 2, 3, 4]
