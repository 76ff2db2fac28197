"""`genlab edit`: inpainting, SDEdit and inversion of PNG images and .npy rows through the
command line, with tiny saved models, and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.cli import run
from genlab.models import Diffusion, FlowMatching, GaussianMixture

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 8


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("genlab: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def blobs(n: int, seed: int) -> torch.Tensor:
    """(n, 1, 8, 8) images in [0, 1]: a bright square at a random place on a dark ground."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, 1, SIDE, SIDE, generator=g)
    corners = torch.randint(0, SIDE - 3, (n, 2), generator=g)
    for i, (r, c) in enumerate(corners.tolist()):
        x[i, 0, r : r + 3, c : c + 3] = 0.9
    return x


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny models: image flow and diffusion (1 x 8 x 8), a 2-D point flow, a
    conditional point flow and a GMM."""
    root = tmp_path_factory.mktemp("edit_runs")
    tiny = {"hidden": 16, "max_steps": 20, "warmup_steps": 2, "ema_decay": None, "seed": 0}
    images = blobs(200, 0)
    g = torch.Generator().manual_seed(1)
    points = torch.randn(300, 2, generator=g) * torch.tensor([1.0, 0.5]) + 1.0
    labels = (points[:, 0] > 1.0).long()
    made = {
        "flow": FlowMatching(**tiny).fit(images, progress=False),
        "diffusion": Diffusion(**tiny).fit(images, progress=False),
        "points": FlowMatching(**tiny).fit(points, progress=False),
        "conditional": FlowMatching(**tiny).fit(points, labels, progress=False),
        "gmm": GaussianMixture(2, seed=0).fit(points),
    }
    return {name: model.save(root / name) for name, model in made.items()}


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


@pytest.fixture
def picture(tmp_path) -> tuple[Path, np.ndarray]:
    """An 8 x 8 grey PNG of a blob, and its 8-bit pixels."""
    pixels = np.round(blobs(1, 5)[0, 0].numpy() * 255).astype(np.uint8)
    return write_png(tmp_path / "input.png", pixels), pixels


@pytest.fixture
def mask_png(tmp_path) -> tuple[Path, np.ndarray]:
    """White (generate) on the right half."""
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[:, SIDE // 2 :] = 255
    return write_png(tmp_path / "mask.png", mask), mask > 127


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_inpaint_keeps_the_known_pixels_of_the_png(runs, picture, mask_png, tmp_path, capsys,
                                                   family):  # fmt: skip
    (image, pixels), (mask, generate) = picture, mask_png
    out = tmp_path / "out.png"
    code, stdout, err = cli(capsys, "edit", runs[family], "--input", image, "--mask", mask,
                            "--steps", 5, "--out", out)  # fmt: skip
    assert code == 0, err
    assert f"wrote {out}" in stdout and "inpainted" in stdout
    result = read_png(out)
    assert result.shape == (SIDE, SIDE)
    assert np.array_equal(result[~generate], pixels[~generate])
    assert not np.array_equal(result[generate], pixels[generate])


def test_sdedit_writes_a_grid_of_n_samples(runs, picture, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, stdout, err = cli(capsys, "edit", runs["flow"], "--input", picture[0], "--strength",
                            0.6, "--n", 3, "--steps", 4, "--out", out)  # fmt: skip
    assert code == 0, err
    assert "SDEdit at strength 0.6" in stdout and "x 3 samples" in stdout
    grid = read_png(out)
    assert grid.shape == (SIDE + 2, 3 * (SIDE + 1) + 1)  # 1 pixel of white between
    tiles = [grid[1 : 1 + SIDE, 1 + i * (SIDE + 1) : 1 + i * (SIDE + 1) + SIDE] for i in range(3)]
    assert not np.array_equal(tiles[0], tiles[1])  # different noise per sample


def test_strength_zero_writes_the_input_back(runs, picture, tmp_path, capsys):
    out = tmp_path / "same.png"
    code, _, err = cli(capsys, "edit", runs["diffusion"], "--input", picture[0], "--strength",
                       0, "--out", out)  # fmt: skip
    assert code == 0, err
    assert np.array_equal(read_png(out), picture[1])


def test_invert_writes_noise_that_samples_back_to_the_input(runs, picture, tmp_path, capsys):
    out = tmp_path / "noise.npy"
    code, stdout, err = cli(capsys, "edit", runs["flow"], "--input", picture[0], "--invert",
                            "--steps", 40, "--out", out)  # fmt: skip
    assert code == 0, err
    noise = np.load(out)
    assert noise.shape == (1, 1, SIDE, SIDE) and "noise" in stdout
    model = genlab.load(runs["flow"])
    back = model.sample(1, noise=torch.from_numpy(noise), **model.inversion_sampler(steps=40))
    x = torch.from_numpy(picture[1] / 255.0).float()
    assert float((back[0, 0] - x).abs().max()) < 0.02


def test_png_of_another_size_is_refused_or_resized(runs, tmp_path, capsys):
    big = write_png(tmp_path / "big.png", np.full((16, 12), 200))
    out = tmp_path / "out.png"
    code, _, err = cli(capsys, "edit", runs["flow"], "--input", big, "--strength", 0.5,
                       "--out", out)  # fmt: skip
    assert_one_line_error(code, err, "12 x 16 pixels", "8 x 8", "(1, 8, 8)", "--resize")
    code, _, err = cli(capsys, "edit", runs["flow"], "--input", big, "--strength", 0.5,
                       "--steps", 3, "--resize", "--out", out)  # fmt: skip
    assert code == 0, err
    assert read_png(out).shape == (SIDE, SIDE)


def test_colour_png_is_converted_to_the_models_grey(runs, tmp_path, capsys):
    rgb = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    image = tmp_path / "rgb.png"
    Image.fromarray(rgb, "RGB").save(image)
    out = tmp_path / "out.png"
    code, _, err = cli(capsys, "edit", runs["flow"], "--input", image, "--strength", 0,
                       "--out", out)  # fmt: skip
    assert code == 0, err
    assert np.array_equal(read_png(out), np.asarray(Image.fromarray(rgb).convert("L")))


def test_points_inpaint_from_npy(runs, tmp_path, capsys):
    x = np.array([[0.5, 3.0], [1.5, -2.0], [1.0, 1.0]], dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "mask.npy", np.array([0, 1]))
    out = tmp_path / "y_given_x.npy"
    code, stdout, err = cli(capsys, "edit", runs["points"], "--input", tmp_path / "x.npy",
                            "--mask", tmp_path / "mask.npy", "--n", 4, "--steps", 4,
                            "--out", out)  # fmt: skip
    assert code == 0, err
    result = np.load(out)
    assert result.shape == (12, 2) and "3 inputs x 4 samples" in stdout
    assert np.array_equal(result[:, 0], np.repeat(x[:, 0], 4))
    assert not np.array_equal(result[:, 1], np.repeat(x[:, 1], 4))


def test_conditional_run_takes_a_label(runs, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.array([1.0, 1.0], dtype=np.float32))  # one row
    out = tmp_path / "out.npy"
    code, _, err = cli(capsys, "edit", runs["conditional"], "--input", tmp_path / "x.npy",
                       "--strength", 0.5, "--label", 1, "--guidance", 1.0, "--steps", 3,
                       "--out", out)  # fmt: skip
    assert code == 0, err
    assert np.load(out).shape == (1, 2)
    code, _, err = cli(capsys, "edit", runs["points"], "--input", tmp_path / "x.npy",
                       "--strength", 0.5, "--label", 1, "--out", out)  # fmt: skip
    assert_one_line_error(code, err, "without labels")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ((), ("pass --mask (inpaint), --strength (SDEdit) or --invert",)),
        (("--invert", "--strength", "0.5"), ("--invert", "without --mask")),
        (("--invert", "--out", "noise.png"), ("--out FILE.npy",)),
        (("--strength", "1.5"), ("--strength", "less than or equal to 1")),
        (("--strength", "0.5", "--out", "x.jpg"), ("must end in .png or .npy",)),
        (("--mask", "missing.png"), ("--mask", "does not exist")),
        (("--strength", "0.5", "--method", "dopri5", "--mask", "MASK"), ("fixed-step",)),
        (("--strength", "0.5", "--eta", "1"), ("No such option",)),
    ],
)
def test_bad_edits_are_one_line_errors(runs, picture, mask_png, tmp_path, capsys, args,
                                       fragments):  # fmt: skip
    args = [str(mask_png[0]) if a == "MASK" else a for a in args]
    args = [str(tmp_path / a) if a.endswith((".png", ".npy", ".jpg")) and "/" not in a
            else a for a in args]  # fmt: skip
    code, _, err = cli(capsys, "edit", runs["flow"], "--input", picture[0], *args)
    assert_one_line_error(code, err, *fragments)


def test_models_that_cannot_edit_and_inputs_that_do_not_fit(runs, picture, tmp_path, capsys):
    code, _, err = cli(capsys, "edit", runs["gmm"], "--input", picture[0], "--strength", 0.5)
    assert_one_line_error(code, err, "flow or diffusion", "gmm")
    code, _, err = cli(capsys, "edit", runs["points"], "--input", picture[0], "--strength", 0.5)
    assert_one_line_error(code, err, "shape (2,)", ".npy")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), dtype=np.float32))
    code, _, err = cli(capsys, "edit", runs["points"], "--input", tmp_path / "wrong.npy",
                       "--strength", 0.5)  # fmt: skip
    assert_one_line_error(code, err, "init must be rows of shape (n, 2)")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    code, _, err = cli(capsys, "edit", runs["flow"], "--input", tmp_path / "bad.png",
                       "--strength", 0.5)  # fmt: skip
    assert_one_line_error(code, err, "not an image")


# -- the editing figure of genlab plot ----------------------------------------------------------
def test_plot_writes_the_editing_figure(runs, tmp_path, capsys):
    """`genlab plot` of a diffusion image model (its other pictures are quick) lists
    editing.png among the files it writes."""
    import shutil

    run_dir = shutil.copytree(runs["diffusion"], tmp_path / "diffusion")
    code, stdout, err = cli(capsys, "plot", run_dir, "--samples", 4)
    assert code == 0, err
    figure = run_dir / "editing.png"
    assert figure.is_file() and f"wrote {figure}" in stdout
    with Image.open(figure) as image:
        width, height = image.size
    assert width > 200 and height > 400  # nine rows of images


@pytest.mark.parametrize("name", ["flow", "points"])
def test_the_editing_figure_of_images_and_points(runs, tmp_path, name):
    from genlab.cli.plot import plot_editing
    from genlab.data import load_dataset

    model = genlab.load(runs[name])
    kind = "points" if name == "points" else "image"
    test = load_dataset("moons", split="test", n=50) if name == "points" else None
    (path,) = plot_editing(model, test, kind, 0, tmp_path)
    assert path == tmp_path / "editing.png"
    with Image.open(path) as image:
        assert min(image.size) > 200


def test_plot_of_a_gmm_draws_no_editing_figure(runs, tmp_path, capsys):
    import shutil

    run_dir = shutil.copytree(runs["gmm"], tmp_path / "gmm")
    code, stdout, err = cli(capsys, "plot", run_dir)
    assert code == 0, err
    assert not (run_dir / "editing.png").exists() and "editing" not in stdout


def test_editing_figures_check_their_input(tmp_path):
    from genlab import plots

    images = torch.rand(3, 1, 8, 8)
    path = plots.edit_rows({"a": images, "b": images[:2]}, tmp_path / "rows.png")
    assert path.is_file()
    with pytest.raises(ValueError, match="same image height"):
        plots.edit_rows({"a": images, "b": torch.rand(3, 1, 6, 6)}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="at least one"):
        plots.edit_rows({}, tmp_path / "bad.png")
    points = torch.randn(5, 2)
    assert plots.edit_points_2d({"p": (points, points + 1)}, tmp_path / "p.png").is_file()
    with pytest.raises(ValueError, match="same shape"):
        plots.edit_points_2d({"p": (points, points[:3])}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"\.png"):
        plots.edit_points_2d({"p": (points, points)}, tmp_path / "bad.jpg")
