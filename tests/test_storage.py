"""Nothing lost, nothing silent, in storage: a model folder changes as a whole (a kill at any
step of a save leaves the old model or the new one), `load` refuses edited or corrupt folders
with the file and field named, sizes are checked against memory up front, a diverged model is
never returned, and run folders are checked and locked (genlab.io, models.base, genlab.runs)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import genlab
from genlab import io, train
from genlab.data import load_dataset
from genlab.data.dataset import physical_memory
from genlab.models import DivergedError, FlowMatching, GaussianMixture
from genlab.models import base as models_base
from genlab.runs import LOCK_FILE, check_out_folder, run_lock

pytestmark = pytest.mark.usefixtures("one_thread")
FIXTURES = Path(__file__).parent / "fixtures" / "v1"


# -- a kill at step k: every os call a folder write makes is a step ------------------------------
class Killed(BaseException):
    """Stands for SIGKILL: a BaseException, so no `except Exception` clean-up runs."""


OPS = ("open", "write", "fsync", "replace", "mkdir", "rmdir", "unlink")


def run_killed_at(k: int, action) -> tuple[int, bool]:
    """Run action() with the k-th of its os calls (OPS, counted from 1) killed: that call
    does not happen (a write is torn: half of its bytes land). Returns (calls, killed)."""
    count = 0

    def wrap(name, real):
        def op(*args, **kwargs):
            nonlocal count
            count += 1
            if count == k:
                if name == "write":
                    real(args[0], bytes(args[1])[: len(args[1]) // 2])
                raise Killed(f"os.{name}, call {count}")
            return real(*args, **kwargs)

        return op

    with pytest.MonkeyPatch.context() as mp:
        for name in OPS:
            mp.setattr(os, name, wrap(name, getattr(os, name)))
        try:
            action()
        except Killed:
            return count, True
    return count, False


OLD = {"config.json": b'{"v": "old"}', "model.safetensors": b"old weights" * 50}
NEW = {"config.json": b'{"v": "new", "longer": true}', "model.safetensors": b"new" * 300}


def folder_with(tmp: Path, files: dict[str, bytes]) -> Path:
    tmp.mkdir(parents=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return tmp


def test_a_folder_write_killed_at_any_step_reads_old_or_new(tmp_path):
    calls, killed = run_killed_at(0, lambda: io.write_folder_atomically(tmp_path / "probe", NEW))
    assert not killed and calls >= 12  # mkdirs, 3 files written + synced, moves, clean-up
    seen = []
    for k in range(1, calls + 1):
        folder = folder_with(tmp_path / f"k{k}", OLD)
        _, killed = run_killed_at(k, lambda f=folder: io.write_folder_atomically(f, NEW))
        assert killed
        got = io.read_folder(folder, OLD)
        assert got in (OLD, NEW), (k, got)
        seen.append("new" if got == NEW else "old")
        assert not (folder / io.PENDING).exists()  # finished or dropped by the reader
        assert io.read_folder(folder, OLD) == got  # and stable
    assert seen[0] == "old" and seen[-1] == "new"
    assert seen == sorted(seen, key=["old", "new"].index)  # one switch: at COMPLETE


def test_a_kill_while_a_reader_finishes_a_save_still_reads_old_or_new(tmp_path):
    """Recovery is itself killable: a reader killed at any step of finishing (or dropping)
    a killed save leaves a state the next reader reads as the same version."""
    calls = run_killed_at(0, lambda: io.write_folder_atomically(tmp_path / "probe", NEW))[0]

    def killed_save(k: int) -> Path:
        folder = tmp_path / f"k{k}"
        shutil.rmtree(folder, ignore_errors=True)
        folder_with(folder, OLD)
        run_killed_at(k, lambda: io.write_folder_atomically(folder, NEW))
        return folder

    for k in range(1, calls + 1):
        shutil.copytree(killed_save(k), tmp_path / "copy", dirs_exist_ok=False)
        expected = io.read_folder(tmp_path / "copy", OLD)
        shutil.rmtree(tmp_path / "copy")
        for j in range(1, 100):
            folder = killed_save(k)
            _, killed = run_killed_at(j, lambda f=folder: io.resolve_folder(f))
            assert io.read_folder(folder, OLD) == expected, (k, j)
            if not killed:
                break


def test_a_read_only_folder_reads_a_complete_save_from_pending(tmp_path, monkeypatch):
    folder = folder_with(tmp_path / "m", OLD)
    calls = run_killed_at(0, lambda: io.write_folder_atomically(tmp_path / "probe", NEW))[0]
    for k in range(1, calls + 1):
        shutil.rmtree(folder)
        folder_with(folder, OLD)
        run_killed_at(k, lambda: io.write_folder_atomically(folder, NEW))
        if (folder / io.PENDING / io.COMPLETE).exists():
            break
    pending = sorted(p.name for p in (folder / io.PENDING).iterdir())
    with monkeypatch.context() as mp:  # as if read-only (this may run as root)
        mp.setattr(os, "access", lambda path, mode, **kw: mode != os.W_OK)
        assert io.read_folder(folder, OLD) == NEW
        assert sorted(p.name for p in (folder / io.PENDING).iterdir()) == pending  # untouched
    assert io.read_folder(folder, OLD) == NEW and not (folder / io.PENDING).exists()


def test_a_save_in_progress_elsewhere_is_not_removed_by_a_reader(tmp_path):
    """Another process writing .pending holds its lock: readers leave it alone."""
    folder = folder_with(tmp_path / "m", OLD)
    (folder / io.PENDING).mkdir()
    (folder / io.PENDING / "config.json").write_bytes(b"half")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
         "os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(folder / io.PENDING)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert io.read_folder(folder, OLD) == OLD
        assert (folder / io.PENDING / "config.json").exists()
        with pytest.raises(OSError, match="another process is saving"):
            io.write_folder_atomically(folder, NEW)
    finally:
        holder.kill()
        holder.wait()
    assert io.read_folder(folder, OLD) == OLD and not (folder / io.PENDING).exists()


def test_files_honour_the_umask(tmp_path):
    before = os.umask(0o027)
    try:
        io.atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        io.write_folder_atomically(tmp_path / "m", {"b.bin": b"y"})
        assert io.umask() == 0o027
    finally:
        os.umask(before)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "m" / "b.bin").stat().st_mode & 0o777 == 0o640


# -- model folders --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_mixtures():
    x = load_dataset("moons", n=200).x
    old = GaussianMixture(2, seed=0).fit(x)
    new = GaussianMixture(3, seed=1).fit(x)  # other shapes: a mix cannot load
    return old, new


def test_a_save_killed_at_any_step_loads_the_old_model_or_the_new(two_mixtures, tmp_path):
    old, new = two_mixtures
    old.save(tmp_path / "old")
    calls = run_killed_at(0, lambda: new.save(tmp_path / "probe"))[0]
    seen = []
    for k in range(1, calls + 1):
        folder = tmp_path / f"k{k}"
        shutil.copytree(tmp_path / "old", folder)
        assert run_killed_at(k, lambda f=folder: new.save(f))[1]
        loaded = genlab.load(folder)
        match = [m for m in (old, new) if loaded.means_.shape == m.means_.shape]
        assert match and torch.equal(loaded.means_, match[0].means_), k
        seen.append("new" if match[0] is new else "old")
    assert seen[0] == "old" and seen[-1] == "new" and seen == sorted(seen, reverse=True)


def test_a_folder_saved_before_this_format_loads_and_saves_over(two_mixtures, tmp_path):
    folder = tmp_path / "v1"
    shutil.copytree(FIXTURES / "gmm-moons", folder)
    assert "weights_sha256" not in json.loads((folder / "config.json").read_text())
    assert genlab.load(folder).means_.shape == (3, 2)
    two_mixtures[0].save(folder)
    assert genlab.load(folder).means_.shape == (2, 2)
    assert "weights_sha256" in json.loads((folder / "config.json").read_text())


def test_weights_from_another_save_are_refused(two_mixtures, tmp_path):
    old, new = two_mixtures
    old.save(tmp_path / "a"), new.save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors does not match .*sha256"):
        genlab.load(tmp_path / "a")


def edit_config(folder: Path, edit) -> None:
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))


def _set(keys: tuple, value):
    def edit(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return edit


def _drop(*keys):
    def edit(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return edit


EDITS = {  # edit of config.json -> what the message must say (besides the file's name)
    "family missing": (_drop("family"), "not a genlab config"),
    "family a list": (_set(("family",), ["gmm"]), "unknown family"),
    "family unknown": (_set(("family",), "gan"), "unknown family 'gan'"),
    "config a list": (_set(("config",), [1, 2]), "'config' must be a JSON object"),
    "fitted a string": (_set(("fitted",), "x"), "'fitted' must be a JSON object"),
    "format a string": (_set(("genlab_format",), "1"), "genlab_format must be an integer"),
    "format newer": (_set(("genlab_format",), 99), "newer genlab"),
    "unknown config key": (_set(("config", "colour"), 1), "unknown gmm config keys"),
    "rule broken": (_set(("config", "n_components"), -2), "n_components must be"),
    "wrong type": (_set(("config", "covariance_type"), ["full"]), "covariance_type must be"),
    "shape negative": (_set(("fitted", "event_shape"), [-2]), "event_shape must be a list"),
    "shape of floats": (_set(("fitted", "event_shape"), [2.0]), "event_shape must be a list"),
    "shape of bools": (_set(("fitted", "event_shape"), [True]), "event_shape must be a list"),
    "shape a dict": (_set(("fitted", "event_shape"), {"a": 1}), "event_shape must be a list"),
    "shape absurd": (_set(("fitted", "event_shape"), [10**12]), "would need .* of memory"),
    "shape other": (_set(("fitted", "event_shape"), [3]), r"model\.safetensors does not match"),
    "fitted fact wrong type": (_set(("fitted", "lower_bounds"), 5), "fitted facts are edited"),
    "sha a number": (_set(("weights_sha256",), 5), "weights_sha256"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_an_edited_config_json_is_refused_naming_the_file_and_field(two_mixtures, tmp_path, case):
    edit, message = EDITS[case]
    two_mixtures[0].save(tmp_path / "m")
    edit_config(tmp_path / "m", edit)
    with pytest.raises(ValueError, match=message) as info:
        genlab.load(tmp_path / "m")
    assert "m/config.json" in str(info.value) or "m/model.safetensors" in str(info.value)


@pytest.mark.parametrize("cut", [0, 1, 40])
def test_a_truncated_or_binary_config_json_is_refused(two_mixtures, tmp_path, cut):
    two_mixtures[0].save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    path.write_bytes(path.read_bytes()[:cut] if cut else b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"config\.json: corrupt config\.json"):
        genlab.load(tmp_path / "m")


def test_a_family_build_failure_from_edited_fitted_facts_is_a_value_error(tmp_path):
    flow = FlowMatching(hidden=8, depth=1, max_steps=2, warmup_steps=1, sample_steps=2)
    flow.fit(load_dataset("moons", n=64)).save(tmp_path / "m")
    edit_config(tmp_path / "m", _drop("fitted", "net"))
    with pytest.raises(ValueError, match=r"config\.json: the fitted facts are edited .*'net'"):
        genlab.load(tmp_path / "m")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tensors_are_refused_on_load_and_on_save(two_mixtures, tmp_path, value):
    model = two_mixtures[0]
    model.save(tmp_path / "m")
    edit_config(tmp_path / "m", _drop("weights_sha256"))  # as an edited old folder
    tensors = safetensors.torch.load_file(tmp_path / "m" / "model.safetensors")
    tensors["means_"][0, 0] = value
    safetensors.torch.save_file(tensors, tmp_path / "m" / "model.safetensors")
    what = "NaN" if value != value else "infinity"
    with pytest.raises(ValueError, match=f"edited or corrupt: tensor means_ holds {what}"):
        genlab.load(tmp_path / "m")
    broken = genlab.load(FIXTURES / "gmm-moons")
    broken.means_[1, 1] = value
    with pytest.raises(ValueError, match=f"cannot save .*means_ holds {what}"):
        broken.save(tmp_path / "n")
    assert not (tmp_path / "n").exists() or not any((tmp_path / "n").iterdir())


def test_foreign_weights_and_missing_files(two_mixtures, tmp_path):
    two_mixtures[0].save(tmp_path / "m")
    edit_config(tmp_path / "m", _drop("weights_sha256"))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or foreign"):
        genlab.load(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        genlab.load(tmp_path / "m")


# -- sizes, labels, devices, seeds ---------------------------------------------------------------
def test_sample_sizes_are_checked_against_memory(two_mixtures):
    model = two_mixtures[0]
    assert model.check_sample_size(1000) == 1000
    memory = physical_memory()
    n = memory // 8 + 1  # two float32 numbers per sample: just over the machine's memory
    with pytest.raises(ValueError, match=rf"sample\(n={n}\) would need .* of memory, more than "
                       "this machine's .*; draw fewer samples"):  # fmt: skip
        model.check_sample_size(n)
    with pytest.raises(ValueError, match="non-negative integer"):
        model.check_sample_size(-1)


def test_labels_must_be_class_indices():
    assert models_base.check_train_labels(torch.tensor([0, 65_535])) == 65_536
    with pytest.raises(ValueError, match=r"0\.\.K-1 class indices.*maximum of 1e\+09: relabel"):
        models_base.check_train_labels(torch.tensor([0, 10**9]))


def test_a_missing_gpu_is_a_value_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for resolve in (models_base.resolve_device, lambda d: train._resolve_device(d, 1)):
        with pytest.raises(ValueError, match="CUDA is not available on this machine; use dev"):
            resolve("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        GaussianMixture(2, device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        models_base.resolve_device("gpu")
    assert models_base.resolve_device(None).type == "cpu"


def test_seeds_beyond_63_bits_are_refused():
    assert train.TrainConfig(seed=2**63 - 1).seed == 2**63 - 1
    with pytest.raises(ValueError, match="seed must be"):
        train.TrainConfig(seed=2**64)


# -- a diverged model is never returned ------------------------------------------------------------
def tiny_flow() -> FlowMatching:
    return FlowMatching(hidden=8, depth=1, max_steps=3, warmup_steps=1, sample_steps=2)


def test_divergence_is_both_a_floating_point_and_a_value_error():
    assert issubclass(DivergedError, FloatingPointError) and issubclass(DivergedError, ValueError)
    assert models_base.DivergedError is train.DivergedError


def test_fit_refuses_weights_whose_samples_are_not_finite(monkeypatch):
    infinite = lambda self, n, **kw: torch.full((n, 2), float("-inf"))  # noqa: E731
    monkeypatch.setattr(FlowMatching, "sample", infinite)
    with pytest.raises(DivergedError, match=r"samples are NaN/inf.*lower the learning rate"):
        tiny_flow().fit(load_dataset("moons", n=64))


def test_fit_refuses_non_finite_weights(monkeypatch):
    real_fit = train.fit

    def poisoned(model, *args, **kwargs):
        result = real_fit(model, *args, **kwargs)
        next(model.parameters()).data[0] = float("nan")
        return result

    monkeypatch.setattr(models_base.train, "fit", poisoned)
    with pytest.raises(DivergedError, match=r"after 3 steps tensor .* holds NaN"):
        tiny_flow().fit(load_dataset("moons", n=64))


# -- run folders ---------------------------------------------------------------------------------
def test_out_folders_that_are_not_runs_are_refused(tmp_path, two_mixtures):
    for name in ("", " ", "."):
        with pytest.raises(ValueError, match="give a folder name"):
            check_out_folder(name)
    with pytest.raises(ValueError, match="give a folder name"):
        check_out_folder(Path(""))
    assert check_out_folder(tmp_path / "new") == tmp_path / "new"  # not created yet
    (tmp_path / "empty").mkdir()
    assert check_out_folder(tmp_path / "empty") == tmp_path / "empty"
    mine = folder_with(tmp_path / "mine", {"config.json": b'{"lr": 3}', "notes.txt": b"x"})
    with pytest.raises(ValueError, match=r"mine exists and is not a genlab run folder; choose .*"
                       r"config\.json was not written by genlab"):  # fmt: skip
        check_out_folder(mine)
    photos = folder_with(tmp_path / "photos", {"a.jpg": b"x"})
    with pytest.raises(ValueError, match=r"not a genlab run folder.*none of a genlab run"):
        check_out_folder(photos)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        check_out_folder(tmp_path / "file")
    two_mixtures[0].save(tmp_path / "model")
    assert check_out_folder(tmp_path / "model") == tmp_path / "model"
    killed = folder_with(tmp_path / "killed", {"log.jsonl": b"", ".checkpoint.pt.ab.tmp": b""})
    assert check_out_folder(killed) == killed
    assert check_out_folder(folder_with(tmp_path / "locked", {LOCK_FILE: b"1"}))


def test_a_second_run_in_the_same_folder_is_refused(tmp_path):
    with run_lock(tmp_path / "run") as folder:
        assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
        with (
            pytest.raises(
                ValueError,
                match=rf"run is in use by another genlab run \(pid "
                rf"{os.getpid()}\): wait for it to finish or choose another --out",
            ),
            run_lock(tmp_path / "run"),
        ):
            pass  # pragma: no cover
    with run_lock(tmp_path / "run"):  # released on exit
        pass


def test_the_lock_of_a_killed_run_is_released(tmp_path):
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR "
         "| os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242'); print('held', "
         "flush=True); time.sleep(60)", str(tmp_path / "run" / LOCK_FILE)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=r"pid 4242"), run_lock(tmp_path / "run"):
            pass  # pragma: no cover
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path / "run"):
        pass
