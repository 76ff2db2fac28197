"""The fuzz suite: bad input, corrupt files and misuse, for every family and entry point.

Each case gives one bad thing to one entry point and checks the error contract (README,
"Errors"): a documented user error (ValueError, TypeError, FileNotFoundError, OSError;
`DivergedError` is a ValueError) whose message names the problem, or, for input that is odd
but legal, a right result; through the CLI one line `genlab: error: ...`, no traceback, no
output that claims success, and the model already in the folder still loading.

Here: the Python API (fit / sample / log_prob on bad arrays, labels and options, and bad
values of every declared option of every family, generated from `genlab.options`), the
loaders (files written to tmp_path), and hypothesis drawing the shapes, dtypes and values of
arrays given to a GMM and a tiny flow; test_bad_input_files.py has saved folders and
checkpoints edited key by key and the CLI in subprocesses, with the helpers of this file. A
case that runs past its time limit fails (`Hung`): absurd sizes must be refused, not tried.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from genlab.data import load_dataset
from genlab.models import FAMILIES, FlowMatching, GaussianMixture, GenerativeModel
from genlab.options import Choice, Flag, Integer, Real, options

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, OSError)
LIMIT = 3.0  # seconds a case may run: tiny models answer in milliseconds
BIG = 10**12  # an absurd size: no machine holds 10**12 rows, units or steps
TINY: dict[str, dict[str, Any]] = {
    "gmm": {"n_components": 2, "max_iter": 50},
    "vae": {"hidden": 8, "latent_dim": 2, "max_steps": 2, "batch_size": 16},
    "flow": {"hidden": 8, "depth": 1, "max_steps": 2, "batch_size": 16, "sample_steps": 2},
    "diffusion": {"hidden": 8, "timesteps": 10, "max_steps": 2, "batch_size": 16},
    "autoregressive": {"n_layer": 1, "n_head": 1, "n_embd": 8, "max_steps": 2, "batch_size": 8},
    "masked_diffusion": {"n_layer": 1, "n_head": 1, "n_embd": 8, "max_steps": 2, "batch_size": 8,
                         "sample_steps": 4},
    "autoencoder": {"hidden": 8, "max_steps": 2, "batch_size": 16},
    "latent": {"prior": "vae",
               "prior_options": {"hidden": 8, "latent_dim": 2, "max_steps": 2, "batch_size": 16},
               "autoencoder_options": {"latent_shape": "2", "hidden": 8, "depth": 1,
                                       "max_steps": 2, "batch_size": 16}},
}  # fmt: skip
FAMILY_NAMES = sorted(FAMILIES)
# families of quantised images; others: points
DATA_OF = {"autoregressive": ("digits", 40), "masked_diffusion": ("digits", 40)}


class Hung(BaseException):
    """A case ran past its time limit (a BaseException: no `except Exception` swallows it)."""


HEADROOM = 4 * 2**30  # bytes of address space a case may add: a tiny model needs far less


def address_space(pid: int | str = "self") -> int:
    """Bytes of virtual memory a process has mapped (Linux: /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no VmSize in /proc/{pid}/status")


@contextlib.contextmanager
def time_limit(seconds: float = LIMIT) -> Iterator[None]:
    """Run the block with a time limit (`Hung` after `seconds`) and a memory limit (HEADROOM
    more address space: a bigger allocation fails at once instead of filling the machine)."""

    def alarm(signum, frame):
        raise Hung(f"still running after {seconds} s: an absurd size was attempted, not refused")

    previous = signal.signal(signal.SIGALRM, alarm)
    limits = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (address_space() + HEADROOM, limits[1]))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        resource.setrlimit(resource.RLIMIT_AS, limits)
        signal.signal(signal.SIGALRM, previous)


def check_message(error: BaseException, keyword: str) -> None:
    message = str(error)
    assert message.strip(), f"{type(error).__name__} without a message"
    assert re.search(keyword, message, re.I), f"the message does not say {keyword!r}: {message}"


def refused(call: Callable[[], Any], keyword: str) -> None:
    """call() raises a documented user error whose message matches `keyword` (a regex)."""
    with time_limit():
        try:
            call()
        except USER_ERRORS as e:
            check_message(e, keyword)
            return
    pytest.fail(f"accepted without an error (expected one saying {keyword!r})")


