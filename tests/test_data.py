"""Loading user data and built-in datasets: happy paths, every error message, corruption."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ambient.data import (
    GaussianMixture,
    NoisyDataset,
    corrupt_once,
    load_array,
    load_image_folder,
    load_sigma_n,
    parse_gmm_spec,
    per_sample_noise,
    resolve_dataset,
)
from ambient.errors import AmbientError


def _name(path: Path) -> str:
    """A regex matching ``path`` literally."""
    return re.escape(str(path))


def _save_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (6, 4),
                value: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode in ("L", "1") else (value,) * len(mode)).save(path)
    return path


# ----------------------------------------------------------------------------- load_array


def test_load_array_npy_vectors_and_images(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(12, dtype=np.int64).reshape(6, 2))
    v = load_array(tmp_path / "v.npy")
    assert v.dtype == torch.float32 and v.shape == (6, 2) and v[5, 1] == 11
    np.save(tmp_path / "gray.npy", np.zeros((3, 5, 7), dtype=np.float64))
    assert load_array(str(tmp_path / "gray.npy")).shape == (3, 1, 5, 7)
    np.save(tmp_path / "rgb.npy", np.zeros((3, 3, 5, 7), dtype=np.float16))
    assert load_array(tmp_path / "rgb.npy").shape == (3, 3, 5, 7)


def test_load_array_npz_single_array_or_accepted_key(tmp_path):
    np.savez(tmp_path / "one.npz", whatever=np.ones((4, 3)))
    assert load_array(tmp_path / "one.npz").shape == (4, 3)
    np.savez(tmp_path / "named.npz", data=np.ones((4, 3)), labels=np.arange(4))
    assert load_array(tmp_path / "named.npz").shape == (4, 3)


@pytest.mark.parametrize("arrays, match", [
    ({"a": np.ones((2, 2)), "b": np.ones((2, 2))}, r"2 arrays \('a', 'b'\) with none of"),
    ({"x": np.ones((2, 2)), "y": np.ones(2)}, r"2 arrays \('x', 'y'\) with several of"),
])
def test_load_array_npz_ambiguous_lists_keys_and_accepted_names(tmp_path, arrays, match):
    np.savez(tmp_path / "many.npz", **arrays)
    with pytest.raises(AmbientError, match=_name(tmp_path / "many.npz") + ".*" + match
                       + r".*'x', 'y' or 'data'"):
        load_array(tmp_path / "many.npz")


@pytest.mark.parametrize("array, match", [
    (np.ones(5), r"one axis.*reshape\(-1, 1\)"),
    (np.ones((2, 1, 1, 1, 1)), r"shape \[2, 1, 1, 1, 1\] is not supported"),
    (np.ones((0, 3)), r"no samples"),
    (np.ones((2, 8, 8, 3)), r"channels-last.*transpose\(0, 3, 1, 2\)"),
    (np.array([["a", "b"]]), r"dtype <U1 is not a real number type"),
    (np.ones((2, 2), dtype=np.complex64), r"dtype complex64"),
])
def test_load_array_bad_shape_or_dtype(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(AmbientError, match=_name(tmp_path / "bad.npy") + ".*" + match):
        load_array(tmp_path / "bad.npy")


def test_load_array_non_finite_reports_count_and_first_index(tmp_path):
    x = np.zeros((5, 2, 3, 3), dtype=np.float32)
    x[3, 1, 2, 0] = np.nan
    x[4, 0, 0, 0] = np.inf
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(AmbientError, match=_name(tmp_path / "nan.npy")
                       + r": 2 non-finite.*index \(3, 1, 2, 0\) \(sample 3\)"):
        load_array(tmp_path / "nan.npy")


@pytest.mark.parametrize("corrupt", [False, True])
def test_training_data_non_finite_named_and_scanned_once(tmp_path, monkeypatch, corrupt):
    """A training file with NaN fails at the dataset with the file, count and first index,
    after one scan of the array (NoisyDataset checks it, load_array leaves it to it)."""
    from ambient.data import arrays

    x = np.zeros((5, 4), dtype=np.float32)
    x[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    scans = []
    real = arrays.nonfinite
    monkeypatch.setattr(arrays, "nonfinite", lambda t: scans.append(len(t)) or real(t))
    with pytest.raises(AmbientError, match=_name(tmp_path / "nan.npy")
                       + r": 1 non-finite.*index \(2, 3\) \(sample 2\)"):
        resolve_dataset(str(tmp_path / "nan.npy"), 0.1, corrupt=corrupt)
    assert scans == [5]


def test_noisy_dataset_built_in_python_must_be_finite():
    y = torch.zeros(3, 2)
    y[1, 0] = float("inf")
    with pytest.raises(AmbientError, match=r"my data: 1 non-finite.*\(sample 1\)"):
        NoisyDataset(y, torch.full((3,), 0.1), None, "my data")


def test_large_npy_is_mapped_copy_on_write(tmp_path, monkeypatch):
    """A float32 .npy over MAP_BYTES is memory-mapped: the tensor reads the file where used (a
    change made to the file shows), and writing to the tensor never touches the file."""
    from ambient.data import arrays

    path = tmp_path / "big.npy"
    np.save(path, np.arange(24, dtype=np.float32).reshape(6, 4))
    x = load_array(path)
    monkeypatch.setattr(arrays, "MAP_BYTES", 64)
    mapped = load_array(path)
    torch.testing.assert_close(mapped, x)
    on_disk = np.load(path, mmap_mode="r+")
    on_disk[5, 3] = 99.0
    on_disk.flush()
    assert float(mapped[5, 3]) == 99.0 and float(x[5, 3]) == 23.0  # x was read into memory
    mapped[0, 0] = -5.0
    assert np.load(path)[0, 0] == 0.0
    np.save(path, np.arange(24, dtype=np.float64).reshape(6, 4))  # other dtypes: converted
    assert load_array(path).dtype == torch.float32
    bad = np.empty(20, dtype=object)
    np.save(path, bad, allow_pickle=True)
    with pytest.raises(AmbientError, match="Python objects"):
        load_array(path)


def test_nonfinite_scans_in_blocks(monkeypatch):
    from ambient.data import arrays

    x = torch.zeros(7, 2, 3)
    x[4, 1, 2] = float("nan")
    x[6, 0, 0] = float("inf")
    whole = arrays.nonfinite(x)
    monkeypatch.setattr(arrays, "_CHUNK", 6)  # one sample per block
    assert arrays.nonfinite(x) == whole == (2, (4, 1, 2))
    assert arrays.nonfinite(torch.zeros(3, 2)) == (0, None)


def test_load_array_refuses_pickles_and_garbage(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(AmbientError, match=_name(tmp_path / "obj.npy") + r" holds Python objects"):
        load_array(tmp_path / "obj.npy")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(AmbientError, match=r"obj\.npz holds Python objects"):
        load_array(tmp_path / "obj.npz")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(AmbientError, match=_name(tmp_path / "junk.npy") + r": not a readable"):
        load_array(tmp_path / "junk.npy")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(AmbientError, match=r"junk\.npz: not a readable"):
        load_array(tmp_path / "junk.npz")


def test_load_array_missing_or_wrong_suffix(tmp_path):
    with pytest.raises(AmbientError, match=_name(tmp_path / "none.npy") + r": no such file"):
        load_array(tmp_path / "none.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(AmbientError,
                       match=r"x\.csv: unsupported file type '\.csv'.*\.npy or \.npz"):
        load_array(tmp_path / "x.csv")


# ----------------------------------------------------------------------------- image folders


def test_image_folder_formats_scaling_and_recursion(tmp_path):
    _save_image(tmp_path / "a.png", value=255)
    _save_image(tmp_path / "b.bmp", value=0)
    _save_image(tmp_path / "sub" / "c.tiff", value=0)
    _save_image(tmp_path / "d.webp", value=255)
    Image.new("RGB", (6, 4), (255, 255, 255)).save(tmp_path / "e.jpg", quality=100)
    _save_image(tmp_path / ".hidden" / "f.png", size=(9, 9))  # hidden: ignored
    (tmp_path / "._g.png").write_bytes(b"AppleDouble junk")  # hidden: ignored
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = load_image_folder(tmp_path)
    assert x.shape == (5, 3, 4, 6) and x.dtype == torch.float32
    assert torch.equal(x[0], torch.ones(3, 4, 6)) and torch.equal(x[1], -torch.ones(3, 4, 6))
    assert x.min() >= -1 and x.max() <= 1
    assert load_image_folder(tmp_path, recursive=False).shape == (4, 3, 4, 6)


def test_image_folder_grayscale_stays_one_channel_and_16_bit(tmp_path):
    _save_image(tmp_path / "a.png", mode="L", value=0)
    Image.fromarray(np.full((4, 6), 65535, dtype=np.uint16)).save(tmp_path / "b.png")
    x = load_image_folder(tmp_path)
    assert x.shape == (2, 1, 4, 6)
    assert torch.allclose(x[0], -torch.ones(1, 4, 6)) and torch.allclose(x[1], torch.ones(1, 4, 6))


def test_image_folder_applies_exif_orientation(sideways_jpeg):
    Image.new("RGB", (4, 6), (255, 0, 0)).save(sideways_jpeg.parent / "upright.png")
    x = load_image_folder(sideways_jpeg.parent)  # same size once turned: no mixed-size error
    assert x.shape == (2, 3, 6, 4)


def test_image_folder_float_tiff_is_named_and_skipped_or_refused(tmp_path):
    Image.fromarray(np.ones((4, 6), np.float32)).save(tmp_path / "float.tiff")
    _save_image(tmp_path / "ok.png")
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 .*float.tiff .*mode F"):
        assert load_image_folder(tmp_path).shape[0] == 1
    with pytest.raises(AmbientError, match=r"float.tiff: .*mode F.*save as .npy"):
        load_image_folder(tmp_path, on_bad="error")


def test_image_folder_skips_and_counts_truncated_and_non_images(tmp_path):
    for i in range(3):
        _save_image(tmp_path / f"good{i}.png")
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    big.save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "full.png").unlink()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning,
                      match=_name(tmp_path) + r": skipped 2 of 5 file\(s\).*notes\.txt"):
        x = load_image_folder(tmp_path)
    assert x.shape == (3, 3, 4, 6)
    (tmp_path / "notes.txt").unlink()
    with pytest.raises(AmbientError, match=_name(tmp_path / "trunc.png") + r": not a readable"):
        load_image_folder(tmp_path, on_bad="error")


def test_image_folder_mixed_sizes_names_two_files(tmp_path):
    for i in range(3):
        _save_image(tmp_path / f"a{i}.png", size=(6, 4))
    _save_image(tmp_path / "odd.png", size=(5, 5))
    with pytest.raises(AmbientError, match=_name(tmp_path / "a0.png") + r" is 6x4.*like 3 images.*"
                       + _name(tmp_path / "odd.png") + r" is 5x5.*resize\(\(6, 4\)\)"):
        load_image_folder(tmp_path)


def test_image_folder_mixed_modes_become_rgb_and_say_so_once(tmp_path):
    _save_image(tmp_path / "a.png", mode="RGB", value=255)
    _save_image(tmp_path / "b.png", mode="L", value=255)
    _save_image(tmp_path / "c.png", mode="L", value=0)
    _save_image(tmp_path / "d.png", mode="RGBA", value=255)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = load_image_folder(tmp_path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "2 of 4 images are grayscale" in messages[0] and "converted" in messages[0]
    assert "dropped the alpha" in messages[1] and "1 image" in messages[1]
    assert x.shape == (4, 3, 4, 6)
    assert torch.equal(x[1], torch.ones(3, 4, 6)) and torch.equal(x[2], -torch.ones(3, 4, 6))


def test_image_folder_errors(tmp_path):
    with pytest.raises(AmbientError, match=_name(tmp_path) + r": no files"):
        load_image_folder(tmp_path)
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(AmbientError, match=r"1 file\(s\) but none is a readable image"):
        load_image_folder(tmp_path)
    with pytest.raises(AmbientError, match=r"a\.txt: not a folder"):
        load_image_folder(tmp_path / "a.txt")


# ----------------------------------------------------------------------------- sigma_n


def test_load_sigma_n_numbers_and_files(tmp_path):
    assert torch.equal(load_sigma_n(0.25, 3), torch.full((3,), 0.25))
    assert torch.equal(load_sigma_n("0.5", 2), torch.full((2,), 0.5))
    assert torch.equal(load_sigma_n(0, 2), torch.zeros(2))
    np.save(tmp_path / "s.npy", np.array([0.0, 0.1, 0.2]))
    levels = load_sigma_n(str(tmp_path / "s.npy"), 3)
    assert levels.dtype == torch.float32 and torch.allclose(levels, torch.tensor([0, 0.1, 0.2]))
    np.save(tmp_path / "col.npy", np.ones((3, 1)))
    assert load_sigma_n(tmp_path / "col.npy", 3).shape == (3,)


@pytest.mark.parametrize("spec, match", [
    (-0.1, r"--sigma-n -0\.1: .*finite number >= 0"),
    ("nan", r"--sigma-n nan: .*finite number >= 0"),
    ("inf", r"--sigma-n inf: "),
    ("no_such.npy", r"--sigma-n no_such\.npy: neither a number nor an existing file"),
])
def test_load_sigma_n_bad_values(spec, match):
    with pytest.raises(AmbientError, match=match):
        load_sigma_n(spec, 4)


@pytest.mark.parametrize("levels, match", [
    (np.ones(3), r"holds 3 levels but the data has 4 samples"),
    (np.array([0.1, np.nan, np.inf, 0.0]), r"2 level\(s\) are non-finite.*first at index 1"),
    (np.array([0.1, 0.2, -1.0, 0.0]), r"1 level\(s\) are negative.*index 2 \(-1\.0\)"),
    (np.ones((2, 2)), r"expected a 1-D array"),
])
def test_load_sigma_n_bad_files(tmp_path, levels, match):
    np.save(tmp_path / "s.npy", levels)
    with pytest.raises(AmbientError,
                       match=r"--sigma-n " + _name(tmp_path / "s.npy") + ".*" + match):
        load_sigma_n(tmp_path / "s.npy", 4)
    (tmp_path / "s.txt").write_text("0.1")
    with pytest.raises(AmbientError, match=r"s\.txt: per-sample levels must be a \.npy file"):
        load_sigma_n(tmp_path / "s.txt", 4)


# ----------------------------------------------------------------------------- corruption


def test_corrupt_once_is_deterministic_and_has_the_right_std():
    x0 = torch.zeros(2000, 3, 4, 4)
    sigma = torch.where(torch.arange(2000) % 2 == 0, 0.5, 2.0)
    y = corrupt_once(x0, sigma, seed=7)
    assert torch.equal(y, corrupt_once(x0, sigma, seed=7))
    assert not torch.equal(y, corrupt_once(x0, sigma, seed=8))
    assert abs(y[0::2].std().item() - 0.5) < 0.01 and abs(y[1::2].std().item() - 2.0) < 0.04
    assert abs(y.mean().item()) < 0.02
    clean = corrupt_once(torch.ones(3, 2), torch.tensor([0.0, 1.0, 0.0]), seed=0)
    assert torch.equal(clean[[0, 2]], torch.ones(2, 2)) and not torch.equal(clean[1], torch.ones(2))


def test_corrupt_once_noise_depends_only_on_sample_index():
    x0 = torch.randn(50, 6)
    full = corrupt_once(x0, 0.3, seed=1)
    perm = torch.randperm(50)[:20]
    subset = corrupt_once(x0[perm], 0.3, seed=1, indices=perm)
    assert torch.equal(subset, full[perm])
    # samples are independent: noises of different samples are (nearly) uncorrelated
    z = per_sample_noise(torch.arange(4000), (2,), seed=0)
    corr = torch.corrcoef(torch.stack([z[:-1].flatten(), z[1:].flatten()]))[0, 1]
    assert abs(corr.item()) < 0.05
    assert len({tuple(row.tolist()) for row in z}) == 4000


def test_corrupt_once_checks_indices():
    with pytest.raises(ValueError, match=r"indices must have shape \[3\]"):
        corrupt_once(torch.zeros(3, 2), 1.0, seed=0, indices=[0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        per_sample_noise([-1], (2,), seed=0)


# ----------------------------------------------------------------------------- gmm specs


def test_parse_gmm_spec_defaults_and_keys():
    mixture, n = parse_gmm_spec("gmm")
    assert isinstance(mixture, GaussianMixture)
    assert (mixture.dim, mixture.num_components, n) == (2, 8, 4096)
    mixture, n = parse_gmm_spec("gmm: dim=3, components=4,n=100,seed=5,scale=0.2,spread=1.5")
    assert (mixture.dim, mixture.num_components, n) == (3, 4, 100)
    again, _ = parse_gmm_spec("gmm:seed=5,spread=1.5,scale=0.2,n=100,components=4,dim=3")
    assert torch.equal(mixture.means, again.means) and torch.equal(mixture.covs, again.covs)
    other, _ = parse_gmm_spec("gmm:dim=3,components=4,seed=6")
    assert not torch.equal(mixture.means, other.means)


@pytest.mark.parametrize("spec, match", [
    ("gmm:dims=2", r"unknown key 'dims'; valid keys: dim, components, n, seed, scale, spread"),
    ("gmm:dim", r"'dim' is not key=value"),
    ("gmm:dim=2.5", r"dim='2\.5' must be an integer"),
    ("gmm:scale=big", r"scale='big' must be a number"),
    ("gmm:n=0", r"n=0 must be a finite number > 0"),
    ("gmm:spread=inf", r"spread=inf must be a finite number > 0"),
    ("mog:dim=2", r"starts with 'gmm'"),
])
def test_parse_gmm_spec_errors(spec, match):
    with pytest.raises(AmbientError, match=re.escape(f"--data {spec!r}") + ".*" + match):
        parse_gmm_spec(spec)


# ----------------------------------------------------------------------------- resolve_dataset


def test_resolve_digits_is_corrupted_once_and_keeps_clean():
    ds = resolve_dataset("digits", 0.5, seed=3)
    assert isinstance(ds, NoisyDataset) and ds.source == "digits"
    assert ds.is_image and ds.sample_shape == (1, 8, 8) and len(ds) == ds.y.shape[0] > 1000
    assert torch.equal(ds.sigma_n, torch.full((len(ds),), 0.5))
    assert abs((ds.y - ds.clean).std().item() - 0.5) < 0.01
    assert torch.equal(ds.y, resolve_dataset("digits", "0.5", seed=3).y)
    oracle = resolve_dataset("digits", None)
    assert torch.equal(oracle.y, oracle.clean) and torch.equal(oracle.sigma_n, torch.zeros(len(ds)))


def test_resolve_gmm_source_is_the_canonical_spec():
    ds = resolve_dataset("gmm:dim=3,n=500", 0.2, seed=1)
    assert ds.sample_shape == (3,) and len(ds) == 500 and not ds.is_image
    assert ds.source == "gmm:dim=3,components=8,n=500,seed=0,scale=0.1,spread=2.0"
    mixture, n = parse_gmm_spec(ds.source)
    assert n == 500 and torch.equal(mixture.means, parse_gmm_spec("gmm:dim=3")[0].means)
    assert torch.equal(ds.clean, resolve_dataset("gmm:dim=3,n=500", 0.2, seed=2).clean)


def test_resolve_noisy_npy_with_per_sample_sigma_file(tmp_path):
    y = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    np.save(tmp_path / "y.npy", y)
    levels = np.linspace(0, 1, 10)
    np.save(tmp_path / "sigma.npy", levels)
    ds = resolve_dataset(str(tmp_path / "y.npy"), str(tmp_path / "sigma.npy"))
    assert torch.equal(ds.y, torch.from_numpy(y)) and ds.clean is None
    assert torch.allclose(ds.sigma_n, torch.from_numpy(levels).float())
    assert ds.source == str(tmp_path / "y.npy")
    with pytest.raises(AmbientError, match=_name(tmp_path / "y.npy")
                       + r": give --sigma-n, the noise level of your data, or 0 if it is clean"):
        resolve_dataset(str(tmp_path / "y.npy"), None)


def test_resolve_clean_file_with_corrupt(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (300, 1, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = resolve_dataset(str(tmp_path / "x.npy"), 0.3, corrupt=True, seed=2)
    assert torch.equal(ds.clean, torch.from_numpy(x))
    assert abs((ds.y - ds.clean).std().item() - 0.3) < 0.02
    assert torch.equal(ds.y, corrupt_once(ds.clean, 0.3, seed=2))
    for sigma in (0, None):
        with pytest.raises(AmbientError, match=_name(tmp_path / "x.npy")
                           + r": --corrupt .* needs --sigma-n > 0"):
            resolve_dataset(str(tmp_path / "x.npy"), sigma, corrupt=True)


def test_resolve_image_folder_and_its_noise_warning(tmp_path):
    for i in range(3):
        _save_image(tmp_path / "imgs" / f"{i}.png")
    ds = resolve_dataset(str(tmp_path / "imgs"), 0)
    assert ds.sample_shape == (3, 4, 6) and ds.is_image
    with pytest.warns(UserWarning,
                      match=r"imgs: image files store 8-bit pixels.*no longer exactly Gaussian"):
        resolve_dataset(str(tmp_path / "imgs"), 0.1)


@pytest.mark.parametrize("scale, match", [(255.0, r"looks like \[0, 255\].*x / 127\.5 - 1"),
                                          (1.0, r"looks like \[0, 1\].*2 \* x - 1")])
def test_resolve_warns_about_image_range_without_rescaling(tmp_path, scale, match):
    x = scale * np.random.default_rng(0).uniform(0, 1, (4, 3, 5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with pytest.warns(UserWarning, match=_name(tmp_path / "x.npy") + r": image values span .*"
                      + match):
        ds = resolve_dataset(str(tmp_path / "x.npy"), 0)
    assert torch.equal(ds.y, torch.from_numpy(x))


def test_resolve_missing_or_unsupported_path_lists_accepted_kinds(tmp_path):
    with pytest.raises(AmbientError, match=r"--data .*nothing\.npy: no such file or folder\. "
                       r"--data takes a \.npy/\.npz array file.*folder of PNG/JPEG.*'digits'.*gmm"):
        resolve_dataset(str(tmp_path / "nothing.npy"), 0)
    (tmp_path / "x.csv").write_text("1\n")
    with pytest.raises(AmbientError, match=r"x\.csv: unsupported file type '\.csv'\. --data takes"):
        resolve_dataset(str(tmp_path / "x.csv"), 0)


def test_resolve_warns_when_a_builtin_name_is_also_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    with pytest.warns(UserWarning, match=r"built-in dataset.*write \./digits"):
        resolve_dataset("digits", None)
