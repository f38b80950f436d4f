"""Run directories and checkpoints: safetensors and JSON only, written atomically, never pickles.

Layout of a run directory::

    run_dir/config.json                          full config (engine + run), ambient/format version
    run_dir/checkpoints/step_00001000/
        model.safetensors                        trainable parameters (a LoRA model: the adapters)
        ema.safetensors                          their EMA (absent when EMA is off)
        optimizer.safetensors                    optimizer state tensors, named "<param>/<key>"
        state.json                               step, versions, config hash, sha256 of each file,
                                                 optimizer param groups and scalars, extra state
    run_dir/checkpoints/latest                   name of the newest checkpoint (for people/tools)

A checkpoint is written into a hidden temporary directory and renamed into place with
``os.replace``, so a directory named ``step_*`` is always complete; loaders take the highest
step whose files verify (checksums) and fall back to older ones. ``safetensors`` files hold raw
tensors only, and anything that looks like a pickle or a zip (``torch.save``) is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor

from ambient import __version__
from ambient.errors import AmbientError
from ambient.files import atomic_write_text, fsync_dir, write_durably

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "state.json"
PARTS = ("model", "ema", "optimizer")
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class CorruptCheckpoint(AmbientError):
    """A checkpoint whose files are missing, truncated or fail their checksum (an older one may
    still be good)."""


@dataclass
class Checkpoint:
    """Everything needed to continue a run. Tensor dicts are keyed by parameter name."""

    step: int
    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    optimizer: dict[str, Tensor] = field(default_factory=dict)  # "<param>/<key>" -> tensor
    optimizer_meta: dict[str, Any] = field(default_factory=dict)  # param groups + scalar state
    extra: dict[str, Any] = field(default_factory=dict)  # JSON state, e.g. the fp16 grad scaler
    config_hash: str = ""
    path: Path | None = None


# ----------------------------------------------------------------------------------- files


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` with :func:`ambient.files.atomic_write_text`."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CorruptCheckpoint(f"{path} is missing")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpoint(f"{path} is not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise CorruptCheckpoint(f"{path} should hold a JSON object, found {type(obj).__name__}")
    return obj


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable hash of a JSON-serialisable config (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- run config


def write_run_config(run_dir: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``run_dir/config.json`` atomically: ``config`` plus the ambient and format versions."""
    full = {**config, "ambient_version": __version__, "format_version": FORMAT_VERSION}
    atomic_write_json(Path(run_dir) / CONFIG_FILE, full)
    return full


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """Read and check ``run_dir/config.json`` (exists, JSON object, same format version)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise AmbientError(f"{path} not found: {run_dir} is not an ambient run directory; fix: "
                           "pass the directory that `ambient train` wrote (it holds config.json)")
    try:
        config = _read_json(path)
    except CorruptCheckpoint as e:
        raise AmbientError(f"{e}; fix: restore config.json of this run") from e
    _check_format_version(config.get("format_version"), path)
    return config


def _check_format_version(version: object, path: Path) -> None:
    if version != FORMAT_VERSION:
        raise AmbientError(f"{path}: field 'format_version' is {version!r}, this ambient "
                           f"({__version__}) reads format {FORMAT_VERSION}; fix: use the ambient "
                           "version that wrote the run, or train a new run")


# ------------------------------------------------------------------------- run dir checks


def checkpoint_bytes(params: Iterable[Tensor], ema: bool = True) -> int:
    """Estimated size of one checkpoint: the parameters, their EMA and two Adam moments."""
    copies = 3 + int(ema)
    return copies * sum(p.numel() * p.element_size() for p in params)


def check_run_dir(run_dir: Path, bytes_per_checkpoint: int, count: int) -> None:
    """Fail early, before any training, if ``run_dir`` cannot be created or written, or if its
    disk has no room for ``count`` more checkpoints."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        write_durably(probe, b"ok")
        probe.unlink()
    except OSError as e:
        raise AmbientError(f"run directory {run_dir} is not writable ({e.strerror or e}); fix: "
                           "choose a directory you can write to (--run-dir)") from e
    need = count * bytes_per_checkpoint + (16 << 20)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise AmbientError(f"not enough free disk space in {run_dir}: {free / 2**20:.1f} MiB free, "
                           f"{need / 2**20:.1f} MiB needed for {count} checkpoint(s) of "
                           f"{bytes_per_checkpoint / 2**20:.1f} MiB; fix: free space, pick another "
                           "run dir, or lower keep_checkpoints")