def works(model: GenerativeModel) -> None:
    """The model samples finite values of its event shape and scores them finitely."""
    with time_limit():
        if model.is_text:
            texts = model.sample(2, seed=0, max_new_tokens=3)
            assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
            return
        x = model.sample(2, seed=0)
        assert tuple(x.shape) == (2, *model.event_shape) and torch.isfinite(x).all()
        log_p = model.log_prob(x, **model.quick_log_prob)
        assert log_p.shape == (2,) and torch.isfinite(log_p).all(), log_p


def refused_or_works(call: Callable[[], GenerativeModel], keyword: str) -> None:
    """call() is refused (as `refused`) or returns a model that `works`."""
    with time_limit():
        try:
            model = call()
        except USER_ERRORS as e:
            check_message(e, keyword)
            return
    works(model)


def family_data(family: str):
    name, n = DATA_OF.get(family, ("moons", 64))
    return load_dataset(name, n=n)


def rows_of(family: str, n: int = 16) -> torch.Tensor:
    return family_data(family).x[:n].clone()


def make(family: str, **changes: Any) -> GenerativeModel:
    return FAMILIES[family](**{**TINY.get(family, {}), **changes})


def quiet_fit(model: GenerativeModel, x: Any, y: Any = None) -> GenerativeModel:
    return model.fit(x, y, progress=False)


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict[str, tuple[GenerativeModel, Path]]:
    """Every family fitted once on tiny data and saved: {family: (model, folder)}; also
    "gmm5", a GMM of 5-D points (a model `genlab plot` cannot draw)."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    five = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
    with time_limit(120):
        for family in FAMILY_NAMES:
            model = quiet_fit(make(family), family_data(family))
            out[family] = (model, model.save(root / family))
        model = quiet_fit(make("gmm"), five)
        out["gmm5"] = (model, model.save(root / "gmm5"))
    return out


# == the Python API ==============================================================================
def with_value(value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def bad(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x.reshape(len(x), -1)[3, 0] = value
        return x

    return bad


BAD_ARRAYS: dict[str, tuple[Callable[[torch.Tensor], Any], str]] = {
    "nan": (with_value(math.nan), "NaN"),
    "inf": (with_value(math.inf), "inf"),
    "-inf": (with_value(-math.inf), "inf"),
    "1-d": (lambda x: x.reshape(-1), "shape"),
    "0-d": (lambda x: x.reshape(-1)[0], "shape"),
    "empty": (lambda x: x[:0], "empty|no samples|at least"),
    "zero-width": (lambda x: torch.zeros(len(x), 0), "shape|width|empty|zero|dimension"),
    "complex": (lambda x: x.to(torch.complex64), "complex|real"),
    "complex-numpy": (lambda x: x.numpy().astype(np.complex128), "complex|real"),
    "bool": (lambda x: x > 0.5, "bool|real|dtype"),
    "object": (lambda x: np.array([[1.0, "a"]] * len(x), dtype=object), "dtype|number"),
    "strings": (lambda x: np.full((len(x), 2), "ab"), "dtype|number"),
    "ragged": (lambda x: [[1.0, 2.0], [3.0]], "shape|inhomogeneous|sequence"),
    "dict": (lambda x: {"x": x}, "dict|must be"),
    "none": (lambda x: None, "None|must be"),
}
LOG_PROB_ONLY = {"wrong-event-shape": (lambda x: torch.zeros(len(x), 3), "shape")}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_fit_refuses_bad_arrays(family, case):
    make_x, keyword = BAD_ARRAYS[case]
    x = make_x(rows_of(family))
    refused(lambda: quiet_fit(make(family), x), keyword)


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS.keys() - {"empty"} | LOG_PROB_ONLY.keys()))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_log_prob_refuses_bad_arrays(family, case, fitted):
    make_x, keyword = {**BAD_ARRAYS, **LOG_PROB_ONLY}[case]
    x, model = make_x(rows_of(family, 8)), fitted[family][0]
    refused(lambda: model.log_prob(x, **model.quick_log_prob), keyword)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_log_prob_of_far_points_is_very_negative_or_refused(family, fitted):
    """1e20 is a finite point: its log-density is finite and very negative, or refused."""
    far = torch.full_like(rows_of(family, 4), 1e20)
    with time_limit():
        try:
            log_p = fitted[family][0].log_prob(far)
        except USER_ERRORS as e:
            check_message(e, ".")
            return
    assert torch.isfinite(log_p).all() and (log_p < -1e3).all(), log_p


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_text_for_a_family_of_numbers(family):
    if family in ("autoregressive", "masked_diffusion"):  # text families: a text too short
        refused(lambda: quiet_fit(make(family, block_size=8), "ab"), "short|block|characters")
    else:
        refused(lambda: quiet_fit(make(family), "some text " * 20), "text")


BAD_LABELS: dict[str, tuple[Callable[[int], Any], str]] = {
    "length": (lambda n: torch.zeros(n + 1, dtype=torch.long), "shape"),
    "float": (lambda n: torch.zeros(n), "integer"),
    "negative": (lambda n: -torch.ones(n, dtype=torch.long), ">= 0|negative"),
    "huge": (lambda n: torch.full((n,), 10**9, dtype=torch.long), "class ind|labels"),
    "strings": (lambda n: np.array(["a"] * n), "dtype|integer|number"),
    "2-d": (lambda n: torch.zeros(n, 2, dtype=torch.long), "shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if FAMILIES[f].takes_labels])
def test_fit_refuses_bad_labels(family, case):
    make_y, keyword = BAD_LABELS[case]
    x = rows_of(family)
    refused(lambda: quiet_fit(make(family), x, make_y(len(x))), keyword)


SAMPLE_N = {"negative": -1, "fraction": 2.5, "text": "3", "none": None, "absurd": BIG}
SAMPLE_SEEDS = {"negative": -1, "beyond-64-bits": 2**64, "fraction": 1.5, "text": "s"}


@pytest.mark.parametrize("case", sorted(SAMPLE_N))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sample_refuses_bad_n(family, case, fitted):
    refused(lambda: fitted[family][0].sample(SAMPLE_N[case], seed=0), r"\bn\b|memory")


@pytest.mark.parametrize("case", sorted(SAMPLE_SEEDS))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sample_refuses_bad_seeds(family, case, fitted):
    refused(lambda: fitted[family][0].sample(2, seed=SAMPLE_SEEDS[case]), "seed")


SAMPLE_BAD = {
    "steps": [0, 2.5, BIG], "method": ["nope"], "solver": ["nope"], "rtol": [-1.0, math.nan],
    "atol": [-1.0], "eta": [-1.0, math.nan], "grid": ["nope"], "guidance": [math.nan],
    "order": [0, 9], "y": [-1, 10**9], "temperature": [0.0, -1.0, math.nan], "top_k": [0],
    "top_p": [0.0, 1.5], "max_new_tokens": [-1, BIG], "prompt": [17], "mean": ["yes"],
    "return_trajectory": ["yes"],
}  # fmt: skip
LOG_PROB_BAD = {"steps": [0, BIG], "method": ["nope"], "rtol": [-1.0, math.nan],
                "atol": [-1.0], "seed": [-1, 2**64], "k": [0, BIG]}  # fmt: skip
KEYWORD = {"y": r"label|class|condition|\by\b", "prompt": "prompt|text|str"}


def option_cases(table: dict[str, list[Any]], attribute: str) -> list[Any]:
    return [pytest.param(family, name, value, id=f"{family}-{name}={value!r}")
            for family in FAMILY_NAMES for name in sorted(getattr(FAMILIES[family], attribute))
            for value in table.get(name, [])]  # fmt: skip


@pytest.mark.parametrize("family, name, value", option_cases(SAMPLE_BAD, "sample_options"))
def test_sample_refuses_bad_options(family, name, value, fitted):
    keyword = KEYWORD.get(name, re.escape(name)) + "|memory"
    refused(lambda: fitted[family][0].sample(2, seed=0, **{name: value}), keyword)


@pytest.mark.parametrize("family, name, value", option_cases(LOG_PROB_BAD, "log_prob_options"))
def test_log_prob_refuses_bad_options(family, name, value, fitted):
    x, model = rows_of(family, 2), fitted[family][0]
    options = {**model.quick_log_prob, name: value}
    refused(lambda: model.log_prob(x, **options), re.escape(name) + "|memory")


# -- options: bad values of every declared field, generated from its constraint -------------------
def bad_values(check: Any) -> dict[str, Any]:
    """Values the constraint must refuse, by what is wrong with them."""
    if isinstance(check, Integer):
        bad = {"fraction": 1.5, "text": "3", "bool": True}
        bad |= {} if check.low is None else {"below": check.low - 1}
        return bad | ({} if check.high is None else {"above": check.high + 1})
    if isinstance(check, Real):
        bad = {"nan": math.nan, "inf": math.inf, "text": "0.5"}
        if check.low is not None:
            bad["below"] = check.low if check.low_open else check.low - 1.0
        if check.high is not None:
            bad["above"] = check.high if check.high_open else check.high + 1.0
        return bad
    if isinstance(check, Choice):
        return {"unknown": "no-such-choice", "list": ["a"]}
    return {"text": "yes", "int": 1} if isinstance(check, Flag) else {}


def option_value_cases() -> list[Any]:
    cases = []
    for family in FAMILY_NAMES:
        for opt in options(FAMILIES[family].config_class):
            bad = bad_values(opt.check) | ({"beyond-64-bits": 2**64} if opt.name == "seed" else {})
            cases += [pytest.param(family, opt.name, value, id=f"{family}-{opt.name}-{what}")
                      for what, value in bad.items()]  # fmt: skip
    return cases


@pytest.mark.parametrize("family, name, value", option_value_cases())
def test_constructor_refuses_bad_option_values(family, name, value):
    refused(lambda: FAMILIES[family](**{name: value}), re.escape(name))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_constructor_refuses_unknown_options_and_devices(family):
    cls = FAMILIES[family]
    refused(lambda: cls(no_such_option=1), "no_such_option")
    refused(lambda: cls(*range(len(cls.positional) + 1)), "positional")
    refused(lambda: cls(device="tpu"), "device")
    refused(lambda: cls(device="cuda:99"), "cuda|device")


BUDGETS = {"max_steps", "max_iter", "seed"}  # a long budget is the caller's choice, not absurd


def absurd_size_cases() -> list[Any]:
    return [pytest.param(family, opt.name, id=f"{family}-{opt.name}")
            for family in FAMILY_NAMES for opt in options(FAMILIES[family].config_class)
            if isinstance(opt.check, Integer) and opt.check.high is None
            and opt.name not in BUDGETS]  # fmt: skip


@pytest.mark.parametrize("family, name", absurd_size_cases())
def test_absurd_sizes_are_refused_or_harmless(family, name):
    """An option of 10**12 (units, components, steps of a schedule, ...) is refused up
    front, naming the option or the memory it would need, or fitting still works."""
    data = family_data(family)
    fit = lambda: quiet_fit(make(family, **{name: BIG}), data)  # noqa: E731
    refused_or_works(fit, f"{re.escape(name)}|memory")


# == the loaders =================================================================================
def npy_bytes(shape: tuple[int, ...], payload: bytes = b"") -> bytes:
    """A .npy file of float32 whose header claims `shape` (whatever the payload)."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + payload


