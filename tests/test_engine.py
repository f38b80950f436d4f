"""The training engine and checkpoints: exact resume, signals, crashes, corruption, pickles,
non-finite losses, disk problems, rotation."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from torch import nn

from _two_process_worker import tiny_config, tiny_problem
from ambient import checkpoint as ck
from ambient.engine import (
    BatchSchedule,
    EngineConfig,
    TrainingInterrupted,
    learning_rate,
    run_training,
)
from ambient.errors import AmbientError

WORKER = Path(__file__).with_name("_two_process_worker.py")
STEPS = 40


def _train(run_dir: Path, steps: int = STEPS, resume: bool = False, **overrides) -> nn.Module:
    model, loss_fn, n = tiny_problem()
    return run_training(model, loss_fn, n, tiny_config(steps, **overrides), run_dir,
                        resume=resume, progress=False)


def _shapes() -> dict[str, torch.Size]:
    return {name: p.shape for name, p in tiny_problem()[0].named_parameters()}


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of the newest checkpoint (model, EMA, optimizer), prefixed by file."""
    path = ck.list_checkpoints(run_dir)[0]
    out = {}
    for part in ck.PARTS:
        for name, t in safetensors.torch.load_file(path / f"{part}.safetensors").items():
            out[f"{part}:{name}"] = t
    return out


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Final state of an uninterrupted STEPS-step run of the tiny problem."""
    torch.set_num_threads(2)
    run_dir = tmp_path_factory.mktemp("reference")
    _train(run_dir)
    assert ck.list_checkpoints(run_dir)[0].name == ck.checkpoint_name(STEPS)
    return _final(run_dir)


def _worker(run_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(run_dir), "--steps", str(STEPS),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ck.list_checkpoints(run_dir):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- resume


def test_resume_is_bit_identical(tmp_path, reference):
    _train(tmp_path, steps=STEPS // 2)
    _train(tmp_path, resume=True)
    _assert_same(_final(tmp_path), reference)


def test_returned_model_holds_ema_weights(tmp_path):
    model = _train(tmp_path, steps=10)
    ema = safetensors.torch.load_file(ck.list_checkpoints(tmp_path)[0] / "ema.safetensors")
    assert not model.training
    for name, p in model.named_parameters():
        assert torch.equal(p, ema[name])


def test_sigterm_writes_final_checkpoint_and_resumes(tmp_path, reference):
    proc = _worker(tmp_path, "--delay", "0.05")
    _wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err
    stopped = ck.checkpoint_step(ck.list_checkpoints(tmp_path)[0])
    assert 10 <= stopped < STEPS
    assert "--resume" in err
    _train(tmp_path, resume=True)
    _assert_same(_final(tmp_path), reference)


def test_ctrl_c_writes_checkpoint_and_resumes(tmp_path, reference):
    model, loss_fn, n = tiny_problem()
    calls = []

    def loss(model, idx, gen, step):
        calls.append(1)
        if len(calls) == 13:  # Ctrl-C during step 12: the loop stops before step 13
            os.kill(os.getpid(), signal.SIGINT)
        return loss_fn(model, idx, gen, step)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="SIGINT at step 13") as info:
        run_training(model, loss, n, tiny_config(STEPS), tmp_path, progress=False)
    assert info.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before
    assert ck.list_checkpoints(tmp_path)[0].name == ck.checkpoint_name(13)
    _train(tmp_path, resume=True)
    _assert_same(_final(tmp_path), reference)


def test_sigkill_at_random_point_then_resume(tmp_path, reference):
    proc = _worker(tmp_path, "--delay", "0.02")
    _wait_for_checkpoint(tmp_path, proc)
    time.sleep(random.uniform(0.0, 0.6))
    proc.kill()
    proc.communicate(timeout=60)
    for path in ck.list_checkpoints(tmp_path):  # every visible checkpoint is complete
        ck.load_checkpoint(path, _shapes())
    _train(tmp_path, resume=True)
    assert not [p for p in (tmp_path / ck.CHECKPOINTS).iterdir() if p.name.startswith(".")]
    _assert_same(_final(tmp_path), reference)
    logged = [json.loads(line)["step"] for line in
              (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(5, STEPS + 1, 5))  # lines past the checkpoint were dropped


# ------------------------------------------------------------------------- corruption


def test_corrupt_latest_falls_back_to_previous(tmp_path, reference, caplog):
    _train(tmp_path, steps=30)
    latest = ck.list_checkpoints(tmp_path)[0]
    data = (latest / "model.safetensors").read_bytes()
    (latest / "model.safetensors").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="ambient.checkpoint"):
        _train(tmp_path, resume=True)
    assert "model.safetensors" in caplog.text and "previous" in caplog.text
    _assert_same(_final(tmp_path), reference)


def test_flipped_byte_is_detected(tmp_path):
    _train(tmp_path, steps=10)
    path = ck.list_checkpoints(tmp_path)[0] / "ema.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AmbientError, match=r"ema\.safetensors is corrupt.*checksum") as info:
        ck.load_latest(tmp_path, _shapes())
    assert "no usable checkpoint" in str(info.value)


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_are_refused_never_executed(tmp_path):
    _train(tmp_path, steps=10)
    ckpt = ck.list_checkpoints(tmp_path)[0]
    marker = tmp_path / "executed"
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    with pytest.raises(AmbientError, match=r"refusing to load .*model\.safetensors.*pickle"):
        _train(tmp_path, steps=20, resume=True)
    torch.save({"w": torch.zeros(2)}, ckpt / "model.safetensors")  # a zip archive
    with pytest.raises(AmbientError, match="refusing to load"):
        ck.load_checkpoint(ckpt, {})
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(AmbientError, match=r"model\.pt.*never loads pickle"):
        ck.load_checkpoint(ckpt, {})
    assert not marker.exists()


def test_different_model_is_refused(tmp_path):
    _train(tmp_path, steps=10)
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Dropout(0.1), nn.Linear(8, 4))
    _, loss_fn, n = tiny_problem()
    with pytest.raises(AmbientError, match=r"parameter '0\.weight' has shape \[16, 4\]"):
        run_training(model, loss_fn, n, tiny_config(20), tmp_path, resume=True, progress=False)


def test_other_format_version_is_refused(tmp_path):
    _train(tmp_path, steps=10)
    state_path = ck.list_checkpoints(tmp_path)[0] / ck.STATE_FILE
    state = json.loads(state_path.read_text())
    state["format_version"] = 99
    state_path.write_text(json.dumps(state))
    with pytest.raises(AmbientError, match="'format_version' is 99"):
        _train(tmp_path, steps=20, resume=True)


def test_existing_run_needs_resume(tmp_path):
    _train(tmp_path, steps=10)
    with pytest.raises(AmbientError, match=r"already holds checkpoints.*resume"):
        _train(tmp_path, steps=20)


# --------------------------------------------------------------------- non-finite loss


def _nan_at(steps: set[int]):
    model, loss_fn, n = tiny_problem()
    calls = []

    def loss(model, idx, gen, step):
        value, stats = loss_fn(model, idx, gen, step)
        calls.append(len(calls))
        if calls[-1] in steps:
            value = value * float("nan")
        return value, stats

    return model, loss, n


def test_nonfinite_loss_never_reaches_weights(tmp_path, caplog):
    model, loss_fn, n = _nan_at({5})
    cfg = tiny_config(8, checkpoint_every=1, keep_checkpoints=10, log_every=8)
    with caplog.at_level(logging.WARNING, logger="ambient.engine"):
        run_training(model, loss_fn, n, cfg, tmp_path, progress=False)
    assert "step 5: non-finite" in caplog.text and "mse=" in caplog.text

    def load(step: int) -> dict[str, torch.Tensor]:
        path = tmp_path / ck.CHECKPOINTS / ck.checkpoint_name(step)
        return {f"{part}:{k}": v for part in ck.PARTS
                for k, v in safetensors.torch.load_file(path / f"{part}.safetensors").items()}

    before, after, later = load(5), load(6), load(7)
    for key in before:  # step 5 (the 6th) skipped: weights and optimizer state untouched
        if key.startswith(("model:", "optimizer:")):
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(after["model:0.weight"], later["model:0.weight"])
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["skipped"] == 1 and record["step"] == 8


def test_persistent_nonfinite_loss_aborts(tmp_path):
    model, loss_fn, n = _nan_at(set(range(100)))
    cfg = tiny_config(50, max_nonfinite_steps=4)
    with pytest.raises(AmbientError, match="non-finite for 4 consecutive steps"):
        run_training(model, loss_fn, n, cfg, tmp_path, progress=False)


# -------------------------------------------------------------------------- disk


def test_unwritable_run_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    model, loss_fn, n = tiny_problem()
    calls = []

    def loss(model, idx, gen, step):
        calls.append(1)
        return loss_fn(model, idx, gen, step)

    with pytest.raises(AmbientError, match="not writable"):
        run_training(model, loss, n, tiny_config(5), blocker / "run", progress=False)
    assert not calls


def test_no_free_space_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda _: SimpleNamespace(free=1024))
    with pytest.raises(AmbientError, match="not enough free disk space"):
        _train(tmp_path, steps=5)


def test_disk_full_while_checkpointing_keeps_previous(tmp_path, monkeypatch):
    real_write = ck.write_durably

    def full_disk(path: Path, data: bytes) -> None:
        if ck.checkpoint_name(20) in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    monkeypatch.setattr(ck, "write_durably", full_disk)
    with pytest.raises(AmbientError, match=r"No space left.*step_00000010 is intact"):
        _train(tmp_path, steps=30)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == [ck.checkpoint_name(10)]
    assert (tmp_path / ck.CHECKPOINTS / ck.LATEST).read_text().strip() == ck.checkpoint_name(10)
    assert not [p for p in (tmp_path / ck.CHECKPOINTS).iterdir() if p.name.startswith(".")]
    assert ck.load_latest(tmp_path, _shapes()).step == 10


def test_rotation_keeps_newest(tmp_path):
    _train(tmp_path, steps=12, checkpoint_every=2, keep_checkpoints=2)
    names = [p.name for p in ck.list_checkpoints(tmp_path)]
    assert names == [ck.checkpoint_name(12), ck.checkpoint_name(10)]
    assert (tmp_path / ck.CHECKPOINTS / ck.LATEST).read_text().strip() == names[0]
    config = json.loads((tmp_path / ck.CONFIG_FILE).read_text())
    assert config["engine"]["keep_checkpoints"] == 2 and config["format_version"] == 1


# ---------------------------------------------------------------------------- batches


def test_batch_schedule_covers_each_epoch_and_is_stateless():
    schedule = BatchSchedule(num_examples=10, batch_size=4, seed=3)
    stream = torch.cat([schedule.indices(k) for k in range(5)])  # 2 epochs exactly
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    fresh = BatchSchedule(num_examples=10, batch_size=4, seed=3)
    assert torch.equal(fresh.indices(3), schedule.indices(3))
    assert not torch.equal(BatchSchedule(10, 4, seed=4).indices(0), schedule.indices(0))


def test_config_validation():
    with pytest.raises(AmbientError, match=r"engine\.batch_size"):
        EngineConfig(batch_size=0).validate()
    with pytest.raises(AmbientError, match=r"engine\.cooldown must be in \[0, 1\)"):
        EngineConfig(cooldown=1.0).validate()
    with pytest.raises(AmbientError, match=r"engine\.mixed_precision"):
        EngineConfig(mixed_precision="fp8").validate()  # type: ignore[arg-type]


def test_learning_rate_warms_up_then_cools_down_linearly():
    cfg = EngineConfig(steps=100, lr=1.0, warmup_steps=10, cooldown=0.2)
    rates = [learning_rate(cfg, k) for k in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10:81] == [1.0] * 71  # constant until the last 20 steps
    assert rates[81:] == pytest.approx([(100 - k) / 20 for k in range(81, 100)])
    assert rates[99] == pytest.approx(0.05)
    assert learning_rate(EngineConfig(steps=100, lr=1.0, warmup_steps=0), 99) == 1.0
    # overlapping ramps: the lesser applies
    short = EngineConfig(steps=10, lr=1.0, warmup_steps=10, cooldown=0.5)
    assert [learning_rate(short, k) for k in (0, 5, 6, 7, 9)] == pytest.approx(
        [0.1, 0.6, 0.7, 0.6, 0.2])


def test_cooldown_reaches_the_optimiser(tmp_path, reference):
    _train(tmp_path, cooldown=0.5)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").open()]
    assert lrs[-1] == pytest.approx(1e-2 / 20)  # the last step's LR: lr / (0.5 * 40)
    assert lrs[-2] > lrs[-1]
    final = _final(tmp_path)
    assert not torch.equal(final["model:0.bias"], reference["model:0.bias"])


def test_precision_can_change_within_a_process(tmp_path):
    _train(tmp_path / "bf16", steps=2, mixed_precision="bf16")
    _train(tmp_path / "fp32", steps=2)
    config = json.loads((tmp_path / "bf16" / ck.CONFIG_FILE).read_text())
    assert config["engine"]["mixed_precision"] == "bf16"


def test_a_process_leaves_its_group_before_exiting(tmp_path):
    """leave_process_group ends a gloo group (so its threads never outlive the interpreter)
    and is a no-op without one; run in a fresh process, which a group would outlive."""
    code = (
        "import torch.distributed as dist\n"
        "from ambient.engine import leave_process_group\n"
        "leave_process_group()\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}',"
        " rank=0, world_size=1)\n"
        "assert dist.is_initialized()\n"
        "leave_process_group()\n"
        "print('left' if not dist.is_initialized() else 'still in')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "left"
