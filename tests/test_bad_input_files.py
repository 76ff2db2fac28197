"""The fuzz suite, files and processes: saved model folders and training checkpoints edited
key by key, and the CLI in subprocesses (see test_bad_input.py for the contract and the
helpers).

A saved folder's config.json is edited key by key (top level, "config", "fitted": deleted,
given a value of the wrong type, given an absurd value) and its files torn, emptied or
edited: `genlab.load` refuses it naming the key or file, or loads a model that still works.
A checkpoint edited key by key is refused by `fit(resume=True)`. The CLI cases run in
processes forked from one server that has imported genlab (so a case costs no interpreter
start; one case runs the real `python -m genlab`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from test_bad_input import (
    BIG,
    FAMILY_NAMES,
    HEADROOM,
    LATIN1,
    POINTS,
    REPO,
    address_space,
    check_message,
    copy_model,
    family_data,
    fitted,
    make,
    npy_bytes,
    refused,
    refused_or_works,
    time_limit,
    works,
)

import genlab
from genlab.checkpoints import CHECKPOINT_FILE, CHECKPOINT_KEYS
from genlab.models import FAMILIES
from genlab.options import options

pytestmark = pytest.mark.usefixtures("one_thread")
__all__ = ["fitted"]  # the fixture, shared with test_bad_input.py


# == saved folders edited key by key =============================================================
def wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return 17
    return [1, 2] if isinstance(value, dict) else {"x": 1}


def absurd(value: Any) -> Any:
    if isinstance(value, bool):
        return 2
    if isinstance(value, int):
        return BIG
    if isinstance(value, float):
        return math.nan
    if isinstance(value, str):
        return "\u2205" + value
    if isinstance(value, list):
        return [BIG] * max(len(value), 1)
    return {} if isinstance(value, dict) else BIG


MUTATIONS: dict[str, Callable[[dict, str], Any]] = {
    "delete": lambda d, k: d.pop(k, None),
    "wrong-type": lambda d, k: d.__setitem__(k, wrong_type(d.get(k))),
    "absurd": lambda d, k: d.__setitem__(k, absurd(d.get(k))),
}
TOP_KEYS = ("genlab_format", "family", "config", "fitted", "weights_sha256")


def folder_key_cases() -> list[Any]:
    cases = []
    for family in FAMILY_NAMES:
        cls = FAMILIES[family]
        keys = [(k,) for k in TOP_KEYS] + [("config", o.name) for o in options(cls.config_class)]
        keys += [("fitted", k) for k in ("event_shape", *cls.fitted_facts)]
        cases += [pytest.param(family, key, m, id=f"{family}-{'.'.join(key)}-{m}")
                  for key in keys for m in MUTATIONS]  # fmt: skip
    return cases


def edit_config(folder: Path, key: tuple[str, ...], mutation: str) -> None:
    meta = json.loads((folder / "config.json").read_text())
    section = meta
    for part in key[:-1]:
        section = section[part]
    MUTATIONS[mutation](section, key[-1])
    (folder / "config.json").write_text(json.dumps(meta))


def load_and_check(folder: Path, keyword: str) -> None:
    refused_or_works(lambda: genlab.load(folder, device="cpu"), keyword)


@pytest.mark.parametrize("family, key, mutation", folder_key_cases())
def test_edited_config_json_is_refused_or_loads_a_working_model(
    family, key, mutation, fitted, tmp_path
):
    folder = copy_model(fitted[family][1], tmp_path / "m")
    edit_config(folder, key, mutation)
    load_and_check(folder, rf"{re.escape(key[-1])}|config\.json|safetensors")


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_other_fitted_keys_edited(family, mutation, fitted, tmp_path):
    """The fitted keys a family writes beyond its `fitted_facts` (the autoregressive
    tokenizer), and the keys inside them, edited one at a time."""
    found = json.loads((fitted[family][1] / "config.json").read_text())["fitted"]
    others = [k for k in found if k not in {"event_shape", *FAMILIES[family].fitted_facts}]
    keys = [("fitted", k) for k in others]
    keys += [("fitted", k, sub) for k in others if isinstance(found[k], dict) for sub in found[k]]
    for i, key in enumerate(keys):
        folder = copy_model(fitted[family][1], tmp_path / f"m{i}")
        edit_config(folder, key, mutation)
        load_and_check(folder, rf"{re.escape(key[-1])}|config\.json|safetensors|tokeniz")


def resave(folder: Path, edit: Callable[[dict[str, torch.Tensor]], Any]) -> None:
    """Edit the tensors of a model folder and record their new sha256 (so that the check
    under test is the one that catches the edit, not the checksum)."""
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    edit(tensors)
    data = safetensors.torch.save(tensors)
    (folder / "model.safetensors").write_bytes(data)
    meta = json.loads((folder / "config.json").read_text())
    if "weights_sha256" in meta:
        meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
        (folder / "config.json").write_text(json.dumps(meta))


def first_float(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in sorted(tensors.items()) if v.is_floating_point() and v.numel() > 1)


def fill(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t[first_float(t)] = torch.full_like(t[first_float(t)], value)

    return edit


def write(name: str, data: Callable[[bytes], bytes]) -> Callable[[Path], Any]:
    return lambda f: (f / name).write_bytes(data((f / name).read_bytes()))


def doubles(t: dict[str, torch.Tensor]) -> None:
    t.update({k: v.double() for k, v in t.items() if v.is_floating_point()})


W, C = "model.safetensors", "config.json"
FILE_EDITS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "weights-truncated": (write(W, lambda b: b[:-40]), "safetensors|sha256"),
    "weights-empty": (write(W, lambda b: b""), "safetensors|sha256"),
    "weights-garbage": (write(W, lambda b: os.urandom(300)), "safetensors|sha256"),
    "weights-missing": (lambda f: (f / W).unlink(), W),
    "config-missing": (lambda f: (f / C).unlink(), C),
    "config-torn": (write(C, lambda b: b[:50]), C),
    "config-list": (write(C, lambda b: b"[1, 2]"), "config"),
    "config-latin1": (write(C, lambda b: b'{"family": "caf\xe9"}'), C),
    "tensor-missing": (lambda f: resave(f, lambda t: t.pop(first_float(t))), "missing|match"),
    "tensor-extra": (lambda f: resave(f, lambda t: t.update(extra=torch.zeros(3))), "extra|match"),
    "tensor-shape": (
        lambda f: resave(f, lambda t: t.update({first_float(t): torch.zeros(7, 3)})),
        "shape|size|match",
    ),
    "tensor-nan": (lambda f: resave(f, fill(math.nan)), "NaN"),
    "tensor-inf": (lambda f: resave(f, fill(math.inf)), "inf"),
    "tensor-float64": (lambda f: resave(f, doubles), "dtype|float64|double"),
}


@pytest.mark.parametrize("case", sorted(FILE_EDITS))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_edited_files_are_refused_or_load_a_working_model(family, case, fitted, tmp_path):
    folder = copy_model(fitted[family][1], tmp_path / "m")
    edit, keyword = FILE_EDITS[case]
    edit(folder)
    load_and_check(folder, keyword)


def test_a_path_that_is_no_model_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    refused(lambda: genlab.load(tmp_path / "file"), "file|folder")
    refused(lambda: genlab.load(tmp_path / "nowhere"), "nowhere")
    refused(lambda: genlab.load(tmp_path), r"config\.json|model folder")


# == checkpoints edited key by key ===============================================================
@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
    """A tiny flow's run folder after 2 steps: checkpoint.pt and log.jsonl."""
    folder = tmp_path_factory.mktemp("ckpt") / "run"
    make("flow").fit(family_data("flow"), out=folder, progress=False)
    assert (folder / CHECKPOINT_FILE).is_file()
    return folder


