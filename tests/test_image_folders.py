"""Tests of image folders (genlab.data.folders): labels from sub-folder names, splits, pixels
(channels, sizes, 16 bits), corrupt files skipped and named, streamed rows equal to in-memory
ones, label names saved with a model (`sample(y="cat")`), and `genlab sample --out DIR/`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.batches import RowSource
from genlab.cli.common import parse_label, parse_size, run
from genlab.data import FolderDataset, ImageFolderArray, load_dataset, save_image_folder
from genlab.data.folders import TEST_MODULUS, file_key, label_order, read_image
from genlab.models import VAE
from genlab.models.inputs import TrainingData, labels_from_names

NAMES = ("cat", "dog", "eel")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (conftest's `one_thread`)."""


def grid_images(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    """(n, 1, side, side) images on the 8-bit grid k / 255."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, side, side), generator=g).float() / 255


def labelled_folder(tmp_path: Path, n: int = 40, side: int = 8) -> tuple[Path, torch.Tensor]:
    """A folder of n grey images in cat/ dog/ eel/ (image i in class i mod 3): (folder, x)."""
    x = grid_images(n, side)
    save_image_folder(x, tmp_path / "pets", torch.arange(n) % 3, NAMES)
    return tmp_path / "pets", x


def written_rows(data: FolderDataset, x: torch.Tensor) -> torch.Tensor:
    """The rows of x that the data set's files hold ("dog/0010.png" is row 10)."""
    return x[[int(Path(name).stem) for name in data.files]]


def quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning expected
        return load_dataset(*args, **kwargs)


# --- layout, labels, splits --------------------------------------------------------------------


def test_labels_come_from_sub_folder_names_and_pixels_round_trip(tmp_path):
    folder, x = labelled_folder(tmp_path)
    data = quiet_load(folder, split="all")
    assert isinstance(data, FolderDataset) and data.kind == "image" and data.levels == 256
    assert data.label_names == NAMES and data.event_shape == (1, 8, 8)
    # each row's label is the sub-folder its file is in, and its pixels are the written ones
    assert [NAMES[k] for k in data.y.tolist()] == [Path(f).parent.name for f in data.files]
    assert torch.equal(data.x, written_rows(data, x))
    assert data.y.tolist() == [int(Path(f).stem) % 3 for f in data.files]


def test_split_by_path_hash_is_disjoint_stable_and_mixes_classes(tmp_path):
    folder, _ = labelled_folder(tmp_path, n=60)
    train, test = quiet_load(folder), quiet_load(folder, split="test")
    every = quiet_load(folder, split="all")
    assert set(train.files).isdisjoint(test.files)
    assert every.files == train.files + test.files and len(every) == 60
    assert all(file_key(f) % TEST_MODULUS == 0 for f in test.files)
    assert all(file_key(f) % TEST_MODULUS != 0 for f in train.files)
    # a file's split depends on its own path only: adding files moves no old one
    save_image_folder(grid_images(5, seed=1), tmp_path / "more")
    for i, src in enumerate(sorted((tmp_path / "more").iterdir())):
        src.rename(folder / "cat" / f"new{i}.png")
    assert set(test.files) <= set(quiet_load(folder, split="test").files)
    # rows follow the hash, not the folders: the first rows are not all one class
    assert len(set(train.y[:10].tolist())) > 1
    # n keeps the first n rows of the split
    assert quiet_load(folder, n=7).files == quiet_load(folder).files[:7]


def test_train_and_test_folders_give_the_splits_and_one_label_order(tmp_path):
    save_image_folder(grid_images(6), tmp_path / "d" / "train", [0, 1, 0, 1, 0, 1], ["b", "c"])
    save_image_folder(grid_images(2, seed=1), tmp_path / "d" / "test", [0, 1], ["a", "c"])
    train = quiet_load(tmp_path / "d")
    test = quiet_load(tmp_path / "d", split="test")
    assert train.label_names == test.label_names == ("a", "b", "c")
    assert sorted(train.y.tolist()) == [1, 1, 1, 2, 2, 2] and sorted(test.y.tolist()) == [0, 2]
    assert all(f.startswith("train/") for f in train.files) and len(test) == 2


def test_unlabelled_folder_and_label_order():
    assert label_order(["10", "2", "1"]) == ["1", "2", "10"]  # numbers by value
    assert label_order(["dog", "Cat", "cat"]) == ["Cat", "cat", "dog"]


def test_unlabelled_folder_has_no_labels(tmp_path):
    save_image_folder(grid_images(20), tmp_path / "flat")
    data = quiet_load(tmp_path / "flat", split="all")
    assert data.y is None and data.label_names is None and len(data) == 20


def test_loose_files_beside_class_folders_are_named(tmp_path):
    folder, _ = labelled_folder(tmp_path, n=12)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "stray.png")
    (folder / "notes.txt").write_text("not an image, ignored silently")
    with pytest.warns(UserWarning, match=r"ignored 1 image file.*stray\.png"):
        data = load_dataset(folder, split="all")
    assert "stray.png" not in data.files and len(data) == 12


