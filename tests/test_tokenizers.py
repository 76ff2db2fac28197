"""Tokenisers (char, byte, BPE, image pixels), their JSON round trips, and text loading."""

import json

import pytest
import torch

from genlab.data import load_dataset, load_text
from genlab.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    ImageTokenizer,
    StreamDecoder,
    byte_level_symbols,
    tokenizer_from_json,
    train_tokenizer,
)

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
) * 20
UNICODE = "Grüße, 世界! naïve café — 🎉\t\r\n end"


def json_round_trip(tokenizer):
    return tokenizer_from_json(json.loads(json.dumps(tokenizer.to_json())))


def test_char_tokenizer_round_trip_and_sorted_vocabulary():
    tok = CharTokenizer.train("hello world")
    assert tok.chars == " dehlorw"
    assert tok.vocab_size == 8
    assert tok.encode("hold") == [3, 5, 4, 1]
    assert tok.decode(tok.encode("world hello")) == "world hello"
    uni = CharTokenizer.train(UNICODE)
    assert uni.decode(uni.encode(UNICODE)) == UNICODE
    assert json_round_trip(uni).encode(UNICODE) == uni.encode(UNICODE)


def test_char_tokenizer_names_an_unknown_character():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\) at position 2"):
        tok.encode("abé")
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train("")
    with pytest.raises(ValueError, match="once"):
        CharTokenizer("aa")


def test_byte_tokenizer_is_utf8_and_never_unknown():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    ids = tok.encode(UNICODE)
    assert ids == list(UNICODE.encode("utf-8"))
    assert tok.decode(ids) == UNICODE
    assert tok.decode([0xE4]) == "\ufffd"  # a cut character shows the replacement mark
    assert isinstance(json_round_trip(tok), ByteTokenizer)


def test_bpe_learns_merges_and_round_trips_unseen_unicode():
    tok = BPETokenizer.train(CORPUS, vocab_size=300)
    assert 256 < tok.vocab_size <= 300
    ids = tok.encode(CORPUS)
    assert len(ids) < len(CORPUS.encode()) / 2  # merges compress the training text
    for text in (CORPUS, UNICODE, "  leading spaces\n\n\nand newlines  "):
        assert tok.decode(tok.encode(text)) == text
        assert tok.tokenizer.decode(tok.encode(text)) == text  # the package agrees
    loaded = json_round_trip(tok)
    assert loaded.encode(UNICODE) == tok.encode(UNICODE)
    assert loaded.token_bytes == tok.token_bytes
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(CORPUS, vocab_size=100)


def test_byte_level_table_is_a_bijection_of_printable_symbols():
    symbols = byte_level_symbols()
    assert len(set(symbols)) == 256
    assert symbols[ord("A")] == "A" and symbols[ord(" ")] == "Ġ"  # GPT-2's space symbol
    assert all(s.isprintable() for s in symbols)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_stream_decoder_emits_whole_characters(kind):
    tok = train_tokenizer(kind, CORPUS + UNICODE, vocab_size=300)
    decoder = StreamDecoder(tok)
    pieces = [decoder.push([i]) for i in tok.encode(UNICODE)] + [decoder.flush()]
    assert "".join(pieces) == UNICODE
    assert all("\ufffd" not in p for p in pieces)


def test_image_tokens_round_trip_with_start_tokens():
    tok = ImageTokenizer(17, (1, 2, 2))
    x = torch.tensor([[[[0.0, 1.0], [0.5, 3 / 16]]]])
    rows = tok.encode(x)
    assert rows.tolist() == [[17, 0, 16, 8, 3]]
    assert tok.vocab_size == 18 and tok.length == 5
    torch.testing.assert_close(tok.decode(rows), x)
    torch.testing.assert_close(tok.decode(rows[:, 1:]), x)
    cond = ImageTokenizer(2, (3,), n_classes=10)
    rows = cond.encode(torch.tensor([[0.0, 1.0, 1.0]] * 2), torch.tensor([0, 9]))
    assert rows[:, 0].tolist() == [2, 11] and cond.vocab_size == 12
    assert json_round_trip(cond).to_json() == cond.to_json()