# ------------------------------------------------------------------------------ optimizer


def optimizer_to_tensors(optimizer: torch.optim.Optimizer,
                         names: list[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer``'s state into named tensors ``"<param>/<key>"`` and JSON metadata
    (param groups with parameter names in place of indices, non-tensor state values).
    ``names`` are the names of the optimizer's parameters in order."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{names[index]}/{key}"] = value
            else:
                scalars.setdefault(names[index], {})[key] = value
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, names: list[str],
                           tensors: Mapping[str, Tensor], meta: Mapping[str, Any],
                           source: Path) -> None:
    """Load state written by :func:`optimizer_to_tensors` into ``optimizer`` (whose param groups,
    i.e. the current hyper-parameters, are kept). ``source`` names the file in errors."""
    saved = [name for group in meta.get("param_groups", []) for name in group.get("params", [])]
    if saved != names:
        raise AmbientError(f"{source}: field 'param_groups' lists {len(saved)} parameters that "
                           f"do not match the model's {len(names)} trainable ones; the checkpoint "
                           "comes from a different model or set of trainable parameters")
    index = {name: i for i, name in enumerate(names)}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, part = key.rpartition("/")
        state.setdefault(index[name], {})[part] = value
    for name, values in meta.get("scalars", {}).items():
        state.setdefault(index[name], {}).update(values)
    sd = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


# ------------------------------------------------------------------------------ checkpoints


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint directory named by :func:`checkpoint_name`."""
    return int(path.name[5:])


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, newest (highest step) first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
             and p.name[5:].isdigit()]
    return sorted(found, key=checkpoint_step, reverse=True)


def _serialise(tensors: Mapping[str, Tensor], path: Path) -> str:
    """Write ``tensors`` as safetensors to ``path`` (fsynced); returns the file's sha256."""
    data = safetensors.torch.save(
        {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()})
    write_durably(path, data)
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(run_dir: Path, ckpt: Checkpoint, keep: int) -> Path:
    """Write ``ckpt`` as ``checkpoints/step_XXXXXXXX`` atomically, point ``latest`` at it and keep
    the newest ``keep`` checkpoints. A failure (e.g. a full disk) leaves the older checkpoints
    untouched and raises :class:`AmbientError`."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(ckpt.step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        parts = {"model": ckpt.model, "ema": ckpt.ema, "optimizer": ckpt.optimizer}
        files = {f"{part}.safetensors": _serialise(tensors, tmp / f"{part}.safetensors")
                 for part, tensors in parts.items() if tensors is not None}
        state = {"step": ckpt.step, "format_version": FORMAT_VERSION,
                 "ambient_version": __version__, "config_hash": ckpt.config_hash,
                 "files": files, "optimizer": ckpt.optimizer_meta, "extra": ckpt.extra}
        write_durably(tmp / STATE_FILE, json.dumps(state, indent=2, sort_keys=True).encode())
        _replace_dir(tmp, final)
        _write_latest(root, final.name)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = next((p for p in list_checkpoints(run_dir) if p != final), None)
        kept = (f"the previous checkpoint {previous} is intact" if previous
                else "there is no older checkpoint")
        raise AmbientError(f"could not write checkpoint {final} ({e.strerror or e}); {kept}; "
                           "fix: free disk space or check the run dir's permissions, then resume "
                           "(--resume)") from e
    _rotate(run_dir, keep)
    return final


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` (same step written again) is replaced."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def _write_latest(root: Path, name: str) -> None:
    atomic_write_text(root / LATEST, name + "\n")


def _rotate(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[max(keep, 1):]:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete half-written checkpoints left by a killed process (hidden ``.tmp-*`` / ``.old-*``)."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def _refuse_pickle(path: Path, head: bytes) -> None:
    """Refuse anything that is not a safetensors file by its first bytes: a pickle starts with
    0x80 (protocol >= 2), ``torch.save`` writes a zip ("PK"); safetensors starts with an 8-byte
    header length followed by ``{``."""
    if head[:1] == b"\x80" or head[:2] == b"PK" or (len(head) > 8 and head[8:9] != b"{"):
        raise AmbientError(f"refusing to load {path}: it is not a safetensors file (it looks like "
                           "a pickle or torch.save archive, which can run arbitrary code); "
                           "ambient only reads safetensors. Fix: remove it and use a checkpoint "
                           "written by ambient")


def _read_tensors(path: Path, sha256: str | None) -> dict[str, Tensor]:
    if not path.is_file():
        pickles = sorted(p.name for p in path.parent.iterdir()
                         if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise AmbientError(f"{path} is missing and {path.parent} holds {', '.join(pickles)}: "
                               "ambient never loads pickle files; fix: use a run written by "
                               "ambient")
        raise CorruptCheckpoint(f"{path} is missing")
    data = path.read_bytes()
    _refuse_pickle(path, data[:9])
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptCheckpoint(f"{path} is corrupt (checksum mismatch; truncated or modified)")
    try:
        return safetensors.torch.load(data)
    except SafetensorError as e:
        raise CorruptCheckpoint(f"{path} is corrupt or truncated ({e})") from e


def _check_shapes(tensors: Mapping[str, Tensor], expected: Mapping[str, torch.Size],
                  path: Path) -> None:
    """Names and shapes in ``path`` must match the model's trainable parameters exactly."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        what = (f"parameter '{missing[0]}' is missing" if missing
                else f"it has parameter '{extra[0]}' the model does not have")
        raise AmbientError(f"{path} does not match the model: {what} ({len(missing)} missing, "
                           f"{len(extra)} unexpected); the run dir was made by a different model "
                           "or trainable-parameter set; fix: use the same model settings or a "
                           "new run dir")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise AmbientError(f"{path}: parameter '{name}' has shape {list(tensors[name].shape)}"
                               f" but the model's has {list(shape)}; the run dir was made by a "
                               "different model; fix: use the same model settings or a new "
                               "run dir")


def load_checkpoint(path: Path, expected: Mapping[str, torch.Size],
                    parts: Iterable[str] = PARTS) -> Checkpoint:
    """Read and verify one checkpoint directory (only the ``parts`` asked for; ``ema`` is None
    when the run had EMA off). ``expected`` maps trainable parameter names to shapes.
    Raises :class:`CorruptCheckpoint` for damaged files, :class:`AmbientError` otherwise."""
    path = Path(path)
    state = _read_json(path / STATE_FILE)
    _check_format_version(state.get("format_version"), path / STATE_FILE)
    files = state.get("files", {})
    if not isinstance(files, dict):
        raise CorruptCheckpoint(f"{path / STATE_FILE}: field 'files' should be an object")
    ckpt = Checkpoint(step=int(state.get("step", -1)), model={},
                      optimizer_meta=state.get("optimizer", {}), extra=state.get("extra", {}),
                      config_hash=str(state.get("config_hash", "")), path=path)
    for part in parts:
        fname = f"{part}.safetensors"
        if part == "ema" and fname not in files:
            continue
        tensors = _read_tensors(path / fname, files.get(fname))
        if part == "optimizer":
            ckpt.optimizer = tensors
            continue
        _check_shapes(tensors, expected, path / fname)
        setattr(ckpt, part, tensors)
    return ckpt


def load_latest(run_dir: Path, expected: Mapping[str, torch.Size],
                parts: Iterable[str] = PARTS) -> Checkpoint | None:
    """The newest checkpoint of ``run_dir`` that verifies, or None if there is none. Damaged
    checkpoints are skipped with a warning; if all are damaged, an :class:`AmbientError` lists
    them."""
    parts = tuple(parts)
    candidates = list_checkpoints(run_dir)
    problems = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path, expected, parts)
        except CorruptCheckpoint as e:
            problems.append(str(e))
            logger.warning("skipping damaged checkpoint: %s; trying the previous one", e)
            continue
        if problems:
            logger.warning("using checkpoint %s (step %d) instead of the damaged newer one(s)",
                           path, ckpt.step)
        return ckpt
    if problems:
        raise AmbientError(f"no usable checkpoint in {Path(run_dir) / CHECKPOINTS}: "
                           + "; ".join(problems) + "; fix: restore a checkpoint or start a new run")
    return None