# --- corrupt files -----------------------------------------------------------------------------


def test_corrupt_files_are_skipped_named_and_counted(tmp_path):
    folder, x = labelled_folder(tmp_path, n=30)
    (folder / "cat" / "garbage.png").write_bytes(b"\x89PNG but not really")
    good = (folder / "dog" / "0001.png").read_bytes()
    (folder / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "eel" / "text.jpg").write_text("hello")
    with pytest.warns(UserWarning, match=r"skipped 3 of 33 image files") as caught:
        data = load_dataset(folder, split="all", stream=False)
    message = str(caught[0].message)
    for name in ("cat/garbage.png", "dog/truncated.png", "eel/text.jpg"):
        assert name in message
    assert sorted(name for name, _ in data.skipped) == [
        "cat/garbage.png", "dog/truncated.png", "eel/text.jpg"
    ]  # fmt: skip
    assert len(data) == 30 and torch.equal(data.x, written_rows(data, x))


def test_a_folder_of_only_broken_files_is_a_clear_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"none of the 1 .*a\.png"):
        load_dataset(tmp_path / "bad", split="all")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no png/jpg/jpeg/webp files"):
        load_dataset(tmp_path / "empty")


def test_a_file_broken_after_opening_names_itself_when_streamed(tmp_path):
    folder, _ = labelled_folder(tmp_path, n=10)
    data = quiet_load(folder, split="all", stream=True)
    (folder / data.files[3]).write_bytes(b"gone")
    with pytest.raises(ValueError, match=rf"{data.files[3]}.*load the folder again"):
        data.x[[2, 3]]


# --- pixels ------------------------------------------------------------------------------------


