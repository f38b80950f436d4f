"""End-to-end command line on tiny data: train -> sample -> denoise, and clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from ambient.cli import main
from ambient.errors import AmbientError
from ambient.evaluate.runs import default_features

TINY = ["--steps", "6", "--batch-size", "16", "--checkpoint-every", "6"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def vectors(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "noisy.npy"
    np.save(path, (rng.normal(size=(64, 3)) + 0.2 * rng.normal(size=(64, 3))).astype(np.float32))
    return path


def test_vectors_train_sample_denoise(tmp_path, vectors, capsys):
    run = tmp_path / "run"
    code, _, err = _run(capsys, "train", "--data", str(vectors), "--sigma-n", "0.2",
                        "--out", str(run), "--net", "mlp", "--no-cuda-graphs", "--cooldown",
                        "0.5", *TINY)
    assert code == 0, err
    engine = json.loads((run / "config.json").read_text())["engine"]
    assert engine["cuda_graphs"] is False and engine["cooldown"] == 0.5
    code, _, err = _run(capsys, "sample", str(run), "--num", "10", "--out", str(tmp_path / "s.npy"),
                        "--steps", "4")
    assert code == 0, err
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (10, 3) and np.isfinite(samples).all()
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"  # a scatter of the vectors
    code, _, err = _run(capsys, "sample", str(run), "--num", "5", "--out", str(tmp_path / "t.npy"),
                        "--steps", "4", "--truncate", "--sampler", "euler")
    assert code == 0, err
    code, _, err = _run(capsys, "denoise", str(run), "--input", str(vectors), "--sigma", "0.2",
                        "--out", str(tmp_path / "d.npy"))
    assert code == 0, err
    assert np.load(tmp_path / "d.npy").shape == (64, 3)
    code, _, err = _run(capsys, "denoise", str(run), "--input", str(vectors), "--sigma", "0.2",
                        "--out", str(tmp_path / "d6.npy"), "--step", "6")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "d6.npy"), np.load(tmp_path / "d.npy"))
    code, _, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "u.npy"), "--step", "4")
    assert code == 2 and "no checkpoint of step 4 (kept: [6])" in err
    # user data: scored against a reference array, the coordinates as features (no clamping)
    code, out, err = _run(capsys, "evaluate", str(run), "--reference", str(vectors), "--num",
                          "50", "--steps", "3", "--report", str(tmp_path / "report"))
    assert code == 0, err
    metrics = json.loads(out)
    assert set(metrics["samples"]) == {"full", "truncated"}
    assert set(metrics["samples"]["full"]) == {"frechet"}
    assert len(metrics["denoising_mse"]) == 5
    report = (tmp_path / "report" / "report.md").read_text()
    for figure in ("training.png", "samples_reference.png", "samples_full.png",
                   "samples_truncated.png", "denoising.png"):
        assert figure in report and (tmp_path / "report" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "excess_error.png" not in report  # no ground truth to be exact against
    from ambient.evaluate.run_report import read_training_log

    assert set(read_training_log(run)) == {"loss", "ambient", "consistency"}  # the losses only
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == metrics
    code, _, err = _run(capsys, "evaluate", str(run), "--num", "50")
    assert code == 2 and "--reference" in err
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((8, 4), dtype=np.float32))
    code, _, err = _run(capsys, "evaluate", str(run), "--reference", str(wrong), "--num", "50")
    assert code == 2 and "wrong.npy" in err and "shape [4]" in err


def test_images_per_sample_levels_and_grid(tmp_path, capsys):
    rng = np.random.default_rng(1)
    data = tmp_path / "imgs.npy"
    np.save(data, rng.uniform(-1, 1, size=(32, 1, 8, 8)).astype(np.float32))
    levels = tmp_path / "levels.npy"
    np.save(levels, np.where(np.arange(32) % 2 == 0, 0.0, 0.3).astype(np.float32))
    run = tmp_path / "run"
    code, _, err = _run(capsys, "train", "--data", str(data), "--sigma-n", str(levels),
                        "--out", str(run), "--net", "unet", *TINY)
    assert code == 0, err
    code, _, err = _run(capsys, "sample", str(run), "--num", "4", "--out",
                        str(tmp_path / "s.npy"), "--steps", "3", "--sampler", "ddim")
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (4, 1, 8, 8)
    assert (tmp_path / "s.png").is_file()
    code, out, err = _run(capsys, "evaluate", str(run), "--reference", str(data), "--num", "40",
                          "--steps", "3")  # 8x8 images: the digits features by default
    assert code == 0, err
    assert set(json.loads(out)["samples"]["full"]) == {"frechet", "frechet_unclamped"}


def test_other_images_need_a_choice_of_features():
    with pytest.raises(AmbientError, match="--features dinov2:DIR"):
        default_features({"sample_shape": [3, 16, 16]})
    assert default_features({"sample_shape": [5]}) == "pixels"


def test_corrupt_builtin_warm_start_and_evaluate(tmp_path, capsys, monkeypatch):
    import ambient.evaluate.runs as runs

    references = []  # every sampling mode is scored against one and the same reference set

    def recording_sw(drawn, reference, **kwargs):
        references.append(reference)
        return sliced_wasserstein(drawn, reference, **kwargs)

    sliced_wasserstein = runs.sliced_wasserstein
    monkeypatch.setattr(runs, "sliced_wasserstein", recording_sw)
    first = tmp_path / "first"
    code, _, err = _run(capsys, "train", "--data", "gmm:n=128", "--sigma-n", "0.3", "--out",
                        str(first), "--consistency-weight", "0", *TINY)
    assert code == 0, err
    code, _, err = _run(capsys, "train", "--data", "gmm:n=128", "--sigma-n", "0.3", "--out",
                        str(tmp_path / "second"), "--init-from", str(first), *TINY)
    assert code == 0, err
    code, out, err = _run(capsys, "evaluate", str(tmp_path / "second"), "--num", "400", "--steps",
                          "4", "--out", str(tmp_path / "metrics.json"), "--report",
                          str(tmp_path / "report"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert json.loads(out) == metrics
    assert f"report: {tmp_path / 'report' / 'report.md'}" in err
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Exactness" in report and "excess_error.png" in report
    assert "samples_reference.png" in report  # fresh draws of the mixture beside the samples
    assert "denoising.png" not in report  # mixtures: the exact excess error instead
    assert (tmp_path / "report" / "report.html").is_file()
    assert set(metrics["samples"]) == {"full", "truncated"}
    assert len(references) == 2 and references[0] is references[1]
    for scores in metrics["samples"].values():  # 6 training steps: far above what exact draws score
        assert 0 < scores["covariance_noise_floor"] < scores["covariance_error"]
        assert 0 < scores["sw_noise_floor"] < scores["sliced_wasserstein"]
    assert len(metrics["excess_denoising_error"]) > 0


@pytest.mark.parametrize(("args", "needle"), [
    (["--data", "missing.npy", "--sigma-n", "0.1"], "missing.npy"),
    (["--data", "{vectors}", "--sigma-n", "0", "--corrupt"], "--sigma-n"),
    (["--data", "{vectors}", "--sigma-n", "100"], "sigma_max"),
    (["--data", "{vectors}", "--sigma-n", "-0.1"], "sigma"),
    (["--data", "{nan}", "--sigma-n", "0.1"], "NaN"),
    (["--data", "{flat}", "--sigma-n", "0.1"], "one axis"),
    (["--data", "{vectors}", "--sigma-n", "0.1", "--cooldown", "1"], "engine.cooldown"),
])
def test_clear_errors_without_traceback(tmp_path, vectors, capsys, args, needle):
    nan = tmp_path / "nan.npy"
    bad = np.zeros((8, 2), dtype=np.float32)
    bad[3, 1] = np.nan
    np.save(nan, bad)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(8, dtype=np.float32))
    args = [a.format(vectors=vectors, nan=nan, flat=flat) for a in args]
    code, _, err = _run(capsys, "train", *args, "--out", str(tmp_path / "r"), *TINY)
    assert code == 2
    assert err.startswith("ambient: error:") and needle in err
    assert "Traceback" not in err


def test_sample_errors_name_the_problem(tmp_path, capsys):
    code, _, err = _run(capsys, "sample", str(tmp_path / "nope"), "--out", str(tmp_path / "s.npy"))
    assert code == 2 and "nope" in err
    code, _, err = _run(capsys, "sample", str(tmp_path / "nope"), "--out", "s.txt")
    assert code == 2 and "--out s.txt" in err and ".npy array" in err  # checked before any work
    code, _, err = _run(capsys, "evaluate", str(tmp_path / "nope"), "--out", "m.txt")
    assert code == 2 and "--out m.txt" in err and "suffix .json" in err
    (tmp_path / "afile").write_text("x")
    code, _, err = _run(capsys, "evaluate", str(tmp_path / "nope"), "--report",
                        str(tmp_path / "afile"))
    assert code == 2 and "afile" in err and "name a folder" in err
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("engine: {stepz: 3}\n")
    code, _, err = _run(capsys, "train", "--data", "gmm:n=64", "--sigma-n", "0.3", "--out",
                        str(tmp_path / "r"), "--config", str(config_file))
    assert code == 2 and "stepz" in err


def test_demo_quick_writes_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ambient.demo.SMOKE_STEPS", 4)
    code, _, err = _run(capsys, "demo", "--out", str(tmp_path / "demo"), "--quick")
    assert code == 0, err
    report = Path(tmp_path / "demo" / "report.md").read_text()
    assert "frechet" in report and "noisy.png" in report and "denoising.png" in report
    assert "training.png" in report
