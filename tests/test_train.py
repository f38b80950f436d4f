"""Pixel/vector training: config files, train + load_run, sample grids, two processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _two_process_worker import params_hash
from ambient import checkpoint as ck
from ambient.data import NoisyDataset, resolve_dataset
from ambient.engine import EngineConfig
from ambient.errors import AmbientError
from ambient.objective import ConsistencyConfig, ObjectiveConfig
from ambient.train import (
    DatasetLoss,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_run,
    train,
)

WORKER = Path(__file__).with_name("_two_process_worker.py")
TINY_MLP = {"kind": "mlp", "hidden": 16, "depth": 1, "emb_dim": 8}


def _config(steps: int = 6, **engine) -> TrainConfig:
    return TrainConfig(engine=EngineConfig(**{"steps": steps, "batch_size": 8, "warmup_steps": 2,
                                              "checkpoint_every": 3, "log_every": 3, **engine}),
                       net=dict(TINY_MLP), data={"data": "gmm", "sigma_n": 0.2})


@pytest.fixture(scope="module")
def vectors() -> NoisyDataset:
    return resolve_dataset("gmm:dim=2,components=2,n=32", 0.2)


# ------------------------------------------------------------------------------ configs


def test_config_round_trips_through_json():
    cfg = _config()
    cfg.objective.consistency.weight = 0.5
    again = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg
    assert config_from_dict({}) == TrainConfig()
    partial = config_from_dict({"engine": {"lr": 1, "steps": 7}, "objective": {"method": "dsm"}})
    assert partial.engine.lr == 1.0 and isinstance(partial.engine.lr, float)
    assert partial.engine.steps == 7 and partial.engine.batch_size == EngineConfig().batch_size


@pytest.mark.parametrize(("d", "message"), [
    ({"engin": {}}, r"unknown config key 'engin'; valid keys: engine, objective, net, data"),
    ({"objective": {"consistency": {"wieght": 1.0}}},
     r"unknown config key 'objective\.consistency\.wieght'; valid keys of "
     r"'objective\.consistency': weight, fraction"),
    ({"engine": {"steps": "ten"}}, r"'engine\.steps' must be an integer, got str 'ten'"),
    ({"engine": {"steps": True}}, r"'engine\.steps' must be an integer"),
    ({"engine": {"lr": "fast"}}, r"'engine\.lr' must be a number"),
    ({"engine": {"mixed_precision": "fp8"}}, r"'engine\.mixed_precision' must be one of 'no'"),
    ({"net": ["mlp"]}, r"'net' must be a mapping"),
    ({"objective": 3}, r"'objective' must be a mapping with keys method, sigma_data"),
    ({"objective": {"consistency": {"levels": "uniform"}}},
     r"'objective\.consistency\.levels' must be one of 'log-uniform', 'log-normal'"),
])
def test_bad_config_names_the_key(d, message):
    with pytest.raises(AmbientError, match=message):
        config_from_dict(d)


def test_consistency_validate_names_the_levels_field():
    with pytest.raises(AmbientError, match=r"objective\.consistency\.levels must be 'log-uniform'"):
        ConsistencyConfig(levels="uniform").validate()  # type: ignore[arg-type]


@pytest.mark.parametrize(("objective", "message"), [
    ({"consistency": {"lift": 0.5}}, r"objective\.consistency\.lift must be >= 1"),
    ({"consistency": {"fraction": 0}}, r"objective\.consistency\.fraction must be in \(0, 1\]"),
    ({"consistency": {"substeps": 0}}, r"objective\.consistency\.substeps must be >= 1"),
    ({"consistency": {"warmup": 1.0}}, r"objective\.consistency\.warmup must be in \[0, 1\)"),
    ({"weight_cap": 0.5}, r"objective\.weight_cap must be finite and >= 1"),
    ({"sigma_data": 0}, r"objective\.sigma_data must be > 0"),
])
def test_impossible_objective_values_stop_before_training(tmp_path, vectors, objective, message):
    cfg = config_from_dict({"objective": objective})
    with pytest.raises(AmbientError, match=message):
        train(cfg, vectors, tmp_path, progress=False)
    assert not (tmp_path / "config.json").exists()


# ------------------------------------------------------------------------------- train


def test_consistency_switches_on_after_the_warm_start(vectors):
    """warmup = 0.5 of 10 steps: steps 0-4 train the ambient loss alone, 5-9 add consistency."""
    from ambient.nets import MLP, MLPConfig
    from ambient.precond import EDMPrecond

    consistency = ConsistencyConfig(weight=1.0, target="samples", substeps=2, warmup=0.5)
    loss_fn = DatasetLoss(vectors, ObjectiveConfig(consistency=consistency), total_steps=10)
    model = EDMPrecond(MLP(2, MLPConfig(hidden=8, depth=1)), 0.5)
    idx = torch.arange(len(vectors))
    on = ["consistency" in loss_fn(model, idx, torch.Generator().manual_seed(k), k)[1]
          for k in range(10)]
    assert on == [False] * 5 + [True] * 5


def test_dataset_loss_passes_the_model_itself_off_a_gpu(vectors):
    """CUDA graphs replay only on a GPU: on a CPU the objective gets the model (an EMA draw
    needs its parameters), with or without cuda_graphs."""
    from ambient.nets import MLP, MLPConfig
    from ambient.precond import EDMPrecond

    model = EDMPrecond(MLP(2, MLPConfig(hidden=8, depth=1)), 0.5)
    for cuda_graphs in (True, False):
        loss_fn = DatasetLoss(vectors, ObjectiveConfig(), total_steps=10, cuda_graphs=cuda_graphs)
        assert loss_fn.denoiser(model) is model


def test_data_too_large_for_the_gpu_stay_in_host_memory(vectors, monkeypatch):
    """keeps_on_host: on a GPU, data over DEVICE_DATA_SHARE of its memory stay on the host; the
    host path (each batch's rows copied) gives the same loss as the data moved whole."""
    from types import SimpleNamespace

    from ambient.nets import MLP, MLPConfig
    from ambient.precond import EDMPrecond
    from ambient.train import keeps_on_host

    y = vectors.y  # 32 x 2 float32: 256 bytes
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=1024))
    assert not keeps_on_host(y, torch.device("cuda"))  # 256 <= 0.25 * 1024
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=1000))
    assert keeps_on_host(y, torch.device("cuda"))
    assert not keeps_on_host(y, torch.device("cpu"))
    model = EDMPrecond(MLP(2, MLPConfig(hidden=8, depth=1)), 0.5)
    idx = torch.tensor([3, 1, 4, 1, 5])
    whole = DatasetLoss(vectors, ObjectiveConfig(), total_steps=10)
    host = DatasetLoss(vectors, ObjectiveConfig(), total_steps=10)
    host.on_host = True
    losses = [loss_fn(model, idx, torch.Generator().manual_seed(0), 0)[0] for loss_fn in (whole, host)]
    torch.testing.assert_close(losses[1], losses[0])