def test_image_tokenizer_refuses_off_grid_pixels_and_wrong_labels():
    tok = ImageTokenizer(17, (2,))
    with pytest.raises(ValueError, match="k / 16"):
        tok.encode(torch.tensor([[0.03, 0.5]]))
    with pytest.raises(ValueError, match="k / 16"):
        tok.encode(torch.tensor([[1.0625, 0.5]]))
    with pytest.raises(ValueError, match="conditional"):
        tok.encode(torch.tensor([[0.0, 0.5]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="levels"):
        ImageTokenizer(1, (2,))
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenizer_from_json({"kind": "words"})


def test_load_text_splits_characters_90_10(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000)) + "é"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    train, test, every = (load_text(path, split) for split in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (900, 101, 1001)
    assert train.text + test.text == text and every.text == text
    assert train.kind == "text" and train.event_shape == ()
    assert test.x.dtype == torch.int32 and int(test.x[-1]) == ord("é")
    via_name = load_dataset(f"text:{path}", split="test", n=10)
    assert via_name.text == text[900:910]


def test_load_text_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such text file"):
        load_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not UTF-8 text \(byte 3 is 0xe9\)"):
        load_text(tmp_path / "latin1.txt")
    (tmp_path / "one.txt").write_text("a")
    with pytest.raises(ValueError, match="split is empty"):
        load_dataset(f"text:{tmp_path / 'one.txt'}", split="train")
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(ValueError, match="has 2 characters"):
        load_text(tmp_path / "short.txt", "train", n=5)


# -- bad input: unknown characters, 8-bit pixels, edited or garbage specs -------------------------
def test_char_tokenizer_with_the_unknown_token_maps_unseen_characters():
    tok = CharTokenizer.train("abc", unknown=True)
    assert tok.vocab_size == 4 and tok.unk_id == 3
    assert tok.encode("abé") == [0, 1, 3] and tok.decode([0, 3]) == "a\ufffd"
    assert json_round_trip(tok).encode("zz") == [3, 3]
    old = tokenizer_from_json({"kind": "char", "chars": "abc"})  # saved before the unknown token
    assert old.unk_id is None and old.vocab_size == 3
    assert ByteTokenizer.unk_id is None and train_tokenizer("char", "ab", unknown=True).unk_id == 2


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_byte_and_bpe_encode_all_of_unicode(kind):
    tok = train_tokenizer(kind, CORPUS, vocab_size=300)
    text = "".join(map(chr, [0, 0x7F, 0x80, 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFD, 0xFFFF,
                             0x10000, 0x10FFFF]))  # fmt: skip
    assert tok.decode(tok.encode(text)) == text
    if kind == "bpe":  # a lone surrogate is not Unicode text: named, not a TypeError
        with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at position 1"):
            tok.encode("a\ud800b")


def test_pixels_outside_the_unit_interval_are_refused_not_clamped():
    from genlab.data.tokenizers import requantise

    with pytest.raises(ValueError, match=r"k / 255 in \[0, 1\].*\[0, 255\]: divide 8-bit"):
        requantise(torch.tensor([[0.0, 128.0, 255.0]]), 256)
    with pytest.raises(ValueError, match="divide 8-bit images"):
        ImageTokenizer(256, (2,)).encode(torch.tensor([[0.0, 255.0]]))
    torch.testing.assert_close(requantise(torch.tensor([0.2, 0.9]), 2), torch.tensor([0.0, 1.0]))


BPE_SPEC = BPETokenizer.train(CORPUS, vocab_size=270).to_json()


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ([1, 2], "unknown tokenizer spec a list"),
        ("char", "unknown tokenizer spec a str"),
        ({"kind": ["char"]}, r"unknown tokenizer spec \['char'\]"),
        ({"chars": "ab"}, "unknown tokenizer spec None"),
        ({"kind": "char"}, r"char tokenizer spec: keys missing \['chars'\]"),
        ({"kind": "char", "chars": ["a", "b"]}, "'chars' must be a non-empty string"),
        ({"kind": "char", "chars": ""}, "'chars' must be a non-empty string"),
        ({"kind": "char", "chars": "aa"}, "once"),
        ({"kind": "char", "chars": "ab", "unknown": "yes"}, "unknown must be true or false"),
        ({"kind": "byte", "chars": "ab"}, r"byte tokenizer spec: keys unknown \['chars'\]"),
        ({"kind": "bpe"}, r"keys missing \['tokenizer'\]"),
        ({"kind": "bpe", "tokenizer": "merges"}, "JSON of a tokenizers BPE tokenizer"),
        ({"kind": "bpe", "tokenizer": {"model": {"type": "BPE"}}}, "not a valid BPE tokenizer"),
        (
            {**BPE_SPEC, "tokenizer": {**BPE_SPEC["tokenizer"], "model": {"type": "WordPiece"}}},
            "JSON of a tokenizers BPE tokenizer",
        ),
        ({"kind": "image", "levels": 17, "event_shape": [1, 8, 8]}, r"missing \['n_classes'\]"),
        ({"kind": "image", "levels": 1, "n_classes": None, "event_shape": [8]}, "levels must"),
        ({"kind": "image", "levels": True, "n_classes": None, "event_shape": [8]}, "levels must"),
        ({"kind": "image", "levels": 17, "n_classes": 0, "event_shape": [8]}, "n_classes must"),
        ({"kind": "image", "levels": 17, "n_classes": None, "event_shape": "8"}, "be a list"),
        ({"kind": "image", "levels": 17, "n_classes": None, "event_shape": []}, "event_shape"),
        ({"kind": "image", "levels": 17, "n_classes": None, "event_shape": [8, -1]}, "event_sh"),
        ({"kind": "image", "levels": 17, "n_classes": None, "event_shape": [[8]]}, "event_sh"),
    ],
)
def test_edited_or_garbage_specs_are_value_errors_naming_the_problem(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        tokenizer_from_json(spec)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: [m["vocab"].pop(k) for k in list(m["vocab"])[200:]],  # a truncated vocabulary
        lambda m: m["merges"].append(["zz", "qq"]),  # a merge of unknown tokens
        lambda m: m.update(vocab=[1, 2]),  # the wrong JSON type
    ],
)
def test_an_edited_bpe_spec_is_a_value_error(edit):
    spec = json.loads(json.dumps(BPE_SPEC))
    edit(spec["tokenizer"]["model"])
    with pytest.raises(ValueError, match="bpe tokenizer spec: 'tokenizer' is not a valid BPE"):
        tokenizer_from_json(spec)