def state_edit(edit: Callable[[dict], Any]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        edit(state)
        torch.save(state, path)

    return apply


def model_tensor(edit: Callable[[dict, str], Any]) -> Callable[[Path], None]:
    return state_edit(lambda s: edit(s["model"], first_float(s["model"])))


CKPT = "checkpoint"
CHECKPOINT_CASES: dict[str, tuple[Callable[[Path], Any], str]] = {
    **{f"{key}-{m}": (state_edit(lambda s, k=key, m=m: MUTATIONS[m](s, k)), CKPT)
       for key in sorted(CHECKPOINT_KEYS) for m in ("delete", "wrong-type")},
    "step-negative": (state_edit(lambda s: s.update(step=-1)), CKPT),
    "seconds-nan": (state_edit(lambda s: s.update(seconds=math.nan)), CKPT),
    "data-negative": (state_edit(lambda s: s.update(data=[-1, 0])), CKPT),
    "format-newer": (state_edit(lambda s: s.update(format=99)), "newer|format"),
    "rng-empty": (state_edit(lambda s: s.update(rng=[])), "checkpoint|rng"),
    "rng-empty-dict": (state_edit(lambda s: s.update(rng=[{}])), "checkpoint|rng"),
    "config-other-lr": (state_edit(lambda s: s["config"].update(lr=0.5)), "another config"),
    "config-empty": (state_edit(lambda s: s.update(config={})), "another config"),
    "model-tensor-missing": (model_tensor(lambda m, k: m.pop(k)), CKPT),
    "model-tensor-shape": (model_tensor(lambda m, k: m.update({k: torch.zeros(3, 7)})), CKPT),
    "model-tensor-nan": (model_tensor(lambda m, k: m[k].fill_(math.nan)), "checkpoint|NaN|diverg"),
    "ema-shape": (state_edit(lambda s: s.update(ema={k: torch.zeros(1) for k in s["model"]})),
                  "checkpoint|ema"),
    "ema-empty": (state_edit(lambda s: s.update(ema={})), "checkpoint|ema"),
    "optimizer-empty": (state_edit(lambda s: s.update(optimizer={})), "checkpoint|optimizer"),
    "fingerprint-edited": (state_edit(lambda s: s.update(fingerprint={"shape": [1]})),
                           "checkpoint|shape|data"),
    "not-a-dict": (lambda p: torch.save([1, 2], p), CKPT),
    "foreign-object": (lambda p: torch.save({"x": Path("a")}, p), CKPT),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:100]), CKPT),
    "empty": (lambda p: p.write_bytes(b""), CKPT),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_resume_refuses_edited_checkpoints(case, checkpointed, tmp_path):
    folder = shutil.copytree(checkpointed, tmp_path / "run")
    edit, keyword = CHECKPOINT_CASES[case]
    edit(folder / CHECKPOINT_FILE)
    with time_limit(), pytest.raises(ValueError) as caught:
        make("flow", max_steps=3).fit(family_data("flow"), out=folder, resume=True, progress=False)
    check_message(caught.value, keyword)


