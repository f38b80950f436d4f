"""The generic training loop: any model, any per-batch loss, 1 CPU to many GPUs (accelerate).

The caller supplies ``loss_fn(model, batch_indices, generator, step) -> (loss, stats)``; the engine owns
the rest: optimiser (Adam on the trainable parameters only), linear LR warm-up, gradient
clipping, EMA, mixed precision, checkpoints and exact resume, signals, logging.

Determinism without pickled RNG state. Everything random in step ``k`` (0-based) is a function
of ``(seed, k)``:

* the global batch of step ``k`` is positions ``k*B .. k*B + B - 1`` of an endless stream of
  epochs, epoch ``e`` being a permutation of the examples drawn from ``(seed, e)`` (every example
  is seen once per epoch); process ``r`` of ``P`` takes slice ``r`` of ``B // P`` of it;
* ``loss_fn``'s generator is seeded from ``(seed, k, r)``, and so is torch's global RNG (dropout);
* the LR and the EMA decay are functions of ``k``; optimiser and EMA state are checkpointed.

So resuming from the checkpoint after step ``k`` reproduces the uninterrupted run bit for bit
(on the same hardware and thread count).

Stopping. SIGTERM or SIGINT (Ctrl-C) makes the loop finish at the next step boundary (all
processes agree on the step), write a checkpoint and raise :class:`TrainingInterrupted`, whose
``exit_code`` is ``128 + signal`` (143 for SIGTERM, 130 for Ctrl-C): the conventional status of
a process ended by that signal, so job schedulers see "terminated", not "done". Resume with
``resume=True``. A second signal acts as usual (immediate stop; checkpoints stay consistent).

EMA. ``decay = 0.5 ** (1 / half-life)`` with half-life ``min(ema_halflife_steps,
ema_rampup * (k + 1))`` (EDM's ramp-up, so short runs are not dominated by the initial weights).
:func:`run_training` returns the caller's model object with the EMA weights copied in.

Several processes: ``torchrun --nproc_per_node N script.py`` (GPUs: NCCL; a machine without an
accelerator: gloo on the CPU) or ``accelerate launch`` with a matching config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import Tensor, nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ambient import checkpoint as ck
from ambient.errors import AmbientError
from ambient.files import atomic_write_text

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Tensor, torch.Generator | None, int],
                  tuple[Tensor, dict[str, Tensor]]]
SampleFn = Callable[[nn.Module, int, Path], None]


@dataclass
class EngineConfig:
    """Optimisation and bookkeeping settings of :func:`run_training`."""

    steps: int = 4000  # optimiser steps in total (a resumed run continues up to this)
    batch_size: int = 128  # global batch, split evenly over processes
    lr: float = 1e-3  # Adam learning rate after warm-up
    warmup_steps: int = 100  # linear LR warm-up from lr/warmup_steps to lr
    cooldown: float = 0.0  # share of the last steps over which the LR falls linearly to 0; 0 = off
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema_halflife_steps: float = 250.0  # EMA decay 0.5 ** (1 / half-life); 0 disables EMA
    ema_rampup: float = 0.1  # early on the half-life is min(half-life, ema_rampup * step); 0 = off
    seed: int = 0  # seeds batches, loss randomness and dropout
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    log_every: int = 25  # steps between metrics lines / TensorBoard points
    sample_every: int = 0  # steps between on_sample calls; 0 disables
    max_nonfinite_steps: int = 20  # consecutive non-finite losses before training aborts
    # on a CUDA device, replay CUDA graphs for the model's calls without autograd (the
    # consistency term's own draws in ambient train and ambient finetune; see ambient.graphs)
    cuda_graphs: bool = True

    def validate(self) -> None:
        """Raise :class:`AmbientError` naming the first field with an impossible value."""
        positive = ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every",
                    "max_nonfinite_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise AmbientError(f"engine.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "grad_clip", "ema_halflife_steps", "ema_rampup",
                     "sample_every"):
            if getattr(self, name) < 0:
                raise AmbientError(f"engine.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise AmbientError(f"engine.lr must be > 0, got {self.lr}")
        if not 0 <= self.cooldown < 1:
            raise AmbientError(f"engine.cooldown must be in [0, 1) (the share of the steps at "
                               f"the end over which the LR falls to 0), got {self.cooldown}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise AmbientError(f"engine.mixed_precision must be 'no', 'fp16' or 'bf16', got "
                               f"{self.mixed_precision!r}")


class TrainingInterrupted(AmbientError):
    """Training stopped by a signal after writing a checkpoint; resume to continue."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"training stopped by {name} at step {step}; checkpoint written to "
                         f"{checkpoint}; continue with resume=True (--resume)")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum


