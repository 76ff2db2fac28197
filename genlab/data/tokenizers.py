"""Tokenisers: text to token ids and back, and quantised images to pixel tokens.

- `CharTokenizer`: one id per distinct character of the training text (sorted by code point),
  and optionally an unknown token `<unk>` (the last id, decoded as U+FFFD) to which every
  character outside that vocabulary maps; without it such a character is an error naming it.
- `ByteTokenizer`: the 256 byte values of the text's UTF-8 encoding; never an unknown symbol.
- `BPETokenizer`: byte-level byte-pair encoding trained on the user's text with the
  `tokenizers` package (GPT-2's byte-to-symbol table, so every string round-trips exactly).
- `ImageTokenizer`: pixel k / (levels - 1) -> token k in raster order, after one start token:
  the class label's token `levels + y` (conditional) or a begin token `levels`.

Every text tokeniser knows the bytes of each token (`token_bytes`), so decoding is one
function (`decode`), and streaming decodes whole UTF-8 characters as they complete
(`StreamDecoder`). `to_json` / `tokenizer_from_json` save and rebuild a tokeniser as plain JSON
(a model's config.json stores it; nothing is pickled); `tokenizer_from_json` checks every key,
type and value, so an edited or truncated spec is a ValueError naming the problem.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any, Literal

import numpy as np
import torch

TokenizerName = Literal["char", "byte", "bpe"]
TOKENIZERS: tuple[str, ...] = ("char", "byte", "bpe")
BPE_MIN_VOCAB = 257  # the 256 byte symbols, plus at least one merge
UNKNOWN_BYTES = "\ufffd".encode()  # what the unknown token `<unk>` decodes to


@cache
def byte_level_symbols() -> tuple[str, ...]:
    """GPT-2's table byte -> printable unicode symbol (bytes_to_unicode), as a 256-tuple.

    Printable Latin-1 bytes map to themselves; the others to code points 256, 257, ... in order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


class TextTokenizer:
    """Base of the text tokenisers: `encode`, `decode` and the bytes of every token."""

    kind: str
    token_bytes: tuple[bytes, ...]
    #: the id of the unknown token, to which characters outside the vocabulary map (None:
    #: the tokeniser has none: every text is encodable, or such a character is an error)
    unk_id: int | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids (a byte sequence cut inside a character shows U+FFFD)."""
        table = self.token_bytes
        return b"".join(table[int(i)] for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


class CharTokenizer(TextTokenizer):
    """One id per character of `chars`, in order: id i <-> chars[i]; with `unknown`, one more
    id, len(chars), the unknown token `<unk>` (its bytes are U+FFFD's), for every other
    character.

    Args:
        chars: the vocabulary, distinct characters (`CharTokenizer.train(text)` takes the
            sorted distinct characters of a text).
        unknown: add the unknown token (else a character outside `chars` is an error).
    """

    kind = "char"

    def __init__(self, chars: str, unknown: bool = False):
        if not isinstance(chars, str) or not chars:
            raise ValueError("chars must be a non-empty string of distinct characters")
        if len(set(chars)) != len(chars):
            raise ValueError("chars must hold each character once")
        if not isinstance(unknown, bool):
            raise ValueError(f"unknown must be true or false, got {unknown!r}")
        self.chars, self.unknown = chars, unknown
        self.index = {c: i for i, c in enumerate(chars)}
        self.token_bytes = tuple(c.encode("utf-8", errors="surrogatepass") for c in chars)
        if unknown:
            self.unk_id = len(chars)
            self.token_bytes += (UNKNOWN_BYTES,)
        codes = np.fromiter((ord(c) for c in chars), dtype=np.int64, count=len(chars))
        self._lookup = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
        self._lookup[codes] = np.arange(len(chars))

    @classmethod
    def train(cls, text: str, unknown: bool = False) -> CharTokenizer:
        """The vocabulary of `text`: its distinct characters, sorted by code point (and the
        unknown token when `unknown`)."""
        if not text:
            raise ValueError("cannot build a character vocabulary from an empty text")
        return cls("".join(sorted(set(text))), unknown)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text` (characters outside the vocabulary: `unk_id`).

        Raises:
            ValueError: without the unknown token, a character is not in the vocabulary
                (named, with its position).
        """
        codes = code_points(text)
        ids = np.full(len(codes), -1, dtype=np.int64)
        inside = codes < len(self._lookup)
        ids[inside] = self._lookup[codes[inside]]
        if len(ids) and ids.min() < 0:
            if self.unk_id is not None:
                ids[ids < 0] = self.unk_id
                return ids.tolist()
            pos = int(np.argmax(ids < 0))
            raise ValueError(
                f"character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos} is not in "
                f"this model's vocabulary of {len(self.chars)} characters (the characters of "
                "its training text); remove it, or train with tokenizer='byte' or 'bpe'"
            )
        return ids.tolist()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars, "unknown": self.unknown}

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> CharTokenizer:
        """From `to_json()`'s dictionary ("unknown" absent in specs saved before it existed:
        no unknown token)."""
        _check_keys(spec, {"kind", "chars"}, {"unknown"})
        if not isinstance(spec["chars"], str) or not spec["chars"]:
            raise ValueError(f"'chars' must be a non-empty string, got {_short(spec['chars'])}")
        return cls(spec["chars"], spec.get("unknown", False))


