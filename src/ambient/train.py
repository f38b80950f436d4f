"""Train a pixel/vector denoiser (``ambient.nets``) on a :class:`~ambient.data.NoisyDataset`.

:func:`train` builds ``EDMPrecond(backbone)`` from the dataset's sample shape and the ``net``
config, and runs :func:`ambient.engine.run_training` with :func:`ambient.objective.training_loss`
on ``y[idx], sigma_n[idx]``. The run directory is self-describing: ``config.json`` holds the
engine, objective, resolved network and data settings plus the sample shape and a summary of
the noise levels, so :func:`load_run` rebuilds the network without any other input.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ambient import checkpoint as ck
from ambient.data import NoisyDataset
from ambient.engine import EngineConfig, SampleFn, run_training, trainable_parameters
from ambient.errors import AmbientError
from ambient.graphs import GraphedInference
from ambient.images import save_grid
from ambient.losses import Denoiser, RefitMemory
from ambient.nets import backbone_config, build_backbone
from ambient.objective import ObjectiveConfig, consistency_at, training_loss
from ambient.precond import EDMPrecond
from ambient.samplers import sample

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a pixel/vector training run (the dataset itself aside)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    net: dict[str, Any] = field(default_factory=lambda: {"kind": "auto"})  # kind + overrides
    data: dict[str, Any] = field(default_factory=dict)  # how the data was given (data, sigma_n,
    # corrupt, seed): recorded so that the run dir describes itself


# ------------------------------------------------------------------------------- config I/O


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON-serialisable dict of ``cfg`` (the inverse of :func:`config_from_dict`)."""
    return asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from a (possibly partial) nested dict, e.g. a user's
    ``--config`` YAML/JSON file. Unknown keys and wrong types raise :class:`AmbientError`
    naming the key and listing the valid ones; missing keys keep their defaults."""
    return _build(TrainConfig, d, "")


def _build(cls: type, d: object, prefix: str) -> Any:
    valid = [f.name for f in fields(cls)]
    where = f"'{prefix[:-1]}'" if prefix else "the config"
    if not isinstance(d, dict):
        raise AmbientError(f"{where} must be a mapping with keys {', '.join(valid)}, got "
                           f"{type(d).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        if key not in valid:
            raise AmbientError(f"unknown config key '{prefix}{key}'; valid keys"
                               f"{' of ' + where if prefix else ''}: {', '.join(valid)}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: object, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted for floats)."""
    if is_dataclass(tp):
        return _build(tp, value, key + ".")  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise AmbientError(f"config key '{key}' must be one of "
                               f"{', '.join(map(repr, choices))}, got {value!r}")
        return value
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,), dict: (dict,)}
    base = origin or tp
    ok = isinstance(value, expected[base]) and (base is bool or not isinstance(value, bool))
    if not ok:
        raise AmbientError(f"config key '{key}' must be {_type_name(tp)}, got "
                           f"{type(value).__name__} {value!r}")
    return float(value) if base is float else value  # type: ignore[arg-type]


def _type_name(tp: Any) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping"}
    return names.get(typing.get_origin(tp) or tp, str(tp))


# ----------------------------------------------------------------------------------- train


DEVICE_DATA_SHARE = 0.25  # training data above this share of a GPU's memory stay in host memory


def keeps_on_host(x: Tensor, device: torch.device) -> bool:
    """Whether training data ``x`` stay in host memory, each batch's rows copied to ``device``,
    instead of moving there whole: on a GPU, when they would take more than
    :data:`DEVICE_DATA_SHARE` of its memory (with a memory-mapped array they are then read from
    disk as batches use them, :func:`ambient.data.load_array`)."""
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return x.numel() * x.element_size() > DEVICE_DATA_SHARE * total


