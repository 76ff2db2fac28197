"""The autoregressive family: exact log_prob (brute force, normalisation), sampling, fit, CLI."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import genlab
from genlab.cli import run
from genlab.data import load_dataset
from genlab.models import Autoregressive, NotFittedError
from genlab.models.autoregressive import (
    context_start,
    draw_categorical,
    filter_logits,
    scoring_windows,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = "the cat sat on the mat. the dog ate the hat! " * 30
TINY = {"n_layer": 1, "n_head": 2, "n_embd": 16, "warmup_steps": 2}


@pytest.fixture(scope="module")
def text_model():
    """A char model with a short window (8), so sequences of 20+ tokens move the window."""
    return Autoregressive(block_size=8, max_steps=150, **TINY).fit(CORPUS, progress=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n=300), load_dataset("digits", split="test", n=40)


@pytest.fixture(scope="module")
def image_model(digits):
    return Autoregressive(max_steps=10, batch_size=32, **TINY).fit(digits[0], progress=False)


def brute_force_log_probs(model, tokens):
    """log p(x_t | context) for t = 1..T-1, one uncached forward pass per token, by the rule
    s(t) = 0 if t <= B else B/2 * (floor((t - B - 1) / (B/2)) + 1)."""
    B, H = model.block_size_, model.block_size_ // 2
    out = []
    with torch.no_grad():
        for t in range(1, tokens.shape[1]):
            s = 0 if t <= B else H * ((t - B - 1) // H + 1)
            logits = model.net(tokens[:, s:t])[:, -1, : model.n_out_]
            out.append(torch.log_softmax(logits.double(), -1)[0, tokens[0, t]])
    return torch.stack(out)


# -- the context rule -----------------------------------------------------------------------------
@pytest.mark.parametrize("length, block", [(2, 8), (9, 8), (10, 8), (37, 8), (40, 5), (12, 1)])
def test_scoring_windows_score_every_token_once_with_its_context(length, block):
    stride = max(1, block // 2)
    scored = []
    for start, size, skip in scoring_windows(length, block, stride):
        assert 1 <= size <= block
        for t in range(start + 1 + skip, start + size + 1):
            assert context_start(t, block, stride) == start
            scored.append(t)
    assert scored == list(range(1, length))


def test_context_never_exceeds_the_block_and_keeps_half_of_it():
    for t in range(1, 200):
        s = context_start(t, 16, 8)
        assert 0 < t - s <= 16
        assert t <= 16 or t - s > 8


# -- exact log-probabilities ----------------------------------------------------------------------
def test_log_prob_equals_a_brute_force_sum_of_next_token_log_probs(text_model):
    text = "the dog sat on the hat. the cat"  # 31 tokens: the window of 8 moves several times
    tokens = torch.tensor([text_model.tokenizer_.encode(text)])
    expected = brute_force_log_probs(text_model, tokens)
    torch.testing.assert_close(
        text_model.token_log_probs(tokens)[0].double(), expected, atol=1e-5, rtol=1e-5
    )
    first = text_model.first_token_log_probs[tokens[0, 0]].double()
    assert float(text_model.log_prob(text)[0]) == pytest.approx(
        float(first + expected.sum()), abs=1e-4
    )


def test_batching_of_windows_and_rows_does_not_change_log_probs(text_model, image_model, digits,
                                                                monkeypatch):  # fmt: skip
    import genlab.models.autoregressive as ar

    text = CORPUS[:200]
    before_text, before_images = text_model.log_prob(text), image_model.log_prob(digits[1])
    monkeypatch.setattr(ar, "EVAL_TOKENS", 20)  # one window or a few rows per forward pass
    torch.testing.assert_close(text_model.log_prob(text), before_text)
    torch.testing.assert_close(image_model.log_prob(digits[1]), before_images)


def test_first_token_takes_smoothed_training_frequencies(text_model):
    tok = text_model.tokenizer_
    counts = np.bincount(tok.encode(CORPUS), minlength=tok.vocab_size) + 1.0
    np.testing.assert_allclose(
        text_model.first_token_log_probs.exp().numpy(), counts / counts.sum(), rtol=1e-5
    )


def test_text_probabilities_sum_to_one_over_all_sequences():
    model = Autoregressive(block_size=2, max_steps=3, **TINY).fit("abcab" * 20, progress=False)
    # the vocabulary: a, b, c and the unknown token, which "?" (unseen) maps to
    strings = ["".join(s) for s in itertools.product("abc?", repeat=5)]  # 1024; the window moves
    total = model.log_prob(strings).double().exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-5)
    assert model.unknown_chars_ == 5 * 4**4  # each of the 5 positions is "?" in 4^4 strings
    ids = torch.tensor([model.tokenizer_.encode(s) for s in strings])
    torch.testing.assert_close(model.log_prob(ids), model.log_prob(strings))


def test_image_probabilities_sum_to_one_over_all_images():
    x = torch.randint(2, (64, 1, 2, 2), generator=torch.Generator().manual_seed(0)).float()
    y = torch.arange(64) % 3
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).reshape(16, 1, 2, 2)
    plain = Autoregressive(levels=2, max_steps=3, **TINY).fit(x, progress=False)
    assert float(plain.log_prob(images).double().exp().sum()) == pytest.approx(1.0, abs=1e-5)
    # a levels=2 model binarises what it scores, as it binarised its training data
    torch.testing.assert_close(plain.log_prob(images * 0.9 + 0.05), plain.log_prob(images))
    cond = Autoregressive(levels=2, max_steps=3, **TINY).fit(x, y, progress=False)
    for label in range(3):
        p = cond.log_prob(images, y=label).double().exp().sum()
        assert float(p) == pytest.approx(1.0, abs=1e-5)
    assert float(cond.log_prob(images).double().exp().sum()) == pytest.approx(1.0, abs=1e-5)
    marginal = torch.stack([cond.log_prob(images, y=c) for c in range(3)]).exp()
    torch.testing.assert_close(
        cond.log_prob(images).exp(), (cond.class_prior[:, None] * marginal).sum(0)
    )


# -- sampling -------------------------------------------------------------------------------------
def greedy_reference(model, prompt, new):
    """Greedy decoding with uncached forward passes over the context rule, written out."""
    tokens = torch.tensor([model.tokenizer_.encode(prompt)])
    B, H = model.block_size_, model.block_size_ // 2
    with torch.no_grad():
        for _ in range(new):
            t = tokens.shape[1]
            s = 0 if t <= B else H * ((t - B - 1) // H + 1)
            nxt = model.net(tokens[:, s:t])[0, -1].argmax()
            tokens = torch.cat([tokens, nxt.view(1, 1)], dim=1)
    return model.tokenizer_.decode(tokens[0].tolist())


@pytest.mark.parametrize("use_cache", [True, False])
def test_top_k_one_is_greedy_decoding(text_model, use_cache):
    (text,) = text_model.sample(1, prompt="the ", max_new_tokens=30, top_k=1, seed=5,
                                use_cache=use_cache)  # fmt: skip
    assert text == greedy_reference(text_model, "the ", 30)
    assert text_model.nfe_ == 30


def test_cached_and_uncached_sampling_agree(text_model):
    kwargs = {"prompt": "the", "max_new_tokens": 40, "seed": 3, "temperature": 1.5}
    cached = text_model.sample(4, use_cache=True, **kwargs)
    assert cached == text_model.sample(4, use_cache=False, **kwargs)
    assert all(s.startswith("the") and len(s) == 43 for s in cached)
    assert cached != text_model.sample(4, **{**kwargs, "seed": 4})


def test_generate_streams_the_same_text_as_sample(text_model):
    pieces = list(text_model.generate("the c", max_new_tokens=25, seed=9, top_p=0.9))
    (text,) = text_model.sample(1, prompt="the c", max_new_tokens=25, seed=9, top_p=0.9)
    assert "the c" + "".join(pieces) == text
    assert len(pieces) == 25
    unprompted = text_model.sample(3, max_new_tokens=12, seed=0)
    assert all(len(s) == 12 for s in unprompted)


def test_filter_logits_matches_a_brute_force_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, generator=g, dtype=torch.float64)
    for temperature, top_k, top_p in [(1.0, None, None), (0.5, 3, None), (2.0, None, 0.6),
                                      (1.0, 5, 0.8), (1.0, None, 1e-9)]:  # fmt: skip
        out = filter_logits(logits, temperature, top_k, top_p).exp().double()
        for row, got in zip(logits, out, strict=True):
            p = torch.softmax(row / temperature, -1).numpy()
            keep = np.ones(12, dtype=bool)
            if top_k is not None:
                keep &= p >= np.sort(p)[-top_k]
            if top_p is not None:
                q = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
                order = np.argsort(-q)
                mass, nucleus = 0.0, np.zeros(12, dtype=bool)
                for i in order:  # the likeliest tokens until their mass reaches top_p
                    nucleus[i] = True
                    mass += q[i]
                    if mass >= top_p:
                        break
                keep &= nucleus
            expected = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
            np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_draw_categorical_frequencies_and_zero_mass():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0]).expand(20_000, 5)
    draws = draw_categorical(probs, torch.Generator().manual_seed(0))
    freq = np.bincount(draws.numpy(), minlength=5) / 20_000
    np.testing.assert_allclose(freq, [0.1, 0.0, 0.6, 0.3, 0.0], atol=0.015)
    assert freq[1] == 0 and freq[4] == 0  # zero-mass tokens, also the last one, never drawn
    again = draw_categorical(7 * probs, torch.Generator().manual_seed(0))  # unnormalised
    assert torch.equal(again, draws)
    one_hot = torch.zeros(3, 4).index_put_((torch.arange(3), torch.tensor([0, 3, 2])),
                                           torch.tensor(1.0))  # fmt: skip
    assert draw_categorical(one_hot, torch.Generator()).tolist() == [0, 3, 2]


def test_sampling_frequencies_follow_the_model(text_model):
    """With a prompt of one token, 4000 draws of the next token match its distribution."""
    tok = text_model.tokenizer_
    samples = text_model.sample(4000, prompt="t", max_new_tokens=1, seed=1, top_p=0.95)
    counts = np.bincount([tok.encode(s[1])[0] for s in samples], minlength=tok.vocab_size)
    with torch.no_grad():
        logits = text_model.net(torch.tensor([tok.encode("t")]))[0, -1]
    p = filter_logits(logits[None], 1.0, None, 0.95)[0].exp().numpy()
    assert counts[p == 0].sum() == 0
    assert np.abs(counts / 4000 - p).max() < 0.03


def test_bad_sampling_options_raise(text_model, image_model):
    with pytest.raises(ValueError, match="temperature"):
        text_model.sample(1, temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        text_model.sample(1, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        text_model.sample(1, top_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        text_model.sample(1, max_new_tokens=-1)
    with pytest.raises(ValueError, match=r"'Z' \(U\+005A\)"):
        text_model.sample(1, prompt="Zebra")
    with pytest.raises(ValueError, match="no labels"):
        text_model.sample(1, y=1)
    with pytest.raises(ValueError, match="no prompt"):
        image_model.sample(1, prompt="x")
    with pytest.raises(ValueError, match="without labels"):
        image_model.sample(1, y=1)
    with pytest.raises(ValueError, match="image model"):
        next(image_model.generate("x"))


# -- fitting --------------------------------------------------------------------------------------
def test_text_fit_lowers_the_loss(text_model):
    history = text_model.train_result_.history
    assert history[-1]["loss"] < history[0]["loss"] - 0.3
    scores = text_model.evaluate_text(CORPUS[:300])
    assert scores["loss"] < math.log(text_model.tokenizer_.vocab_size) - 0.5  # beats uniform
    assert scores["bits_per_char"] == pytest.approx(scores["loss"] / math.log(2))
    nll = -float(text_model.log_prob(CORPUS[:300]).double())
    assert scores["loss"] == pytest.approx(nll / 300, rel=1e-5)


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_byte_and_bpe_models_fit_score_and_round_trip(tokenizer, tmp_path):
    model = Autoregressive(tokenizer, vocab_size=280, block_size=8, max_steps=5, **TINY)
    model.fit(CORPUS + "naïve 🎉 ", progress=False)
    scores = model.evaluate_text("the naïve cat 🎉")
    assert scores["n_chars"] == 15 and math.isfinite(scores["loss"])
    assert (scores["n_tokens"] < 15) if tokenizer == "bpe" else (scores["n_tokens"] == 19)
    model.save(tmp_path / "m")
    loaded = genlab.load(tmp_path / "m")
    torch.testing.assert_close(
        loaded.log_prob(["the naïve cat"]), model.log_prob(["the naïve cat"])
    )
    assert loaded.sample(2, seed=1, max_new_tokens=9) == model.sample(2, seed=1, max_new_tokens=9)


def test_images_fit_sample_on_the_grid_and_score(image_model, digits):
    _, test = digits
    x = image_model.sample(6, seed=0)
    assert x.shape == (6, 1, 8, 8)
    assert torch.equal(x * 16, torch.round(x * 16)) and x.min() >= 0 and x.max() <= 1
    lp = image_model.log_prob(test)
    assert lp.shape == (40,) and bool((lp < 0).all())
    assert float(-lp.mean()) < 64 * math.log(17)  # better than uniform pixels
    assert image_model.nfe_ == 64


def test_conditional_images_use_their_label(digits, tmp_path):
    train, test = digits
    model = Autoregressive(max_steps=5, batch_size=32, **TINY).fit(train, train.y, progress=False)
    assert model.conditional and model.sample(3, seed=0, y=4).shape == (3, 1, 8, 8)
    lp_true = model.log_prob(test, y=test.y)
    lp_other = model.log_prob(test, y=(test.y + 1) % 10)
    assert not torch.allclose(lp_true, lp_other)
    model.save(tmp_path / "c")
    torch.testing.assert_close(genlab.load(tmp_path / "c").log_prob(test), model.log_prob(test))


def test_bad_data_and_unfitted_models_raise(tmp_path):
    model = Autoregressive(**TINY, max_steps=2)
    with pytest.raises(NotFittedError):
        model.sample(1)
    with pytest.raises(NotFittedError):
        model.log_prob("abc")
    with pytest.raises(ValueError, match="not the continuous points of 'moons'"):
        model.fit(load_dataset("moons", n=50))
    with pytest.raises(ValueError, match="levels="):
        model.fit(torch.rand(10, 4))
    with pytest.raises(ValueError, match="too few"):
        Autoregressive(block_size=64, **TINY).fit("short text")
    with pytest.raises(ValueError, match="block_size=64"):
        Autoregressive(block_size=16, **TINY).fit(load_dataset("digits", n=20))
    with pytest.raises(TypeError, match="options are"):
        Autoregressive(n_layers=2)
    with pytest.raises(ValueError, match="tokenizer"):
        Autoregressive("word")


# -- defaults decided once, capabilities, what `genlab fit` prints ------------------------------
def test_default_size_follows_the_data_and_is_saved(tmp_path):
    from genlab.models.autoregressive import default_size

    assert default_size("image", 64) == default_size("image", 256) == (2, 64)
    assert default_size("image", 784) == default_size("text", 1) == (4, 128)
    digits = load_dataset("digits", n=40)
    model = Autoregressive(max_steps=1, warmup_steps=1).fit(digits, progress=False)
    assert (model.config.n_layer, model.config.n_embd) == (None, None)
    assert (model.n_layer_, model.n_embd_) == (2, 64) and len(model.net.blocks) == 2
    model.save(tmp_path / "m")
    loaded = genlab.load(tmp_path / "m")
    assert (loaded.n_layer_, loaded.n_embd_) == (2, 64)
    torch.testing.assert_close(loaded.log_prob(digits.x[:4]), model.log_prob(digits.x[:4]))
    with pytest.raises(ValueError, match="divisible by n_head"):
        Autoregressive(n_head=3, max_steps=1).fit(digits, progress=False)  # 64 % 3
    with pytest.raises(ValueError, match="divisible by n_head"):
        Autoregressive(n_head=3, n_embd=16)


def test_unsupported_refuses_continuous_data_only():
    from genlab.models.base import TrainingData

    reason = Autoregressive.unsupported(TrainingData.from_input(load_dataset("moons", n=20)))
    assert "continuous points" in reason and "'moons'" in reason
    assert Autoregressive.unsupported(TrainingData.from_input(torch.randn(5, 3))) is not None
    for ok in (load_dataset("digits", n=5), CORPUS, torch.rand(5, 1, 2, 2)):
        assert Autoregressive.unsupported(TrainingData.from_input(ok)) is None


def test_capabilities_score_rows_and_fit_summary(text_model, image_model, digits, tmp_path):
    assert Autoregressive.example_data == "digits"
    assert {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "y"} == set(
        Autoregressive.sample_options
    )
    assert text_model.is_text and not image_model.is_text
    train = digits[0]
    label, value = image_model.score_rows(train)
    assert label == "train log-likelihood"
    assert value == pytest.approx(float(image_model.log_prob(train.x).double().mean()), rel=1e-6)
    assert image_model.score_rows(train, limit=30)[0] == "train log-likelihood (first 30)"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    text = load_dataset(f"text:{corpus}", split="all")
    label, value = text_model.score_rows(text, limit=10)  # 10 windows of 8 characters
    assert label == "train log-likelihood per character (first 80 characters)"
    assert value == pytest.approx(float(text_model.log_prob(CORPUS[:80])) / 80, rel=1e-5)
    summary = image_model.fit_summary()
    assert summary["steps"] == 10 and summary["vocabulary"] == 18 and summary["block size"] == 64
    assert text_model.fit_summary()["block size"] == 8


@pytest.mark.parametrize("folder", ["autoregressive-digits", "autoregressive-text"])
def test_folders_saved_before_the_redesign_score_the_same(folder):
    path = Path(__file__).parent / "fixtures" / "v1" / folder
    expected = json.loads((path / "expected.json").read_text())
    model = genlab.load(path)
    assert (model.n_layer_, model.n_embd_) == (model.config.n_layer, model.config.n_embd)
    if folder.endswith("text"):
        lp = model.log_prob(["ROMEO: to be", "First Citizen"])
    else:
        lp = model.log_prob(load_dataset("digits", split="test", n=5).x[:5])
        s = model.sample(3, seed=0).flatten(1)[:, :6]
        np.testing.assert_allclose(s.numpy(), expected["sample"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(lp.numpy(), expected["log_prob"], rtol=1e-4, atol=1e-4)


# -- the command line -----------------------------------------------------------------------------
def cli(capsys, *args):
    capsys.readouterr()
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_fit_sample_eval_on_a_text_file(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS * 2, encoding="utf-8")
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, "fit", "autoregressive", "--data", f"text:{corpus}",
                            "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                            "--block-size", "16", "--max-steps", "20", "--out", out,
                            "--no-progress")  # fmt: skip
    assert code == 0, err
    assert "validation loss" in stdout and (out / "config.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["fitted"]["tokenizer"]["kind"] == "char"

    code, stdout, err = cli(capsys, "sample", out, "--prompt", "the ", "--max-new-tokens", "30",
                            "--seed", "2", "--top-k", "3")  # fmt: skip
    assert code == 0, err
    model = genlab.load(out)
    (expected,) = model.sample(1, prompt="the ", max_new_tokens=30, seed=2, top_k=3)
    assert stdout.rstrip("\n") == expected

    code, stdout, err = cli(capsys, "eval", out, "--data", f"text:{corpus}", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    val = load_dataset(f"text:{corpus}", split="test").text
    assert result["loss"] == pytest.approx(model.evaluate_text(val)["loss"], rel=1e-6)
    assert result["bits_per_char"] == pytest.approx(result["loss"] / math.log(2))
    assert result["n_chars"] == len(val)

    code, stdout, err = cli(capsys, "plot", out)  # a text model: its training curve only
    assert code == 0, err
    assert (out / "history.png").is_file() and "history.png" in stdout


def test_cli_fits_digits_and_refuses_text_options_for_images(tmp_path, capsys):
    out = tmp_path / "digits"
    code, stdout, err = cli(capsys, "fit", "autoregressive", "--data", "digits", "--n", "100",
                            "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                            "--max-steps", "3", "--out", out, "--no-progress")  # fmt: skip
    assert code == 0, err
    assert "train log-likelihood" in stdout
    code, _, err = cli(capsys, "sample", out, "-n", "4", "--out", tmp_path / "s.npy")
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (4, 1, 8, 8)
    code, _, err = cli(capsys, "sample", out, "--prompt", "hi")
    assert code == 1 and "no prompt" in err


# -- bad input: 8-bit pixels, edited tokenizers, unseen characters, absurd sizes ------------------
def test_8_bit_pixels_are_refused_never_clamped(image_model, digits):
    pixels = torch.randint(0, 256, (20, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    for levels in (256, None):
        with pytest.raises(ValueError, match=r"k / \(levels - 1\).*divide 8-bit images"):
            Autoregressive(levels=levels, max_steps=1, **TINY).fit(pixels.float())
    with pytest.raises(ValueError, match=r"k / 16 in \[0, 1\].*divide 8-bit images"):
        image_model.log_prob(digits[1].x[:2] * 16)  # the digits' raw 0..16 counts
    from genlab.data import Dataset

    raw = Dataset(pixels.float(), None, (1, 4, 4), "image", "raw", levels=256)  # claims levels
    for levels in (256, 2, None):
        with pytest.raises(ValueError, match=r"'raw' are integers in \[0, 254\]: divide 8-bit"):
            Autoregressive(levels=levels, max_steps=1, **TINY).fit(raw)
    binary = Autoregressive(levels=2, max_steps=1, **TINY).fit(pixels.float() / 255)
    with pytest.raises(ValueError, match=r"k / 1 in \[0, 1\].*divide 8-bit"):  # never clamped
        binary.log_prob(pixels[:2].float())


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda f: f["tokenizer"].update(event_shape=[1, 4, 16]), "tokenizer.event_shape"),
        (lambda f: f["tokenizer"].update(event_shape=[1, 8, "8"]), "event_shape must be"),
        (lambda f: f["tokenizer"].update(levels="17"), "levels must be an integer"),
        (lambda f: f["tokenizer"].update(levels=16), "does not match"),
        (lambda f: f["tokenizer"].update(n_classes=3), "does not match"),
        (lambda f: f["tokenizer"].pop("levels"), r"missing \['levels'\]"),
        (lambda f: f["tokenizer"].update(colour=True), r"unknown \['colour'\]"),
        (lambda f: f.update(tokenizer={"kind": "char", "chars": "ab"}), "cannot serve"),
        (lambda f: f.update(tokenizer=["image"]), "unknown tokenizer spec"),
        (lambda f: f.update(block_size=3), "shorter than the 64 pixels"),
        (lambda f: f.update(n_embd="x"), "n_embd must be an integer"),
        (lambda f: f.update(kind="video"), "kind must be"),
        (lambda f: f.pop("tokenizer"), "tokenizer is missing"),
    ],
)
def test_edited_tokenizer_facts_are_refused_at_load(image_model, tmp_path, edit, fragment):
    image_model.save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    edit(meta["fitted"])
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=fragment):
        genlab.load(tmp_path / "m")


def test_unseen_characters_are_the_unknown_token_and_counted(text_model, tmp_path):
    tok = text_model.tokenizer_
    assert tok.unk_id == tok.vocab_size - 1 and "Z" not in tok.chars
    held_out = "the cat sat on the Zoo. é!"  # Z, é: not in the training text
    scores = text_model.evaluate_text(held_out)
    assert scores["unknown_chars"] == 2 and math.isfinite(scores["loss"])
    lp = text_model.log_prob([held_out, "the cat"])
    assert torch.isfinite(lp).all() and text_model.unknown_chars_ == 2
    assert text_model.evaluate_text("the cat sat")["unknown_chars"] == 0
    # the same as the text with each unseen character replaced by another unseen one
    torch.testing.assert_close(lp[:1], text_model.log_prob(held_out.replace("é", "\u4e16")))
    text_model.save(tmp_path / "m")
    torch.testing.assert_close(genlab.load(tmp_path / "m").log_prob([held_out, "the cat"]), lp)
    old = genlab.load(Path(__file__).parent / "fixtures" / "v1" / "autoregressive-text")
    assert old.tokenizer_.unk_id is None  # saved before the unknown token: unseen is an error
    with pytest.raises(ValueError, match=r"'Z' \(U\+005A\)"):
        old.log_prob("Zebra")


def test_cli_fits_a_corpus_whose_held_out_tail_has_an_unseen_character(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS + "Zürich!", encoding="utf-8")  # Z, ü, r, i: in the last 10 % only
    out = tmp_path / "run"
    code, _, err = cli(capsys, "fit", "autoregressive", "--data", f"text:{corpus}",
                       "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size",
                       "8", "--max-steps", "3", "--out", out, "--no-progress")  # fmt: skip
    assert code == 0, err
    val = load_dataset(f"text:{corpus}", split="test").text
    scores = genlab.load(out).evaluate_text(val)
    assert scores["unknown_chars"] == 4 and math.isfinite(scores["loss"])


def test_absurd_sizes_and_diverged_weights_are_refused(text_model):
    import copy

    from genlab.models import DivergedError

    with pytest.raises(ValueError, match=r"transformer .* of memory.*smaller n_embd"):
        Autoregressive(n_embd=10**6, n_head=1, n_layer=1, max_steps=1).fit(CORPUS)
    with pytest.raises(ValueError, match="n_layer must be"):
        Autoregressive(n_layer=10**6)
    with pytest.raises(ValueError, match="memory"):  # rotary tables of 10**12 positions
        Autoregressive(block_size=10**12, **TINY).fit(load_dataset("digits", n=8))
    with pytest.raises(TypeError, match="use_cache must be True or False"):
        text_model.sample(1, max_new_tokens=2, use_cache="no")
    with pytest.raises(ValueError, match="of memory"):
        text_model.sample(2, max_new_tokens=10**12)
    with pytest.raises(ValueError, match="of memory"):
        next(text_model.generate("the", max_new_tokens=10**12))
    with pytest.raises(ValueError, match="of memory"):
        text_model.sample(10**12)
    # a tiny temperature is greedy decoding, never NaN probabilities
    greedy = text_model.sample(2, max_new_tokens=12, seed=0, top_k=1)
    assert text_model.sample(2, max_new_tokens=12, seed=0, temperature=1e-30) == greedy
    broken = copy.deepcopy(text_model)
    with torch.no_grad():
        for p in broken.net.parameters():
            p.fill_(float("nan"))
    with pytest.raises(DivergedError, match="logits are not finite"):
        broken.sample(1, prompt="the", max_new_tokens=2)
    with pytest.raises(ValueError, match="NaN"):
        broken.log_prob("the cat")