def write_data(tmp: Path, name: str, content: Any) -> str:
    """Write content (an array: np.save; bytes; None: nothing; a Path: a folder) to
    tmp/name and return what `load_dataset` is given ("text:..." for .txt)."""
    path = tmp / name
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=content.dtype == object)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, Path):
        path.mkdir()
    if "." not in name:
        return name
    return f"text:{path}" if name.endswith(".txt") else str(path)


POINTS = np.random.default_rng(0).normal(size=(20, 2)).astype("f4")
NAN_POINTS = np.where(np.arange(40).reshape(20, 2) == 11, np.nan, POINTS).astype("f4")
LATIN1 = "caf\u00e9 au lait ".encode("latin1") * 20
DIR = Path(".")
LOADER_CASES: dict[str, tuple[str, Any, str]] = {
    "npy-nan": ("x.npy", NAN_POINTS, "NaN"),
    "npy-inf": ("x.npy", np.full_like(POINTS, np.inf), "inf"),
    "npy-complex": ("x.npy", POINTS.astype("c8"), "complex"),
    "npy-object": ("x.npy", np.array([[1, "a"]] * 10, dtype=object), "object|pickle|dtype"),
    "npy-strings": ("x.npy", np.full((10, 2), "ab"), "dtype|string|<U"),
    "npy-structured": ("x.npy", np.zeros(10, [("a", "f4"), ("b", "f4")]), "dtype|structured"),
    "npy-1d": ("x.npy", POINTS[:, 0], "shape|1-D|2-D"),
    "npy-5d": ("x.npy", np.zeros((10, 2, 2, 2, 2), "f4"), "shape|5-D|4-D"),
    "npy-no-rows": ("x.npy", np.zeros((0, 2), "f4"), "empty|rows|split"),
    "npy-zero-width": ("x.npy", np.zeros((10, 0), "f4"), "width|empty|shape|zero|column"),
    "npy-negative-shape": ("x.npy", npy_bytes((-3, 2)), "shape|negative|header"),
    "npy-truncated": ("x.npy", npy_bytes((100, 2), bytes(80)), "truncat|short|bytes|size|long"),
    "npy-garbage": ("x.npy", os.urandom(200), "npy|format|magic|header"),
    "npy-empty-file": ("x.npy", b"", "npy|format|magic|header|empty"),
    "csv-empty": ("x.csv", b"", "no data rows|empty"),
    "csv-header-only": ("x.csv", b"a,b\n", "no data rows"),
    "csv-ragged": ("x.csv", b"1,2\n3,4\n5\n", "cells"),
    "csv-text-cell": ("x.csv", b"1,2\n3,x\n", "not a number"),
    "csv-empty-first-cell": ("x.csv", b"1,,3\n4,5,6\n7,8,9\n", "line 1|empty|cell"),
    "csv-nan": ("x.csv", b"1,2\nnan,4\n5,6\n", "NaN"),
    "csv-latin1": ("x.csv", b"1,2\n3,4" + LATIN1[:5] + b"\n", r"UTF-8|x\.csv"),
    "text-latin1": ("t.txt", LATIN1, r"t\.txt.*UTF-8|UTF-8.*t\.txt"),
    "text-empty": ("t.txt", b"", "empty"),
    "text-missing": ("nowhere.txt", None, r"nowhere\.txt"),
    "text-folder": ("d.txt", DIR, "folder|directory|not a file|no such"),
    "unknown-name": ("moonz", None, "unknown data set 'moonz'"),
    "missing-npy": ("nowhere.npy", None, r"nowhere\.npy"),
    "folder-named-npy": ("d.npy", DIR, r"d\.npy"),
}