@pytest.mark.parametrize("case", ["other-shape", "same-shape-other-values"])
def test_resume_refuses_other_data(case, checkpointed, tmp_path):
    folder = shutil.copytree(checkpointed, tmp_path / "run")
    x = family_data("flow").x
    other = torch.cat([x, x[:, :1]], 1) if case == "other-shape" else x + 1.0
    with pytest.raises(ValueError, match=r"shape|data|fingerprint"):
        make("flow", max_steps=3).fit(other, out=folder, resume=True, progress=False)


# == the CLI in subprocesses =====================================================================
SERVER = r"""
import json, os, resource, signal, sys, traceback
import genlab.cli
import torch._refs  # what building a net on the meta device imports (seconds), once
print("ready", flush=True)
for line in sys.stdin:
    case = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.alarm(case["timeout"])
        resource.setrlimit(resource.RLIMIT_AS, (case["memory"], resource.RLIM_INFINITY))
        code = 99
        try:
            os.chdir(case["cwd"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                f = os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            genlab.cli.main(case["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}
    env.pop("GENLAB_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def genlab_cli(tmp_path_factory) -> Iterator[Callable[[list[Any], Path], tuple[int, str, str]]]:
    """run(argv, cwd) -> (exit code, stdout, stderr) of `genlab ARGV` in a fresh process,
    forked from a server that imported genlab once (`python -m genlab` runs the same main)."""
    logs = tmp_path_factory.mktemp("cli-logs")
    env = cli_env(GENLAB_CACHE=str(tmp_path_factory.mktemp("cache")))
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert server.stdout.readline().strip() == "ready"
    memory = address_space(server.pid) + HEADROOM  # of a child: an absurd size fails at once

    def run(argv: list[Any], cwd: Path) -> tuple[int, str, str]:
        out, err = logs / "stdout", logs / "stderr"
        case = {"argv": [str(a) for a in argv], "cwd": str(cwd), "stdout": str(out),
                "stderr": str(err), "timeout": 60, "memory": memory}  # fmt: skip
        server.stdin.write(json.dumps(case) + "\n")
        server.stdin.flush()
        return int(server.stdout.readline()), out.read_text(), err.read_text()

    yield run
    server.stdin.close()
    server.wait(timeout=30)


def assert_cli_failed(code: int, stdout: str, stderr: str, keyword: str) -> None:
    assert code in (1, 2), (code, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("genlab: error: "), stderr
    assert "internal error" not in lines[-1], lines[-1]
    assert re.search(keyword, lines[-1], re.I), f"the error does not say {keyword!r}: {lines[-1]}"
    assert not re.search(r"^(saved|wrote) ", stdout, re.M), stdout  # nothing claims success


def cli_files(tmp: Path, fitted: dict) -> dict[str, Any]:
    """The files the CLI cases name: {model} is a copy of a saved model of the case's family
    in the --out folder (it must still load afterwards)."""
    nan, torn = (
        copy_model(fitted["gmm"][1], tmp / "nan"),
        copy_model(fitted["gmm"][1], tmp / "torn"),
    )
    resave(nan, fill(math.nan))
    (torn / C).write_text((torn / C).read_text()[:40])
    (tmp / "mine").mkdir()
    (tmp / "mine" / C).write_text('{"my": "settings"}')
    np.save(tmp / "c.npy", POINTS.astype("c8"))
    (tmp / "neg.npy").write_bytes(npy_bytes((-3, 2)))
    (tmp / "l.txt").write_bytes(LATIN1)
    (tmp / "c.txt").write_text("the cat sat. " * 40)
    return {
        "big": BIG,
        "seed": 2**70,
        "t": tmp,
        "nan": nan,
        "torn": torn,
        "gmm5": fitted["gmm5"][1],
    }


QUICK = "--no-progress --max-steps 2 --n 64"
CLI_CASES: dict[str, tuple[str, str, str]] = {  # id: (argv, family of {model}, keyword)
    "fit-absurd-n": ("fit gmm --n {big} --out {model}", "gmm", r"memory|\bn\b"),
    "fit-huge-net": (f"fit vae --hidden 1000000 {QUICK} --out {{model}}", "vae", "hidden|memory"),
    "fit-seed-beyond-64-bits": ("fit gmm --seed {seed} --out {model}", "gmm", "seed"),
    "fit-diverges": (f"fit vae --lr 1e30 {QUICK} --out {{model}}", "vae", "diverg|lr|NaN|inf"),
    "fit-complex-npy": ("fit gmm --data {t}/c.npy --out {model}", "gmm", "complex"),
    "fit-negative-shape-npy": ("fit gmm --data {t}/neg.npy --out {model}", "gmm", "shape|negative"),
    "fit-latin1-text": ("fit autoregressive --data text:{t}/l.txt --out {model}", "autoregressive",
                        r"l\.txt.*UTF-8|UTF-8.*l\.txt"),
    "fit-text-for-vectors": ("fit vae --data text:{t}/c.txt --no-progress --out {model}", "vae",
                             "autoregressive"),
    "fit-out-empty": ("fit gmm --n 64 --out ''", "gmm", "--out|folder"),
    "fit-out-not-genlab": ("fit gmm --n 64 --out {t}/mine", "gmm", "genlab run folder"),
    "fit-device": ("fit gmm --n 64 --device cuda:99 --out {model}", "gmm", "cuda|device"),
    "sample-absurd-n": ("sample {model} -n {big} --out {t}/s.npy", "gmm", r"memory|\bn\b"),
    "sample-absurd-steps": ("sample {model} --steps {big} --out {t}/s.npy", "flow", "steps|memory"),
    "sample-nan-tensors": ("sample {nan} --out {t}/s.npy", "gmm", "NaN"),
    "sample-torn-config": ("sample {torn} --out {t}/s.npy", "gmm", r"config\.json"),
    "eval-shape-mismatch": ("eval {model} --data digits --json", "gmm", "shape"),
    "plot-5d": ("plot {gmm5} --out {t}/p.png", "gmm", "shape"),
    "compare-unknown-data": ("compare --data moons,moonz -f gmm --out {t}/cmp", "gmm", "moonz"),
    "compare-unknown-family": ("compare --data moons -f gmm,gan --out {t}/cmp", "gmm", "gan"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_fails_in_one_line_and_loses_nothing(case, genlab_cli, fitted, tmp_path):
    template, family, keyword = CLI_CASES[case]
    model = copy_model(fitted[family][1], tmp_path / "model")
    before = (model / C).read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    argv = shlex.split(template.format(model=model, **cli_files(tmp_path, fitted)))
    code, stdout, stderr = genlab_cli(argv, work)
    assert_cli_failed(code, stdout, stderr, keyword)
    assert stdout == "" or not case.startswith("eval")  # no JSON for a parser to take
    assert not any((tmp_path / name).exists() for name in ("s.npy", "p.png", "cmp"))
    assert sorted(work.iterdir()) == [] and sorted(os.listdir(tmp_path / "mine")) == [C]
    assert (model / C).read_bytes() == before
    works(genlab.load(model, device="cpu"))  # the model already in the folder still loads


def test_cli_keeps_a_model_whose_scoring_fails(genlab_cli, tmp_path):
    """A text whose held-out tail holds characters the training part lacks: the trained
    model is saved (and loads) whatever happens when it is scored."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("abab abba baab " * 40 + "xyz!")
    out = tmp_path / "ar"
    options = "--n-layer 1 --n-head 1 --n-embd 8 --block-size 8 --max-steps 2 --no-progress"
    argv = shlex.split(f"fit autoregressive --data text:{corpus} {options} --out {out}")
    code, stdout, stderr = genlab_cli(argv, tmp_path)
    assert "Traceback" not in stderr and code == 0, stderr
    assert f"saved {out}" in stdout
    works(genlab.load(out, device="cpu"))


def test_python_m_genlab_refuses_an_absurd_sample_size(fitted, tmp_path):
    """The real entry point (`python -m genlab`), once: the forked cases stand for it."""
    argv = [sys.executable, "-m", "genlab", "sample", fitted["gmm"][1], "-n", str(BIG),
            "--out", tmp_path / "s.npy"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), cwd=tmp_path,
                            timeout=120)  # fmt: skip
    assert_cli_failed(result.returncode, result.stdout, result.stderr, r"memory|\bn\b")
    assert not (tmp_path / "s.npy").exists()