class DatasetLoss:
    """``loss_fn`` of the engine: the objective on rows ``idx`` of the dataset, whose tensors
    move to the device of the indices on first use and stay there (data too large for it stay
    in host memory, :func:`keeps_on_host`, and each batch's rows move); the consistency term follows
    its warm start (:func:`ambient.objective.consistency_at`) over ``total_steps``. With
    ``cuda_graphs`` the model's calls without autograd replay CUDA graphs on a GPU
    (:class:`ambient.graphs.GraphedInference`; of a DDP wrapper, its module's)."""

    def __init__(self, dataset: NoisyDataset, objective: ObjectiveConfig, total_steps: int,
                 cuda_graphs: bool = True) -> None:
        self.y, self.sigma_n, self.objective = dataset.y, dataset.sigma_n, objective
        self.on_host = False  # set on first use, by keeps_on_host
        self.total_steps, self.cuda_graphs = total_steps, cuda_graphs
        self.graphed: GraphedInference | None = None
        self.memory = RefitMemory()  # the consistency term's draws between steps

    def __call__(self, model: nn.Module, idx: Tensor, generator: torch.Generator | None,
                 step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if self.sigma_n.device != idx.device:
            self.sigma_n = self.sigma_n.to(idx.device)
            self.on_host = keeps_on_host(self.y, idx.device)
            if not self.on_host:
                self.y = self.y.to(idx.device)
        y = self.y[idx.cpu()].to(idx.device) if self.on_host else self.y[idx]
        consistency = consistency_at(self.objective.consistency, step, self.total_steps)
        objective = replace(self.objective, consistency=consistency)
        return training_loss(self.denoiser(model), y, self.sigma_n[idx], objective, generator,
                             self.memory)

    def denoiser(self, model: nn.Module) -> Denoiser:
        """``model`` itself off a GPU or without ``cuda_graphs`` (a draw that needs its
        parameters, such as an EMA of them, gets them), else its :class:`GraphedInference`
        (kept while the engine passes the same model, so each graph is recorded once)."""
        if not self.cuda_graphs or next(model.parameters()).device.type != "cuda":
            return model
        if self.graphed is None or self.graphed.eager is not model:
            self.graphed = GraphedInference(getattr(model, "module", model), model)
        return self.graphed


def image_grid_callback(sample_shape: tuple[int, ...], sigma_max: float, count: int = 16,
                        num_steps: int = 18, seed: int = 0) -> SampleFn:
    """``on_sample`` writing ``count`` samples (Heun, ``num_steps`` levels, fixed noise ``seed``)
    as ``run_dir/samples/step_XXXXXXXX.png``."""

    def on_sample(model: nn.Module, step: int, run_dir: Path) -> None:
        device = next(model.parameters()).device
        gen = torch.Generator(device).manual_seed(seed)
        x = sample(model, (count, *sample_shape), num_steps=num_steps, sigma_max=sigma_max,
                   generator=gen, device=device)
        path = save_grid(x, Path(run_dir) / "samples" / f"step_{step:08d}.png")
        logger.info("step %d: samples written to %s", step, path)

    return on_sample


def _build_model(sample_shape: tuple[int, ...], net: dict[str, Any], sigma_data: float,
                 seed: int) -> EDMPrecond:
    """The denoiser, initialised from ``seed`` without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EDMPrecond(build_backbone(sample_shape, **net), sigma_data)


def _levels_summary(sigma_n: Tensor) -> dict[str, float]:
    s = sigma_n.double()
    return {"min": float(s.min()), "max": float(s.max()), "mean": float(s.mean())}


def train(cfg: TrainConfig, dataset: NoisyDataset, run_dir: Path, resume: bool = False,
          progress: bool = True, init_from: Path | str | None = None) -> nn.Module:
    """Train a denoiser on ``dataset`` in ``run_dir`` (or continue it with ``resume``) and
    return the EMA denoiser in eval mode. ``init_from``: warm start from the newest EMA weights
    of another run with the same network (a resumed checkpoint takes precedence). Image data
    get a sample grid every ``cfg.engine.sample_every`` steps in ``run_dir/samples``."""
    obj = cfg.objective
    obj.validate()
    top = float(dataset.sigma_n.max())
    if top >= obj.sigma_max:
        raise AmbientError(f"the data's noise level reaches sigma_n={top:g}, which must be below "
                           f"objective.sigma_max={obj.sigma_max:g} (the highest level the model "
                           "learns); fix: raise objective.sigma_max or check --sigma-n")
    shape = dataset.sample_shape
    net = backbone_config(shape, **cfg.net)
    model = _build_model(shape, net, obj.sigma_data, cfg.engine.seed)
    run_config = {
        **{k: v for k, v in config_to_dict(cfg).items() if k != "engine"},
        "net": net, "sample_shape": list(shape), "is_image": dataset.is_image,
        "num_examples": len(dataset), "source": dataset.source,
        "sigma_n": _levels_summary(dataset.sigma_n),
        "sigma_data": obj.sigma_data, "sigma_max": obj.sigma_max,
    }
    if init_from is not None:
        ckpt, loaded = _load_weights(Path(init_from), model, "ema")
        run_config["init_from"] = {"path": str(ckpt.path), "step": ckpt.step, "weights": loaded}
    on_sample = image_grid_callback(shape, obj.sigma_max) if dataset.is_image else None
    loss_fn = DatasetLoss(dataset, obj, cfg.engine.steps, cfg.engine.cuda_graphs)
    return run_training(model, loss_fn, len(dataset), cfg.engine, Path(run_dir), resume=resume,
                        run_config=run_config, on_sample=on_sample, progress=progress)


# -------------------------------------------------------------------------------- load_run


def _load_weights(run_dir: Path, model: nn.Module, which: Literal["ema", "model"],
                  step: int | None = None) -> tuple[ck.Checkpoint, str]:
    """Load the newest good checkpoint of ``run_dir`` (or the one of ``step``) into ``model``'s
    trainable parameters (EMA or raw weights; raw if the run had no EMA). Returns it and the
    weights loaded."""
    params = trainable_parameters(model)
    parts = ("model", "ema") if which == "ema" else ("model",)
    expected = {n: p.shape for n, p in params.items()}
    if step is None:
        ckpt = ck.load_latest(run_dir, expected, parts)
    else:
        kept = {ck.checkpoint_step(path): path for path in ck.list_checkpoints(run_dir)}
        if step not in kept:
            raise AmbientError(f"{run_dir} keeps no checkpoint of step {step} (kept: "
                               f"{sorted(kept) or 'none'}); fix: pick a kept step, or train with "
                               "a larger engine.keep_checkpoints")
        ckpt = ck.load_checkpoint(kept[step], expected, parts)
    if ckpt is None:
        raise AmbientError(f"{run_dir} has no checkpoint yet; fix: train it first (or wait for "
                           "the first checkpoint)")
    weights, loaded = ckpt.model, "model"
    if which == "ema":
        if ckpt.ema is None:
            logger.warning("%s has no EMA weights (EMA was off); using the raw weights", ckpt.path)
        else:
            weights, loaded = ckpt.ema, "ema"
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    return ckpt, loaded


def load_run(run_dir: Path, which: Literal["ema", "model"] = "ema",
             step: int | None = None) -> tuple[EDMPrecond, dict[str, Any]]:
    """Rebuild the denoiser of a run from its ``config.json`` and load the newest good
    checkpoint, or the kept checkpoint of ``step`` (``which``: the EMA or the raw weights;
    :func:`ambient.checkpoint.list_checkpoints` lists them). Returns the denoiser in eval mode and
    the config dict (with ``sample_shape``, ``sigma_n`` min/max/mean, ``sigma_max``,
    ``sigma_data``, and ``checkpoint``: path, step and weights loaded)."""
    if which not in ("ema", "model"):
        raise AmbientError(f"which must be 'ema' or 'model', got {which!r}")
    run_dir = Path(run_dir)
    config = ck.read_run_config(run_dir)
    for key in ("sample_shape", "net", "sigma_data"):
        if key not in config:
            raise AmbientError(f"{run_dir / ck.CONFIG_FILE}: field '{key}' is missing; this is "
                               "not a run written by ambient.train (latent runs load with "
                               "ambient.latent)")
    model = _build_model(tuple(config["sample_shape"]), config["net"], config["sigma_data"], 0)
    ckpt, loaded = _load_weights(run_dir, model, which, step)
    model.eval()
    config["checkpoint"] = {"path": str(ckpt.path), "step": ckpt.step, "weights": loaded}
    return model, config


__all__ = [
    "DatasetLoss",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "image_grid_callback",
    "load_run",
    "train",
]