def test_channels_follow_the_files_or_the_option(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    grey = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    (tmp_path / "mix").mkdir()
    Image.fromarray(rgb).save(tmp_path / "mix" / "a.png")
    Image.fromarray(grey).save(tmp_path / "mix" / "b.png")
    data = quiet_load(tmp_path / "mix", split="all")
    rows = dict(zip(data.files, data.x, strict=True))
    assert data.event_shape == (3, 8, 8)
    assert torch.equal(rows["a.png"], torch.from_numpy(rgb.transpose(2, 0, 1).copy()) / 255)
    assert torch.equal(rows["b.png"], torch.from_numpy(np.stack([grey] * 3)) / 255)  # repeated
    one = quiet_load(tmp_path / "mix", split="all", channels=1)
    luma = np.asarray(Image.fromarray(rgb).convert("L"))  # Pillow's ITU-R 601-2 luma
    assert one.event_shape == (1, 8, 8)
    assert torch.equal(dict(zip(one.files, one.x, strict=True))["a.png"][0],
                       torch.from_numpy(luma.copy()) / 255)  # fmt: skip
    assert quiet_load(tmp_path / "mix", split="all", channels=4).event_shape == (4, 8, 8)
    with pytest.raises(ValueError, match="channels must be 1"):
        load_dataset(tmp_path / "mix", channels=2)


def test_sixteen_bit_grey_is_quantised_to_eight_bits(tmp_path):
    values = np.array([[0, 128, 257, 65535]] * 4, dtype=np.uint16)  # 128/257 rounds to 0
    (tmp_path / "deep").mkdir()
    Image.fromarray(values).save(tmp_path / "deep" / "a.png")
    assert Image.open(tmp_path / "deep" / "a.png").mode.startswith("I")
    data = quiet_load(tmp_path / "deep", split="all")
    assert torch.equal(data.x[0, 0, 0], torch.tensor([0.0, 0.0, 1.0, 255.0]) / 255)


def test_sizes_must_agree_unless_resized_and_cropped(tmp_path):
    wide = np.arange(8 * 16, dtype=np.uint8).reshape(8, 16)  # 16 wide, 8 high
    big = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    (tmp_path / "sizes").mkdir()
    Image.fromarray(wide).save(tmp_path / "sizes" / "wide.png")
    Image.fromarray(big).save(tmp_path / "sizes" / "big.png")
    with pytest.raises(ValueError, match=r"differ in size .*--size N"):
        load_dataset(tmp_path / "sizes", split="all")
    data = quiet_load(tmp_path / "sizes", split="all", size=8)
    rows = dict(zip(data.files, data.x, strict=True))
    # the shorter side is already 8: no resampling, the centre 8 columns (from (16 - 8) // 2)
    assert torch.equal(rows["wide.png"][0], torch.from_numpy(wide[:, 4:12].copy()) / 255)
    # 16 x 16 -> 8 x 8: Pillow's bicubic resize, nothing cropped
    small = np.asarray(Image.fromarray(big).resize((8, 8), Image.Resampling.BICUBIC))
    assert torch.equal(rows["big.png"][0], torch.from_numpy(small.copy()) / 255)
    assert quiet_load(tmp_path / "sizes", split="all", size=(6, 10)).event_shape == (1, 6, 10)
    assert parse_size("32") == 32 and parse_size("32x48") == (32, 48)
    with pytest.raises(ValueError, match="N or HxW"):
        parse_size("big")


def test_image_options_are_refused_for_other_data():
    with pytest.raises(ValueError, match="size apply to folders of images only"):
        load_dataset("moons", n=10, size=8)


# --- streaming ---------------------------------------------------------------------------------


def test_streamed_rows_equal_in_memory_rows(tmp_path):
    folder, _ = labelled_folder(tmp_path, n=50)
    memory = quiet_load(folder, stream=False)
    lazy = quiet_load(folder, stream=True)
    assert isinstance(lazy.x, ImageFolderArray) and isinstance(memory.x, torch.Tensor)
    assert lazy.files == memory.files and torch.equal(lazy.y, memory.y)
    assert lazy.x.shape == tuple(memory.x.shape) and len(lazy.x) == len(memory.x)
    assert torch.equal(lazy.x[:], memory.x)
    idx = torch.tensor([5, 0, 5, len(memory) - 1])  # any order, repeats
    assert torch.equal(lazy.x[idx], memory.x[idx]) and torch.equal(lazy.x[-1], memory.x[-1])
    assert torch.equal(lazy.x.rows(3, 9)[1:4], memory.x[4:7])  # a window is an array of its own
    assert torch.equal(load_dataset(folder, n=9, stream=True).x[:], memory.x[:9])
    # the trainer's batches from the files equal those from memory
    rows = torch.tensor([7, 1, 30])
    streamed, held = RowSource(lazy.x, lazy.y, "cpu"), RowSource(memory.x, memory.y, "cpu")
    assert streamed.streamed and not held.streamed
    for a, b in zip(streamed.take(rows), held.take(rows), strict=True):
        assert torch.equal(a, b)


def test_a_folder_too_big_for_memory_is_streamed(tmp_path, monkeypatch):
    folder, _ = labelled_folder(tmp_path, n=12)
    assert isinstance(quiet_load(folder, split="all").x, torch.Tensor)  # small: in memory
    monkeypatch.setattr("genlab.data.folders.MEMORY_SHARE", 1e-12)  # nothing fits
    big = quiet_load(folder, split="all")
    assert isinstance(big.x, ImageFolderArray)
    assert torch.equal(big.x[:], load_dataset(folder, split="all", stream=False).x)


def test_a_model_trained_on_streamed_rows_equals_one_trained_in_memory(tmp_path):
    folder, _ = labelled_folder(tmp_path, n=40)
    models = []
    for stream in (False, True):
        data = quiet_load(folder, stream=stream)
        vae = VAE(max_steps=4, batch_size=16, seed=0, data_window=1)
        models.append(vae.fit(data, y=data.y))
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values(),
                            strict=True):  # fmt: skip
        assert torch.equal(a, b), name


# --- label names with the model ----------------------------------------------------------------


def test_names_in_y_become_label_values():
    names = ("cat", "dog")
    assert labels_from_names("dog", names) == 1
    assert labels_from_names(["dog", "cat"], names).tolist() == [1, 0]
    assert labels_from_names(2, names) == 2  # numbers pass as they are
    with pytest.raises(ValueError, match=r"unknown label 'eel'.*'cat', 'dog'"):
        labels_from_names("eel", names)
    with pytest.raises(ValueError, match="labels have none"):
        labels_from_names("cat", None)
    assert parse_label("dog", names) == "dog" and parse_label("1", None) == 1
    assert parse_label("7", ("7", "8")) == "7"  # a class named "7" is that class


