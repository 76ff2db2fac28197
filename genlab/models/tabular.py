"""Tables in, tables out, for every family: the wrapper `GenerativeModel.__init_subclass__`
puts around the methods a family defines (as scikit-learn's `_SetOutputMixin` wraps
`transform` in `__init_subclass__`), so no family file knows about tables.

    model = GaussianMixture(n_components=8).fit(df)        # a pandas DataFrame
    model.sample(500, seed=0)                               # a DataFrame: names, dtypes, categories
    model.sample(500, seed=0, as_frame=False)               # the encoded (500, width) tensor
    model.log_prob(df)                                      # nats, of the encoded rows
    model.save("runs/t"); genlab.load("runs/t").sample(10)  # the transform is in config.json

- `fit(x, ...)`: a DataFrame x is encoded by a `genlab.data.tables.TableTransform` fitted on x
  (the train split), or by the `table_transform=` one (fitted on x unless it is fitted
  already); a `TableDataset` (`load_dataset("file.csv")`) brings its own, fitted on the file's
  train split. A DataFrame `val=` is encoded by the same transform. The model keeps it as
  `table_transform_` (None after a fit on plain rows). The family then fits the encoded rows
  as points; while it fits, its own `sample` calls return tensors.
- `sample(n, ..., as_frame=None)`: with a table transform the samples (the first element of
  a tuple such as GMM's `return_labels`) come back through `inverse_transform` as a DataFrame;
  `as_frame=False` keeps the encoded tensor (metrics on rows, pictures); other return types
  (trajectory records) are returned as they are.
- `log_prob(x, ...)`: a DataFrame x is encoded first (the transform's dequantisation seed):
  the log-density in nats of the encoded rows, whose dequantised category cells have volume
  1, so for categories it bounds the log-probability from below.
- `_build(event_shape, fitted)` (what `genlab.load` calls): reads `fitted["table"]`, which
  `table_meta` writes; a folder without it (every earlier one) loads as before.

A family method calling its parent's (`super().fit(...)`) passes through the parent's wrapper
unchanged: only the outermost call of each method converts.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

WRAPPED = ("fit", "sample", "log_prob", "_build")
_FITTING = "_table_fitting"


def _tables():
    from genlab.data import tables  # pandas is imported only when tables are used

    return tables


def is_table_dataset(x: Any) -> bool:
    """Whether x is a `genlab.data.tables.TableDataset` (without importing that module)."""
    tables = sys.modules.get("genlab.data.tables")
    return tables is not None and isinstance(x, tables.TableDataset)


def is_frame(x: Any) -> bool:
    """Whether x is a pandas DataFrame (without importing pandas)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(x, pandas.DataFrame)


def table_meta(model: Any) -> dict[str, Any]:
    """config.json's "fitted" entry of a model fitted on a table: {"table": ...}, else {}."""
    transform = getattr(model, "table_transform_", None)
    return {} if transform is None else {"table": transform.to_json()}


def wrap_family(cls: type) -> None:
    """Wrap the `WRAPPED` methods that `cls` defines itself (module docstring)."""
    for name in WRAPPED:
        method = cls.__dict__.get(name)
        if method is None or getattr(method, "_table_wrapped", False):
            continue
        wrapper = _WRAPPERS[name](method)
        wrapper._table_wrapped = True
        setattr(cls, name, wrapper)