def test_train_then_load_run(tmp_path, vectors):
    model = train(_config(), vectors, tmp_path, progress=False)
    denoiser, config = load_run(tmp_path)
    assert config["sample_shape"] == [2] and config["num_examples"] == 32
    assert config["sigma_n"] == pytest.approx({"min": 0.2, "max": 0.2, "mean": 0.2})
    assert config["sigma_max"] == 80.0 and config["sigma_data"] == 0.5
    assert config["net"]["kind"] == "mlp" and config["data"]["sigma_n"] == 0.2
    assert config["checkpoint"]["step"] == 6 and config["checkpoint"]["weights"] == "ema"
    assert not denoiser.training
    assert params_hash(denoiser) == params_hash(model)
    raw, _ = load_run(tmp_path, which="model")
    assert params_hash(raw) != params_hash(model)
    x = torch.randn(5, 2)
    assert denoiser(x, torch.full((5,), 0.5)).shape == (5, 2)
    restored = config_from_dict({k: config[k] for k in ("engine", "objective", "net", "data")})
    assert restored.engine == _config().engine


def test_load_run_loads_a_kept_step(tmp_path, vectors):
    train(_config(), vectors, tmp_path, progress=False)
    newest, _ = load_run(tmp_path)
    earlier, config = load_run(tmp_path, step=3)
    assert config["checkpoint"]["step"] == 3 and config["checkpoint"]["weights"] == "ema"
    assert params_hash(earlier) != params_hash(newest)
    assert params_hash(load_run(tmp_path, step=6)[0]) == params_hash(newest)
    with pytest.raises(AmbientError, match=r"no checkpoint of step 4 \(kept: \[3, 6\]\)"):
        load_run(tmp_path, step=4)