@pytest.mark.parametrize("case", sorted(LOADER_CASES))
def test_loaders_refuse_bad_files(case, tmp_path):
    """The loader refuses the file, or, once loaded, fitting refuses its values."""
    name, content, keyword = LOADER_CASES[case]
    given_name = write_data(tmp_path, name, content)

    def load_and_fit():
        data = load_dataset(given_name, split="all")
        if data.kind != "text":
            quiet_fit(GaussianMixture(1, max_iter=2), data)

    refused(load_and_fit, keyword)


LOADER_ARGS = {
    "n-zero": ({"name": "moons", "n": 0}, r"\bn\b"),
    "n-absurd": ({"name": "moons", "n": BIG}, r"\bn\b|memory"),
    "n-beyond-split": ({"name": "digits", "n": 10**6}, "only|n="),
    "seed-negative": ({"name": "moons", "seed": -1}, "seed"),
    "seed-beyond-64-bits": ({"name": "moons", "seed": 2**70}, "seed"),
    "split": ({"name": "moons", "split": "valid"}, "split"),
    "mnist-not-there": ({"name": "mnist", "root": "/nonexistent-genlab"}, "mnist|idx|nonexist"),
}


@pytest.mark.parametrize("case", sorted(LOADER_ARGS))
def test_load_dataset_refuses_bad_arguments(case):
    kwargs, keyword = LOADER_ARGS[case]
    refused(lambda: load_dataset(**kwargs), keyword)