# ------------------------------------------------------------------------- determinism


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple, e.g. ``(seed, "loss", step, rank)`` (stable across runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BatchSchedule:
    """Global batch indices of each step: consecutive slices of a stream of epoch permutations,
    epoch ``e`` drawn from ``(seed, e)`` (see the module docstring)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return self._perms[epoch]

    def indices(self, step: int) -> Tensor:
        """The ``batch_size`` example indices (int64, CPU) of step ``step``."""
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty_like(pos)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._perm(epoch)[offsets[mask]]
        return out


def learning_rate(cfg: EngineConfig, step: int) -> float:
    """The LR of step ``step`` (0-based) of ``n = steps``, the lesser of two linear ramps:

        warm-up    lr * (step + 1) / warmup_steps                (while step < warmup_steps)
        cool-down  lr * (n - step) / (cooldown * n)              (once n - step < cooldown * n)

    and ``lr`` between them. The last step of a cool-down uses ``lr / (cooldown * n)``."""
    rate = cfg.lr
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        rate = min(rate, cfg.lr * (step + 1) / cfg.warmup_steps)
    tail = cfg.cooldown * cfg.steps
    if tail > 0 and cfg.steps - step < tail:
        rate = min(rate, cfg.lr * (cfg.steps - step) / tail)
    return rate


# --------------------------------------------------------------------------------- EMA


class Ema:
    """EMA of named parameters, kept in float32 next to them."""

    def __init__(self, params: dict[str, nn.Parameter], cfg: EngineConfig) -> None:
        self.params, self.cfg = params, cfg
        self.shadow = {n: p.detach().float().clone() for n, p in params.items()}

    def decay(self, step: int) -> float:
        """Decay after optimiser step ``step`` (0-based): ``0.5 ** (1 / half-life)``."""
        halflife = self.cfg.ema_halflife_steps
        if self.cfg.ema_rampup > 0:
            halflife = min(halflife, self.cfg.ema_rampup * (step + 1))
        return 0.5 ** (1.0 / halflife)

    @torch.no_grad()
    def update(self, step: int) -> None:
        weight = 1.0 - self.decay(step)
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach().float(), weight)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for name, p in self.params.items():
            p.copy_(self.shadow[name])

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily put the EMA weights into the parameters."""
        saved = {n: p.detach().clone() for n, p in self.params.items()}
        self.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(saved[name])


# ----------------------------------------------------------------------------- signals


class StopSignals:
    """Within the block, the first SIGTERM/SIGINT only records ``signum`` (checked once per step);
    handlers are then restored so a second signal acts as usual. Inactive off the main thread."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


# ----------------------------------------------------------------------------- metrics


# the fields of a metrics.jsonl record besides "loss" and the loss's terms (Metrics.flush)
RECORD_FIELDS = ("step", "lr", "grad_norm", "images_per_s", "skipped")


class Metrics:
    """Window averages written to ``metrics.jsonl``, TensorBoard (``logs/``) and the progress bar
    (main process only). Records after ``start_step`` left by an interrupted run are dropped."""

    def __init__(self, run_dir: Path, enabled: bool, bar: tqdm, start_step: int) -> None:
        self.enabled, self.bar = enabled, bar
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            _truncate_metrics(self.path, start_step)
            self.writer = SummaryWriter(str(run_dir / "logs"), purge_step=start_step + 1)
        self._reset()

    def _reset(self) -> None:
        self.loss = self.grad_norm = self.seconds = 0.0
        self.ok = self.skipped = self.images = 0
        self.parts: dict[str, Tensor] = {}

    def add(self, loss: float, grad_norm: float, stats: dict[str, Tensor], images: int,
            seconds: float) -> None:
        """Record one finished optimiser step (``stats`` stay on the device until logged)."""
        self.loss += loss
        self.grad_norm += grad_norm
        self.ok += 1
        self.images += images
        self.seconds += seconds
        for key, value in stats.items():
            value = value.detach().float()
            self.parts[key] = self.parts[key] + value if key in self.parts else value

    def skip(self, seconds: float) -> None:
        self.skipped += 1
        self.seconds += seconds

    def flush(self, step: int, lr: float) -> None:
        """Write the window's averages at ``step`` (number of completed steps) and start anew."""
        if self.enabled and (self.ok or self.skipped):
            n = max(self.ok, 1)
            fields = (step, lr, self.grad_norm / n, self.images / max(self.seconds, 1e-9),
                      self.skipped)
            record: dict[str, float | int] = {"loss": self.loss / n,
                                              **dict(zip(RECORD_FIELDS, fields, strict=True))}
            for key, total in self.parts.items():  # a "loss" stat keeps the global mean
                record.setdefault(key, float(total) / n)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            assert self.writer is not None
            for key, value in record.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, step)
            self.bar.set_postfix(loss=f"{record['loss']:.4g}",
                                 img_s=f"{record['images_per_s']:.0f}", refresh=False)
        self._reset()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the lines of ``path`` up to ``last_step`` (drops a line cut short by a kill too)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, TypeError, KeyError):
            if json.loads(line)["step"] <= last_step:
                kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