class ByteTokenizer(TextTokenizer):
    """The UTF-8 bytes of the text: 256 ids, every string encodable."""

    kind = "byte"
    token_bytes = tuple(bytes([b]) for b in range(256))

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="surrogatepass"))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> ByteTokenizer:
        _check_keys(spec, {"kind"})
        return cls()


class BPETokenizer(TextTokenizer):
    """Byte-level BPE (the `tokenizers` package): merges learned on a training text.

    Args:
        tokenizer: a `tokenizers.Tokenizer` with a BPE model and ByteLevel pre-tokenizer
            (`BPETokenizer.train` builds one).
    """

    kind = "bpe"

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        inverse = {s: b for b, s in enumerate(byte_level_symbols())}
        vocab = tokenizer.get_vocab()
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError("the BPE vocabulary's ids must be 0..size-1")
        by_id = sorted(vocab, key=vocab.get)
        try:
            self.token_bytes = tuple(bytes(inverse[s] for s in token) for token in by_id)
        except KeyError:
            raise ValueError(
                "not a byte-level BPE tokenizer (a token has a symbol outside the byte table)"
            ) from None

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn vocab_size - 256 merges on `text` (fewer if the text runs out of pairs)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if (
            isinstance(vocab_size, bool)
            or not isinstance(vocab_size, int)
            or (vocab_size < BPE_MIN_VOCAB)
        ):
            raise ValueError(
                f"vocab_size must be an integer >= {BPE_MIN_VOCAB}, got {vocab_size!r}"
            )
        if not text:
            raise ValueError("cannot train BPE on an empty text")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` (any Unicode text).

        Raises:
            ValueError: the text holds a lone surrogate (not Unicode text: UTF-8 cannot
                encode it).
        """
        try:
            return self.tokenizer.encode(text).ids
        except TypeError:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"the text holds a lone surrogate U+{ord(text[e.start]):04X} at position "
                    f"{e.start}, which is not Unicode text; remove it"
                ) from None
            raise

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokenizer": json.loads(self.tokenizer.to_str())}

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> BPETokenizer:
        """From `to_json()`'s dictionary (the `tokenizers` package's JSON, checked)."""
        from tokenizers import Tokenizer

        _check_keys(spec, {"kind", "tokenizer"})
        inner = spec["tokenizer"]
        model = inner.get("model") if isinstance(inner, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE":
            raise ValueError("'tokenizer' must be the JSON of a tokenizers BPE tokenizer")
        try:
            tok = Tokenizer.from_str(json.dumps(inner))
        except Exception as e:  # the package raises a bare Exception on malformed JSON
            raise ValueError(f"'tokenizer' is not a valid BPE tokenizer ({e})") from None
        return cls(tok)


def _chunks(text: str, size: int = 1 << 16) -> Iterable[str]:
    """The text in pieces of about `size` characters, cut after a newline where there is one."""
    start = 0
    while start < len(text):
        stop = min(start + size, len(text))
        cut = text.rfind("\n", start, stop) + 1 if stop < len(text) else stop
        stop = cut if cut > start else stop
        yield text[start:stop]
        start = stop


def code_points(text: str) -> np.ndarray:
    """(len(text),) int64 Unicode code points of a string."""
    raw = text.encode("utf-32-le", errors="surrogatepass")
    return np.frombuffer(raw, dtype="<u4").astype(np.int64)


class StreamDecoder:
    """Decode token ids one at a time into text, emitting each character once it is complete.

    `push(ids)` returns the text that the new ids complete ("" while a multi-byte character
    is unfinished); `flush()` returns what remains (U+FFFD for an unfinished character).
    """

    def __init__(self, tokenizer: TextTokenizer):
        self.token_bytes = tokenizer.token_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Iterable[int]) -> str:
        return self.decoder.decode(b"".join(self.token_bytes[int(i)] for i in ids))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


def train_tokenizer(
    kind: TokenizerName, text: str, vocab_size: int = 512, unknown: bool = False
) -> TextTokenizer:
    """A tokeniser of the given kind for `text` (vocab_size is used by "bpe" only; unknown,
    by "char": add the unknown token; byte and BPE encode every text)."""
    if kind == "char":
        return CharTokenizer.train(text, unknown)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {kind!r}")


# -- images ---------------------------------------------------------------------------------------
def check_unit_range(x: torch.Tensor, levels: int) -> None:
    """Refuse images with values outside [0, 1] (never clamped).

    Raises:
        ValueError: naming the range found and the fix (8-bit images divided by 255).
    """
    if x.numel() and not bool((x >= 0).all() and (x <= 1).all()):
        raise ValueError(
            f"images must be k / (levels - 1) = k / {levels - 1} in [0, 1] ({levels} levels); "
            f"got values in [{float(x.min()):g}, {float(x.max()):g}]: divide 8-bit images "
            "(0..255) by 255"
        )


def requantise(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Images in [0, 1] rounded to the grid k / (levels - 1) (levels=2: binarised at 1/2).

    Raises:
        ValueError: a value outside [0, 1] (`check_unit_range`; nothing is clamped).
    """
    check_unit_range(x, levels)
    return torch.round(x * (levels - 1)) / (levels - 1)


class ImageTokenizer:
    """Quantised images <-> token sequences: [start] + pixels in raster (C, H, W) order.

    Pixel value k / (levels - 1) is token k. The start token is `levels` (begin) for an
    unconditional model, or `levels + y` for class y of a conditional one, so the vocabulary
    has levels + 1 or levels + n_classes tokens; only the first `levels` are ever predicted.

    Args:
        levels: grey levels L (>= 2): pixels lie in {0, 1/(L-1), ..., 1}.
        event_shape: shape of one image, e.g. (1, 8, 8).
        n_classes: number of classes of a conditional model, else None.
    """

    kind = "image"

    def __init__(self, levels: int, event_shape: Sequence[int], n_classes: int | None = None):
        if not _is_int(levels) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {_short(levels)}")
        if n_classes is not None and (not _is_int(n_classes) or n_classes < 1):
            raise ValueError(f"n_classes must be None or an integer >= 1, got {_short(n_classes)}")
        shape = tuple(event_shape) if isinstance(event_shape, Sequence) else None
        if not shape or not all(_is_int(s) and s >= 1 for s in shape):
            raise ValueError(
                f"event_shape must be a non-empty list of integers >= 1, got {_short(event_shape)}"
            )
        self.levels, self.n_classes = int(levels), None if n_classes is None else int(n_classes)
        self.event_shape = tuple(int(s) for s in shape)

    @property
    def vocab_size(self) -> int:
        return self.levels + (self.n_classes or 1)

    @property
    def length(self) -> int:
        """Tokens per image: 1 start token + prod(event_shape) pixels."""
        return 1 + int(np.prod(self.event_shape, dtype=np.int64))

    def start_tokens(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """(n,) long start tokens: `levels` (begin) when y is None, else `levels + y`."""
        if (y is None) != (self.n_classes is None):
            raise ValueError("pass labels y exactly when the tokenizer is conditional")
        if y is None:
            return torch.full((n,), self.levels, dtype=torch.long)
        return self.levels + y.long().cpu()

    def pixels_to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(n, *event_shape) values k / (levels - 1) -> (n, D) long tokens k (rounded).

        Raises:
            ValueError: a value is off the grid by more than 1e-3 of a level, or outside [0, 1].
        """
        check_unit_range(x, self.levels)
        scaled = x.reshape(len(x), -1).double() * (self.levels - 1)
        k = torch.round(scaled)
        if len(x) and not bool(((scaled - k).abs() <= 1e-3).all()):
            raise ValueError(
                f"pixels must be k / {self.levels - 1} in [0, 1] ({self.levels} levels); "
                "quantise the images first, or fit the model with levels= set to the data's"
            )
        return k.long()

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(n, *event_shape) images (and (n,) labels) -> (n, 1 + D) long token rows."""
        tokens = self.pixels_to_tokens(x)
        return torch.cat([self.start_tokens(len(x), y)[:, None], tokens], dim=1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, D) pixel tokens (or (n, 1 + D) rows with the start token) -> (n, *event_shape)
        float32 images in [0, 1]."""
        if tokens.shape[1] == self.length:
            tokens = tokens[:, 1:]
        return (tokens.float() / (self.levels - 1)).reshape(len(tokens), *self.event_shape)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "levels": self.levels, "n_classes": self.n_classes,
                "event_shape": list(self.event_shape)}  # fmt: skip

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> ImageTokenizer:
        """From `to_json()`'s dictionary, every key and value checked."""
        _check_keys(spec, {"kind", "levels", "n_classes", "event_shape"})
        if not isinstance(spec["event_shape"], list):
            raise ValueError(f"event_shape must be a list, got {_short(spec['event_shape'])}")
        return cls(spec["levels"], spec["event_shape"], spec["n_classes"])


Tokenizer = TextTokenizer | ImageTokenizer


def tokenizer_from_json(spec: Any) -> Tokenizer:
    """Rebuild a tokeniser from its `to_json()` dictionary.

    Raises:
        ValueError: the spec is not a JSON object, names no known tokenizer kind, or has a
            missing, unknown or malformed key (named in the message).
    """
    kind = spec.get("kind") if isinstance(spec, dict) else None
    builders = {"char": CharTokenizer.from_json, "byte": ByteTokenizer.from_json,
                "bpe": BPETokenizer.from_json, "image": ImageTokenizer.from_json}  # fmt: skip
    if not isinstance(kind, str) or kind not in builders:
        got = _short(kind) if isinstance(spec, dict) else f"a {type(spec).__name__}"
        raise ValueError(
            f"unknown tokenizer spec {got}: expected a JSON object whose 'kind' is one of "
            f"{(*TOKENIZERS, 'image')}"
        )
    try:
        return builders[kind](spec)
    except ValueError as e:
        raise ValueError(f"corrupt {kind} tokenizer spec: {e}") from None


def _check_keys(spec: dict[str, Any], required: set[str], optional: frozenset = frozenset()):
    missing, unknown = required - set(spec), set(spec) - required - set(optional)
    if missing or unknown:
        parts = [f"missing {sorted(missing)}"] * bool(missing)
        parts += [f"unknown {sorted(unknown)}"] * bool(unknown)
        raise ValueError(f"keys {' and '.join(parts)} (expected {sorted(required)})")


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters (a spec value may be a whole vocabulary)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
