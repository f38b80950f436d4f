"""Training script run in subprocesses by the engine/train tests.

    python tests/_two_process_worker.py RUN_DIR --steps 60 [--resume] [--delay 0.05]
    torchrun --standalone --nproc_per_node 2 tests/_two_process_worker.py RUN_DIR --ambient

Default: the engine on :func:`tiny_problem` (also imported by the in-process tests, so a
subprocess run and an in-process run train the very same problem). ``--ambient``: the full
pixel/vector path (``ambient.train.train``: MLP denoiser, ambient + consistency loss) on a
small Gaussian mixture. Each process writes ``hash_rank<r>.txt`` (the number of processes
and the sha256 of the returned model's parameters) into RUN_DIR; a signal ends it with
``TrainingInterrupted.exit_code``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from ambient.engine import EngineConfig, TrainingInterrupted, leave_process_group, run_training


def tiny_config(steps: int = 40, **overrides: object) -> EngineConfig:
    """Engine settings of the tiny problem: small batches, frequent checkpoints."""
    base: dict[str, object] = {"steps": steps, "batch_size": 8, "lr": 1e-2, "warmup_steps": 5,
                               "ema_halflife_steps": 5.0, "checkpoint_every": 10,
                               "keep_checkpoints": 3, "log_every": 5}
    return EngineConfig(**{**base, **overrides})  # type: ignore[arg-type]


def tiny_problem(delay: float = 0.0, n: int = 24):
    """A 4-16-4 MLP with dropout learning to denoise fixed data: ``(model, loss_fn, n)``."""
    data = torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Dropout(0.1), nn.Linear(16, 4))

    def loss_fn(model: nn.Module, idx: Tensor, gen: torch.Generator | None,
                step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if delay:
            time.sleep(delay)
        x = data.to(idx.device)[idx]
        noisy = x + 0.3 * torch.randn(x.shape, generator=gen, device=x.device)
        loss = (model(noisy) - x).pow(2).mean()
        return loss, {"mse": loss.detach()}

    return model, loss_fn, n


def params_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _train_ambient(run_dir: Path, steps: int, resume: bool) -> nn.Module:
    from ambient.data import resolve_dataset
    from ambient.objective import ConsistencyConfig, ObjectiveConfig
    from ambient.train import TrainConfig, train

    dataset = resolve_dataset("gmm:dim=2,components=2,n=64", 0.3)
    cfg = TrainConfig(
        engine=tiny_config(steps, batch_size=16, checkpoint_every=5),
        objective=ObjectiveConfig(consistency=ConsistencyConfig(weight=1.0, chain_steps=1)),
        net={"kind": "mlp", "hidden": 16, "depth": 1, "emb_dim": 8, "dropout": 0.1},
        data={"data": dataset.source, "sigma_n": 0.3})
    return train(cfg, dataset, run_dir, resume=resume, progress=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ambient", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        if args.ambient:
            model = _train_ambient(args.run_dir, args.steps, args.resume)
        else:
            net, loss_fn, n = tiny_problem(args.delay)
            model = run_training(net, loss_fn, n, tiny_config(args.steps), args.run_dir,
                                 resume=args.resume, progress=False)
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return e.exit_code
    finally:
        leave_process_group()
    from accelerate import PartialState

    state = PartialState()
    (args.run_dir / f"hash_rank{state.process_index}.txt").write_text(
        f"processes={state.num_processes} {params_hash(model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