LEGAL_FILES = {
    "big-endian": POINTS.astype(">f4"), "float16": POINTS.astype("f2"),
    "int16": (POINTS * 100).astype("i2"), "fortran-order": np.asfortranarray(POINTS),
    "csv-header": "a,b\n", "csv-bom": "\ufeff",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LEGAL_FILES))
def test_odd_but_legal_files_load_right(case, tmp_path):
    """Files NumPy or a spreadsheet writes load with the same values (or, for a layout that
    cannot be read row by row, are refused saying how to save them)."""
    content = LEGAL_FILES[case]
    if isinstance(content, str):  # a CSV: the prefix, then the points
        rows = "\n".join(f"{a!r},{b!r}" for a, b in POINTS.tolist())
        path, expected = tmp_path / "x.csv", POINTS.astype("f8")
        path.write_text(content + rows, encoding="utf-8")
    else:
        path, expected = tmp_path / "x.npy", content.astype("f8")
        np.save(path, content)
    try:
        data = load_dataset(path, split="all")
    except ValueError as e:
        assert case == "fortran-order", e
        check_message(e, "C-order|contiguous|Fortran")
        return
    x = data.x if isinstance(data.x, torch.Tensor) else data.x[:]
    np.testing.assert_allclose(x.double().numpy(), expected, rtol=1e-6)


