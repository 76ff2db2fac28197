"""Reading a model folder (config.json + model.safetensors) back into a model, with every
field checked: `genlab.load`. Writing it is `GenerativeModel.save` (genlab/models/base.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from genlab.data.dataset import check_memory
from genlab.io import read_folder
from genlab.models.base import (
    CONFIG_FILE,
    FAMILIES,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    GenerativeModel,
    first_nonfinite,
    resolve_device,
)


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> GenerativeModel:
    """Load a model folder written by `save`, dispatching on the family named in config.json.

    The folder's current version is read (`genlab.io.resolve_folder`: a save killed after it
    was complete is finished, an interrupted one ignored), then every part is checked before
    use: config.json's structure, family, config rules and fitted facts, the weights'
    sha256 (when recorded) and finiteness.

    Raises:
        FileNotFoundError: no such folder, or config.json / model.safetensors is missing.
        ValueError: a corrupt, edited or foreign file (the message names the file and field).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    device = resolve_device(device)
    files = read_folder(folder, (CONFIG_FILE, WEIGHTS_FILE))
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if files[p.name] is None:
            raise FileNotFoundError(f"{folder} is not a genlab model folder: {p.name} is missing")
    cls, meta = _read_meta(config_path, files[CONFIG_FILE])
    weights = files[WEIGHTS_FILE]
    digest = meta.get("weights_sha256")
    if digest is not None and hashlib.sha256(weights).hexdigest() != digest:
        raise ValueError(
            f"{weights_path} does not match its config.json (its sha256 differs from the one "
            "recorded): the folder was edited or mixed from two saves; restore it or re-fit"
        )
    try:
        tensors = safetensors.torch.load(weights)
    except Exception as e:
        raise ValueError(f"{weights_path}: corrupt or foreign safetensors file ({e})") from None
    bad = first_nonfinite(tensors) if cls.finite_tensors else None
    if bad is not None:
        raise ValueError(
            f"{weights_path} is edited or corrupt: tensor {bad[0]} holds {bad[1]}; re-fit or "
            "restore the folder"
        )
    model = _build_model(cls, meta, config_path, device)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights_path} does not match its config.json: {e}") from None
    return model.to(model.device_).eval()  # inference mode: dropout off until a fit


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_meta(config_path: Path, raw: bytes) -> tuple[type[GenerativeModel], dict[str, Any]]:
    """config.json parsed, with its structure checked: (the family's class, the dict)."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{config_path}: corrupt config.json ({e}); restore it or re-fit"
        ) from None
    if not isinstance(meta, dict) or "family" not in meta or "config" not in meta:
        raise ValueError(f"{config_path}: not a genlab config (no 'family' and 'config' keys)")
    version = meta.get("genlab_format", 0)
    if not _is_int(version):
        raise ValueError(f"{config_path}: genlab_format must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{config_path}: written by a newer genlab (format {version})")
    from genlab.models import import_families

    import_families()  # every family registered in FAMILIES before the look-up

    family = meta["family"]
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"{config_path}: unknown family {family!r}; known: {sorted(FAMILIES)}")
    for key in ("config", "fitted"):
        if not isinstance(meta.get(key, {}), dict):
            raise ValueError(
                f"{config_path}: {key!r} must be a JSON object, got {type(meta[key]).__name__}"
            )
    if not isinstance(meta.get("weights_sha256", ""), str):
        raise ValueError(f"{config_path}: 'weights_sha256' must be a string of hex digits")
    return FAMILIES[family], meta


def _build_model(
    cls: type[GenerativeModel], meta: dict[str, Any], config_path: Path, device: torch.device
) -> GenerativeModel:
    """The family's module from config.json's config and fitted facts, checked: a config
    that breaks its rules, or fitted facts the family cannot use, is a ValueError naming
    the file."""
    try:
        model = cls.from_config(meta["config"], device=device)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{config_path}: 'config': {e}") from None
    fitted = meta.get("fitted", {})
    shape = fitted.get("event_shape", [])
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise ValueError(
            f"{config_path}: fitted.event_shape must be a list of non-negative integers, got "
            f"{shape!r}; restore the folder or re-fit"
        )
    what = f"{config_path}: fitted.event_shape {shape}"
    check_memory(math.prod(shape) * 8, what, "the file is edited or corrupt; restore it or re-fit")
    event_shape = tuple(shape)
    try:
        model._build(event_shape, fitted)
    except Exception as e:  # KeyError, TypeError, a tokenizer's bare Exception, ...
        detail = f"missing {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ValueError(
            f"{config_path}: the fitted facts are edited or corrupt ({detail}); re-fit the model"
        ) from None
    model.event_shape = event_shape
    return model