def _outermost(name: str, method: Callable) -> Callable:
    """`method` as the outermost call of its name on an instance, or as it is when a call of
    the same name is already under way (a family's super() chain)."""
    flag = f"_table_in_{name}"

    def decorate(convert: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if self.__dict__.get(flag, False):
                return method(self, *args, **kwargs)
            self.__dict__[flag] = True
            try:
                return convert(self, *args, **kwargs)
            finally:
                self.__dict__[flag] = False

        return wrapper

    return decorate


def _wrap_fit(fit: Callable) -> Callable:
    @_outermost("fit", fit)
    def wrapper(self, x: Any, *args: Any, table_transform: Any = None, **kwargs: Any):
        tables = None
        transform = None
        if is_frame(x):
            tables = _tables()
            transform = table_transform if table_transform is not None else tables.TableTransform()
            if not isinstance(transform, tables.TableTransform):
                raise TypeError(
                    "table_transform must be a genlab.data.tables.TableTransform, got "
                    f"{type(transform).__name__}"
                )
            if not transform.is_fitted:
                transform.fit(x)
            x = tables.table_dataset(x, transform)
        elif table_transform is not None:
            raise TypeError("table_transform is for a pandas DataFrame x; x is not one")
        elif is_table_dataset(x):
            tables, transform = _tables(), x.transform
        if "val" in kwargs and transform is not None:
            val = kwargs["val"]
            if is_table_dataset(val) and val.transform is not transform:
                val = val.frame
            if is_frame(val):
                kwargs["val"] = tables.table_dataset(val, transform, name="val")
        self.table_transform_ = transform
        self.__dict__[_FITTING] = True
        try:
            return fit(self, x, *args, **kwargs)
        except BaseException:
            self.table_transform_ = None
            raise
        finally:
            self.__dict__[_FITTING] = False

    return wrapper


def _wrap_sample(sample: Callable) -> Callable:
    @_outermost("sample", sample)
    def wrapper(self, *args: Any, as_frame: bool | None = None, **kwargs: Any):
        out = sample(self, *args, **kwargs)
        transform = getattr(self, "table_transform_", None)
        if as_frame and transform is None:
            raise ValueError("as_frame=True, but this model was not fitted on a table")
        if transform is None or as_frame is False or self.__dict__.get(_FITTING, False):
            return out
        if isinstance(out, tuple) and out and hasattr(out[0], "shape"):
            return (transform.inverse_transform(out[0]), *out[1:])
        if hasattr(out, "shape") and hasattr(out, "detach"):
            return transform.inverse_transform(out)
        return out

    return wrapper


def _wrap_log_prob(log_prob: Callable) -> Callable:
    @_outermost("log_prob", log_prob)
    def wrapper(self, x: Any, *args: Any, **kwargs: Any):
        if is_frame(x):
            transform = getattr(self, "table_transform_", None)
            if transform is None:
                raise TypeError(
                    "this model was fitted on rows of numbers, not a table: pass a tensor or "
                    "array of shape (n, d), or fit the model on a DataFrame"
                )
            import torch

            x = torch.from_numpy(transform.transform(x))
        return log_prob(self, x, *args, **kwargs)

    return wrapper


def _wrap_build(build: Callable) -> Callable:
    @_outermost("_build", build)
    def wrapper(self, event_shape: tuple[int, ...], fitted: dict[str, Any]):
        build(self, event_shape, fitted)
        if not self.__dict__.get(_FITTING, False):  # genlab.load (or partial_fit): the record
            record = fitted.get("table")
            self.table_transform_ = (
                None if record is None else _tables().TableTransform.from_json(record)
            )

    return wrapper


_WRAPPERS = {"fit": _wrap_fit, "sample": _wrap_sample, "log_prob": _wrap_log_prob,
             "_build": _wrap_build}  # fmt: skip


def sample_frame(model: Any, n: int, seed: int | None = None, **options: Any) -> Any:
    """n samples as a pandas DataFrame: a table model's own (`sample`), or the (n, d) rows of
    a model of points as columns x0 .. x{d-1}.

    Raises:
        ValueError: samples that are not rows of numbers (images: write .npy or .png), or
            NaN/infinity in them (a broken model).
    """
    import pandas as pd
    import torch

    samples = model.sample(n, seed=seed, as_frame=False, **options)
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("the samples contain NaN or infinity: the model is broken; re-fit it")
    if model.table_transform_ is not None:
        return model.table_transform_.inverse_transform(samples)
    if samples.ndim != 2:
        raise ValueError(
            f"samples of shape {tuple(samples.shape[1:])} are not rows of a table; write them "
            "as FILE.npy (or FILE.png for images)"
        )
    columns = [f"x{j}" for j in range(samples.shape[1])]
    return pd.DataFrame(samples.detach().cpu().double().numpy(), columns=columns)