# ------------------------------------------------------------------------------- engine


def _accelerator(mixed_precision: str) -> Accelerator:
    """An :class:`Accelerator` with this precision.

    Launched by torchrun/``accelerate launch`` on a machine without an accelerator, the
    processes are told to use the CPU (gloo), which accelerate otherwise only does with
    ``--cpu``: without it each process would train alone. accelerate keeps one state per
    process and refuses a second precision in it (a notebook or a test session training fp32
    then bf16); that state holds no training data, so it is reset (the process group stays)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if (AcceleratorState._shared_state
            and AcceleratorState().mixed_precision != mixed_precision):
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision,
                       cpu=distributed and not torch.accelerator.is_available())


def leave_process_group() -> None:
    """Leave the process group torchrun/``accelerate launch`` had this process join, if any.

    Call it once the process's work is done, before it exits: a gloo group left to the
    interpreter's teardown can abort a process whose work is finished ("terminate called
    without an active exception", exit -6), which fails the whole launch."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class StepResult(NamedTuple):
    """What one step did; ``loss`` is the mean over processes (NaN when not computed)."""

    outcome: Literal["ok", "nonfinite", "stop"]
    loss: float
    stats: dict[str, Tensor]  # this process's detached loss parts
    grad_norm: float


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Named parameters with ``requires_grad`` (the ones optimised, EMA'd and checkpointed)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class _Run:
    """State of one training run (built by :func:`run_training`)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, num_examples: int, cfg: EngineConfig,
                 run_dir: Path, run_config: dict[str, Any] | None) -> None:
        self.cfg, self.run_dir, self.loss_fn = cfg, Path(run_dir), loss_fn
        self.acc = _accelerator(cfg.mixed_precision)
        nproc = self.acc.num_processes
        if cfg.batch_size % nproc:
            raise AmbientError(f"engine.batch_size={cfg.batch_size} is not divisible by the "
                               f"{nproc} processes; fix: use a multiple of {nproc}")
        if num_examples < 1:
            raise AmbientError("the dataset is empty; fix: pass at least one example")
        self.local_batch = cfg.batch_size // nproc
        self.schedule = BatchSchedule(num_examples, cfg.batch_size, cfg.seed)
        model.to(self.acc.device)
        self.params = trainable_parameters(model)
        if not self.params:
            raise AmbientError("the model has no trainable parameters (requires_grad=True)")
        self.names = list(self.params)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.lr)
        self.ema = Ema(self.params, cfg) if cfg.ema_halflife_steps > 0 else None
        self.config = {"engine": asdict(cfg), **(run_config or {})}
        self.config_hash = ck.config_hash(self.config)
        self.start_step = 0
        self.unwrapped = model
        self.model = model  # replaced by the prepared (possibly DDP-wrapped) module

    def prepare(self) -> None:
        self.model, self.optimizer = self.acc.prepare(self.unwrapped, self.optimizer)

    # ------------------------------------------------------------------ checkpoints

    def restore(self, resume: bool) -> None:
        """Check the run dir, load the latest good checkpoint if resuming, write config.json."""
        cfg, run_dir = self.cfg, self.run_dir
        existing = ck.list_checkpoints(run_dir)
        if existing and not resume:
            raise AmbientError(f"{run_dir} already holds checkpoints (newest {existing[0].name}); "
                               "fix: pass resume=True (--resume) to continue it, or choose a new "
                               "run dir")
        if self.acc.is_main_process:  # room for the checkpoints to come (a new one is written
            # before the oldest goes)
            size = ck.checkpoint_bytes(self.params.values(), self.ema is not None)
            ck.check_run_dir(run_dir, size, max(1, cfg.keep_checkpoints + 1 - len(existing)))
            ck.remove_stale_temporaries(run_dir)
        if resume:
            self._load()
        if self.acc.is_main_process:
            ck.write_run_config(run_dir, self.config)
        self.acc.wait_for_everyone()

    def _load(self) -> None:
        shapes = {n: p.shape for n, p in self.params.items()}
        ckpt = ck.load_latest(self.run_dir, shapes)
        if ckpt is None:
            logger.info("nothing to resume in %s: starting from step 0", self.run_dir)
            return
        if ckpt.config_hash != self.config_hash:
            changed = _changed_keys(ck.read_run_config(self.run_dir), self.config)
            logger.warning("resuming %s with settings other than those of %s: %s", self.run_dir,
                           ckpt.path, ", ".join(changed) or "see config.json")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(ckpt.model[name])
        if self.ema is not None:
            if ckpt.ema is None:
                logger.warning("%s has no EMA; starting the EMA from the weights", ckpt.path)
                self.ema = Ema(self.params, self.cfg)
            else:
                self.ema.shadow = {n: t.to(self.acc.device, torch.float32)
                                   for n, t in ckpt.ema.items()}
        assert ckpt.path is not None
        ck.optimizer_from_tensors(self.optimizer, self.names, ckpt.optimizer,
                                  ckpt.optimizer_meta, ckpt.path / "optimizer.safetensors")
        scaler_state = ckpt.extra.get("grad_scaler")
        if scaler_state and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(scaler_state)
        self.start_step = ckpt.step
        logger.info("resuming from %s (step %d)", ckpt.path, ckpt.step)

    def save(self, step: int) -> Path:
        """Write the checkpoint after ``step`` completed steps (main process only)."""
        tensors, meta = ck.optimizer_to_tensors(self.optimizer, self.names)
        extra = {"grad_scaler": self.acc.scaler.state_dict()} if self.acc.scaler else {}
        ckpt = ck.Checkpoint(step=step, model={n: p for n, p in self.params.items()},
                             ema=self.ema.shadow if self.ema else None, optimizer=tensors,
                             optimizer_meta=meta, extra=extra, config_hash=self.config_hash)
        return ck.save_checkpoint(self.run_dir, ckpt, self.cfg.keep_checkpoints)

    # ------------------------------------------------------------------------ steps

    def step(self, step: int, stop: int) -> StepResult:
        """Run step ``step`` (``stop``: this process got a signal). All processes agree on the
        outcome: "ok", "nonfinite" (no update) or "stop" (some process got a signal)."""
        acc, cfg = self.acc, self.cfg
        rank = acc.process_index
        torch.manual_seed(derive_seed(cfg.seed, "global", step, rank))
        lo = rank * self.local_batch
        idx = self.schedule.indices(step)[lo:lo + self.local_batch].to(acc.device)
        gen = torch.Generator(acc.device).manual_seed(derive_seed(cfg.seed, "loss", step, rank))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        loss, stats = self.loss_fn(self.model, idx, gen, step)
        local = loss.detach().float()
        finite = torch.isfinite(local)
        flags = torch.stack([torch.where(finite, local, torch.zeros_like(local)),
                             (~finite).float(), torch.tensor(float(stop), device=local.device)])
        total, nonfinite, stopping = acc.reduce(flags, reduction="sum").tolist()
        if stopping:
            return StepResult("stop", math.nan, stats, math.nan)
        if nonfinite:
            return StepResult("nonfinite", math.nan, stats, math.nan)
        acc.backward(loss)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = float(acc.clip_grad_norm_(list(self.params.values()), max_norm))
        if not math.isfinite(grad_norm) and acc.scaler is None:
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult("nonfinite", total / acc.num_processes, stats, grad_norm)
        self.optimizer.step()  # with an fp16 grad scaler, skipped on inf/nan gradients
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and not acc.optimizer_step_was_skipped:
            self.ema.update(step)
        return StepResult("ok", total / acc.num_processes, stats, grad_norm)

    def sample(self, on_sample: SampleFn, step: int) -> None:
        """Call ``on_sample`` with the EMA weights in the model, in eval mode, without grads."""
        swap = self.ema.swapped_in() if self.ema else contextlib.nullcontext()
        self.unwrapped.eval()
        try:
            with swap, torch.no_grad():
                on_sample(self.unwrapped, step, self.run_dir)
        finally:
            self.unwrapped.train()


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (versions ignored)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in ("ambient_version", "format_version"):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, list) and isinstance(b, tuple) and a == list(b)):
            out.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return out


def _format_stats(stats: dict[str, Tensor]) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in stats.items())


def run_training(
    model: nn.Module,
    loss_fn: LossFn,
    num_examples: int,
    cfg: EngineConfig,
    run_dir: Path,
    resume: bool = False,
    run_config: dict[str, Any] | None = None,
    on_sample: SampleFn | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` for ``cfg.steps`` optimiser steps of ``loss_fn`` and return it with its EMA
    weights loaded (the plain weights if EMA is off), in eval mode.

    ``loss_fn(model, batch_indices, generator, step)`` gets the prepared model (DDP-wrapped when
    distributed: call it for forward passes, keep your own reference for attributes), this
    process's ``[batch_size // processes]`` int64 example indices on the device, a generator
    on the device seeded per step and process, and the 0-based step (for schedules over
    training); it returns a scalar loss and detached stats.
    ``run_config`` (JSON-serialisable) is stored in ``run_dir/config.json`` next to ``cfg``.
    ``on_sample(ema_model, step, run_dir)`` runs on the main process every ``cfg.sample_every``
    steps. With ``resume`` the run continues from the newest good checkpoint in ``run_dir``.
    Raises :class:`TrainingInterrupted` after SIGTERM/SIGINT (checkpoint written) and
    :class:`AmbientError` for problems a user can fix."""
    cfg.validate()
    run = _Run(model, loss_fn, num_examples, cfg, run_dir, run_config)
    run.restore(resume)
    run.prepare()
    acc = run.acc
    main = acc.is_main_process
    bar = tqdm(total=cfg.steps, initial=run.start_step, disable=not (progress and main),
               unit="step", dynamic_ncols=True)
    metrics = Metrics(run.run_dir, main, bar, run.start_step)
    redirect = logging_redirect_tqdm() if progress and main else contextlib.nullcontext()
    try:
        with StopSignals() as signals, redirect:
            _loop(run, signals, metrics, bar, on_sample)
    finally:
        metrics.close()
        bar.close()
    if run.ema is not None:
        run.ema.copy_to_params()
    run.unwrapped.eval()
    return run.unwrapped


def _loop(run: _Run, signals: StopSignals, metrics: Metrics, bar: tqdm,
          on_sample: SampleFn | None) -> None:
    cfg, acc = run.cfg, run.acc
    main = acc.is_main_process
    run.model.train()
    nonfinite_run = 0
    for step in range(run.start_step, cfg.steps):
        t0 = time.perf_counter()
        result = run.step(step, signals.signum)
        if result.outcome == "stop":
            signum = signals.signum or signal.SIGTERM
            if main:
                run.save(step)
            acc.wait_for_everyone()
            path = run.run_dir / ck.CHECKPOINTS / ck.checkpoint_name(step)
            raise TrainingInterrupted(signum, step, path)
        done = step + 1
        if result.outcome == "nonfinite":
            nonfinite_run += 1
            metrics.skip(time.perf_counter() - t0)
            if main:
                logger.warning("step %d: non-finite loss or gradient (%s, grad_norm=%.4g); "
                               "step skipped, weights unchanged (%d in a row)", step,
                               _format_stats(result.stats), result.grad_norm, nonfinite_run)
            if nonfinite_run >= cfg.max_nonfinite_steps:
                raise AmbientError(
                    f"the loss was non-finite for {nonfinite_run} consecutive steps (last: step "
                    f"{step}, {_format_stats(result.stats)}); training aborted with the weights "
                    f"of step {step + 1 - nonfinite_run}; fix: lower engine.lr, keep "
                    "engine.grad_clip > 0, use mixed_precision='no', check the data for NaN/inf")
        else:
            nonfinite_run = 0
            metrics.add(result.loss, result.grad_norm, result.stats, cfg.batch_size,
                        time.perf_counter() - t0)
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            metrics.flush(done, learning_rate(cfg, step))
        if (done % cfg.checkpoint_every == 0 or done == cfg.steps) and main:
            run.save(done)
        if on_sample is not None and cfg.sample_every and done % cfg.sample_every == 0 and main:
            run.sample(on_sample, done)
    acc.wait_for_everyone()