def test_train_resume_matches_uninterrupted(tmp_path, vectors):
    cfg = _config(steps=6)
    cfg.objective = ObjectiveConfig(consistency=ConsistencyConfig(weight=1.0, chain_steps=1))
    full = train(cfg, vectors, tmp_path / "full", progress=False)
    cfg.engine.steps = 3
    train(cfg, vectors, tmp_path / "split", progress=False)
    cfg.engine.steps = 6
    resumed = train(cfg, vectors, tmp_path / "split", resume=True, progress=False)
    assert params_hash(resumed) == params_hash(full)


def test_init_from_warm_starts_from_ema(tmp_path, vectors):
    first = train(_config(), vectors, tmp_path / "first", progress=False)
    cfg = _config(steps=1, lr=1e-12, ema_halflife_steps=0)
    second = train(cfg, vectors, tmp_path / "second", progress=False, init_from=tmp_path / "first")
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    _, config = load_run(tmp_path / "second")
    assert config["init_from"]["step"] == 6 and config["init_from"]["weights"] == "ema"
    wider = _config()
    wider.net["hidden"] = 32
    with pytest.raises(AmbientError, match="has shape"):
        train(wider, vectors, tmp_path / "third", progress=False, init_from=tmp_path / "first")


def test_sigma_n_at_sigma_max_is_refused(tmp_path, vectors):
    cfg = _config()
    cfg.objective.sigma_max = 0.2
    with pytest.raises(AmbientError, match=r"sigma_n=0\.2.*objective\.sigma_max=0\.2"):
        train(cfg, vectors, tmp_path, progress=False)
    assert not (tmp_path / ck.CONFIG_FILE).exists()


def test_image_run_writes_sample_grids(tmp_path):
    y = torch.rand(8, 1, 8, 8) * 2 - 1
    images = NoisyDataset(y, torch.full((8,), 0.1), None, "random")
    cfg = _config(steps=2, sample_every=2, batch_size=4)
    cfg.net = {"kind": "unet", "base_channels": 8, "channel_mult": [1], "blocks_per_level": 1,
               "emb_dim": 8, "norm_groups": 4}
    train(cfg, images, tmp_path, progress=False)
    assert (tmp_path / "samples" / "step_00000002.png").is_file()
    denoiser, config = load_run(tmp_path)
    assert config["is_image"] and config["net"]["channel_mult"] == [1]
    assert denoiser(y[:2], torch.full((2,), 0.3)).shape == (2, 1, 8, 8)


def test_load_run_errors(tmp_path):
    with pytest.raises(AmbientError, match="not an ambient run directory"):
        load_run(tmp_path)
    ck.write_run_config(tmp_path, {"engine": {}})
    with pytest.raises(AmbientError, match="field 'sample_shape' is missing"):
        load_run(tmp_path)


# ------------------------------------------------------------------------ two processes


@pytest.mark.slow
def test_two_process_replicas_stay_identical(tmp_path):
    """torchrun with 2 CPU processes (gloo): DDP over the ambient + consistency objective."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(WORKER), str(tmp_path), "--ambient", "--steps", "10", "--threads", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    hashes = [(tmp_path / f"hash_rank{r}.txt").read_text() for r in range(2)]
    assert hashes[0] == hashes[1] and hashes[0].startswith("processes=2 ")
    assert ck.list_checkpoints(tmp_path)[0].name == ck.checkpoint_name(10)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 10 and "consistency" in json.loads(lines[-1])


def test_a_page_states_the_current_defaults():
    """A benchmark page is current when it states defaults_summary(); a consistency field its
    statement lacks (added since) counts at its dataclass default, the behaviour before it."""
    from ambient.defaults import defaults_summary, states_current_defaults

    summary = defaults_summary()
    assert states_current_defaults(f"A page. {summary}\n\nRerun: ...")
    older = summary.replace(", extrapolate=0.0", "").replace(", extrapolate_share=1.0", "")
    assert older != summary and states_current_defaults(older)
    for stale in (summary.replace("lift=1.0", "lift=1.1"),  # another value
                  summary.replace(", lift=1.0", ""),  # lift's dataclass default is 1.1
                  summary.replace("weight_cap=10", "weight_cap=1"),
                  summary.replace("consistency: ", "consistency: retired=1, "), "no statement"):
        assert stale != summary and not states_current_defaults(stale), stale