# == hypothesis: any array =======================================================================
REAL = {np.float16: 16, np.float32: 32, np.float64: 64}
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def any_array(draw, max_dims: int = 3) -> np.ndarray:
    dtype = draw(st.sampled_from([*REAL, np.int64, np.int16, np.uint8, np.bool_, np.complex64]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=6))
    elements = None
    if dtype in REAL:
        elements = st.floats(-100, 100, width=REAL[dtype])
        elements = elements | NON_FINITE if draw(st.booleans()) else elements
    elif dtype is np.complex64:
        elements = st.complex_numbers(max_magnitude=10, allow_nan=False, width=64)
    return draw(hnp.arrays(dtype, shape, elements=elements))


POINTS_2D = hnp.arrays(np.float32, st.tuples(st.integers(0, 5), st.just(2)))


def trainable(x: np.ndarray) -> bool:
    """Whether x is an (n >= 1, d >= 1, ...) array of finite real numbers."""
    real = np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x)
    return real and x.ndim >= 2 and x.size > 0 and bool(np.isfinite(x.astype("f8")).all())


def fit_any(model: GenerativeModel, x: np.ndarray) -> None:
    """Refused with a message, or (for trainable x, or 0/1 booleans) fitted, with a finite
    log_prob of its own data."""
    with time_limit():
        try:
            quiet_fit(model, x)
        except USER_ERRORS as e:
            check_message(e, ".")
            return
        assert trainable(x) or x.dtype == np.bool_, f"fitted on {x.dtype} {x.shape}: {x}"
        log_p = model.log_prob(x, **model.quick_log_prob)
    assert log_p.shape == (len(x),) and torch.isfinite(log_p).all(), log_p


def log_prob_any(model: GenerativeModel, x: np.ndarray) -> None:
    """Refused with a message, or x is a finite (n, *event_shape) real array and log_prob is
    finite."""
    with time_limit():
        try:
            log_p = model.log_prob(x, **model.quick_log_prob)
        except USER_ERRORS as e:
            check_message(e, ".")
            return
    assert x.ndim >= 2 and x.shape[1:] == model.event_shape and not np.iscomplexobj(x)
    assert np.isfinite(x.astype("f8")).all(), "log_prob accepted NaN or infinity"
    assert log_p.shape == (len(x),) and torch.isfinite(log_p).all(), log_p


FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck))


@settings(FUZZ, max_examples=40)
@given(x=any_array())
def test_gmm_fit_on_any_array(x):
    fit_any(GaussianMixture(1, max_iter=5), x)


@settings(FUZZ, max_examples=10)
@given(x=any_array(max_dims=2))
def test_flow_fit_on_any_array(x):
    fit_any(FlowMatching(**TINY["flow"]), x)


@settings(FUZZ, max_examples=40)
@given(x=any_array() | POINTS_2D)
def test_gmm_log_prob_of_any_array(x, fitted):
    log_prob_any(fitted["gmm"][0], x)


@settings(FUZZ, max_examples=15)
@given(x=any_array() | POINTS_2D)
def test_flow_log_prob_of_any_array(x, fitted):
    log_prob_any(fitted["flow"][0], x)