def test_label_names_are_saved_with_the_model_and_taken_by_sample(tmp_path):
    folder, _ = labelled_folder(tmp_path, n=30)
    data = quiet_load(folder)
    vae = VAE(max_steps=2, batch_size=16, seed=0).fit(data, y=data.y)
    assert vae.label_names_ == NAMES
    by_name = vae.sample(4, seed=3, y="dog", mean=True)
    assert torch.equal(by_name, vae.sample(4, seed=3, y=1, mean=True))
    path = vae.save(tmp_path / "run")
    assert json.loads((path / "config.json").read_text())["fitted"]["label_names"] == list(NAMES)
    loaded = genlab.load(path)
    assert loaded.label_names_ == NAMES
    assert torch.equal(loaded.sample(4, seed=3, y="dog", mean=True), by_name)
    x = data.x[:3]
    assert torch.allclose(loaded.log_prob(x, ["cat", "dog", "eel"], seed=0),
                          loaded.log_prob(x, torch.tensor([0, 1, 2]), seed=0))  # fmt: skip
    with pytest.raises(ValueError, match="unknown label 'bird'"):
        loaded.sample(2, y="bird")
    assert TrainingData.from_input(data, data.y).label_names == NAMES
    assert TrainingData.from_input(data).label_names is None  # no labels, no names


# --- the command line --------------------------------------------------------------------------


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_fits_a_folder_and_samples_a_named_class_into_a_folder(tmp_path, capsys):
    folder, _ = labelled_folder(tmp_path, n=40)
    run_dir = tmp_path / "run"
    code, _, err = cli(capsys, "fit", "vae", "--data", folder, "--conditional",
                         "--max-steps", 2, "--batch-size", 16, "--out", run_dir,
                         "--no-progress", "--threads", 1)  # fmt: skip
    assert code == 0, err
    code, _, err = cli(capsys, "sample", run_dir, "-n", 5, "--label", "eel",
                         "--out", f"{tmp_path / 'drawn'}/")  # fmt: skip
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    assert files == ["0000.png", "0001.png", "0002.png", "0003.png", "0004.png", "grid.png"]
    assert Image.open(tmp_path / "drawn" / "0000.png").size == (8, 8)
    # the PNGs hold the samples, 8 bits per value
    expected = genlab.load(run_dir).sample(5, seed=0, y="eel").clamp(0, 1)
    written = np.stack([read_image(tmp_path / "drawn" / f, None, None)[0] for f in files[:5]])
    assert np.array_equal(written, torch.round(expected[:, 0].double() * 255).byte().numpy())
    code, _, err = cli(capsys, "sample", run_dir, "--label", "bird", "--out",
                         f"{tmp_path / 'other'}/")  # fmt: skip
    assert code == 1 and "genlab: error: unknown label 'bird'" in err and "'cat'" in err
    code, _, err = cli(capsys, "sample", run_dir, "--out", f"{tmp_path / 'drawn'}/")
    assert code == 1 and "is not empty" in err
    code, _, err = cli(capsys, "sample", run_dir, "--out", tmp_path / "x.jpeg")
    assert code == 2 and "or in / (a folder of PNGs)" in err


def test_cli_fit_and_eval_resize_a_folder_of_mixed_sizes(tmp_path, capsys):
    folder = tmp_path / "mixed"
    save_image_folder(grid_images(20, side=8), folder / "a")
    save_image_folder(grid_images(20, side=10, seed=1), folder / "b")
    run_dir = tmp_path / "run"
    code, _, err = cli(capsys, "fit", "gmm", "--data", folder, "--components", 1,
                       "--out", run_dir, "--threads", 1)  # fmt: skip
    assert code == 1 and "--size N" in err
    code, _, err = cli(capsys, "fit", "gmm", "--data", folder, "--size", 6, "--channels", 3,
                       "--components", 1, "--out", run_dir, "--threads", 1)  # fmt: skip
    assert code == 0, err
    assert genlab.load(run_dir).event_shape == (3, 6, 6)
    code, out, err = cli(capsys, "eval", run_dir, "--data", folder, "--size", 6,
                         "--channels", 3, "--json")  # fmt: skip
    assert code == 0, err
    assert np.isfinite(json.loads(out)["bits_per_dim"])


def test_a_latent_model_takes_the_folder_label_names(tmp_path):
    from genlab.models import Latent

    folder, _ = labelled_folder(tmp_path, n=30)
    data = load_dataset(folder)
    model = Latent(
        prior="vae",
        prior_options={"hidden": 8, "latent_dim": 2, "max_steps": 2},
        autoencoder_options={"latent_shape": "4", "hidden": 8, "max_steps": 2},
    )
    model.fit(data, data.y)
    assert model.label_names_ == NAMES
    assert torch.equal(model.sample(3, seed=0, y="dog"), model.sample(3, seed=0, y=1))
    model.save(tmp_path / "run")
    assert genlab.load(tmp_path / "run").label_names_ == NAMES
