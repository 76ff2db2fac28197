"""Masked discrete diffusion: the ELBO against brute force, exact one-token conditionals,
unmasking samplers (no mask left, fixed tokens kept), the bidirectional transformer, fit, I/O."""

import itertools
import math

import numpy as np
import pytest
import torch

import genlab
from genlab.data import load_dataset
from genlab.models import masked_diffusion_maths as mdm
from genlab.models.masked_diffusion import MaskedDiffusion, MaskedSamples
from genlab.nets.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = "the cat sat on the mat. the dog ate the hat! " * 30
TINY = {"n_layer": 1, "n_head": 2, "n_embd": 16, "warmup_steps": 2}


@pytest.fixture(scope="module")
def text_model():
    return MaskedDiffusion(block_size=8, max_steps=150, **TINY).fit(CORPUS, progress=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n=300), load_dataset("digits", split="test", n=20)


@pytest.fixture(scope="module")
def image_model(digits):
    return MaskedDiffusion(max_steps=30, **TINY).fit(digits[0], digits[0].y, progress=False)


def masked_ce(model, row, free_positions, masked):
    """CE(M) = sum_{i in M} -log p_theta(x_i | row with M masked), one forward pass, float64."""
    x = row.clone()
    x[0, list(masked)] = model.mask_id_
    with torch.no_grad():
        lp = torch.log_softmax(model.net(x)[0, :, : model.n_out_].double(), -1)
    return -sum(float(lp[i, row[0, i]]) for i in masked)


# -- the schedules and the bound's algebra --------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_ends_and_weight_against_autograd(schedule):
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64, requires_grad=True)
    a = mdm.alpha(t, schedule)
    (da,) = torch.autograd.grad(a.sum(), t)
    torch.testing.assert_close(mdm.elbo_weight(t, schedule), (-da / (1 - a)).detach())
    ends = mdm.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64), schedule)
    torch.testing.assert_close(ends, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert mdm.unmask_probability(0.25, 0.0, schedule) == 1.0  # the last step reveals all


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_time_integral_of_a_mask_size_is_one_over_its_count(schedule):
    """int_0^1 w(t) (1 - alpha)^k alpha^(m - k) dt * C(m, k) = 1 / k for any schedule, which
    turns the t-form into the mask-count form that `log_prob` estimates."""
    nodes, weights = np.polynomial.legendre.leggauss(400)
    t = torch.tensor((nodes + 1) / 2, dtype=torch.float64)
    w, a = mdm.elbo_weight(t, schedule), mdm.alpha(t, schedule)
    m = 5
    for k in range(1, m + 1):
        integrand = w * (1 - a) ** k * a ** (m - k) * math.comb(m, k)
        assert float((integrand * torch.tensor(weights / 2)).sum()) == pytest.approx(1 / k, 1e-6)


def test_draw_masks_are_uniform_in_size_and_inside_the_free_positions():
    free = torch.tensor([[True, True, False, True]] * 2000)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for j in range(3):
        masked, k = mdm.draw_masks(free, j, 3, g)
        assert not masked[:, 2].any() and torch.equal(masked.sum(-1).float(), k)
        counts += torch.bincount(k.long(), minlength=4)
    assert counts[0] == 0 and torch.allclose(counts[1:] / counts.sum(), torch.full((3,), 1 / 3))
    masked, _ = mdm.draw_masks(free, 0, 1, g)
    assert masked[:, 0].float().mean() == pytest.approx(masked[:, 1].float().mean(), abs=0.05)


def test_parse_infill_and_confidence_choice():
    encode = lambda s: [ord(c) for c in s]  # noqa: E731
    assert mdm.parse_infill("ab__c_", "_", encode) == [97, 98, None, None, 99, None]
    assert mdm.parse_infill("_", "_", encode) == [None]
    with pytest.raises(ValueError, match="one character"):
        mdm.parse_infill("a", "__", encode)
    conf = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    masked = torch.tensor([[True, False, True, True]])
    chosen = mdm.most_confident(conf, masked, torch.tensor([2]))
    assert chosen.tolist() == [[False, False, True, True]]


# -- the bound on a fitted model -------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_elbo_equals_a_brute_force_expectation_over_masks_and_time(text_model, schedule):
    """Every mask of a length-3 sequence, integrated over t by Gauss-Legendre quadrature with
    P_t(M) = (1 - alpha)^|M| alpha^(3 - |M|) and w(t): the Monte-Carlo bound agrees within
    its standard error, and the schedules give the same integral."""
    row = torch.tensor([text_model.tokenizer_.encode("cat")])  # padded to 8 with [MASK]s
    padded = torch.full((1, 8), text_model.mask_id_)
    padded[0, :3] = row
    ce = {M: masked_ce(text_model, padded, range(3), M)
          for k in range(1, 4) for M in itertools.combinations(range(3), k)}  # fmt: skip
    nodes, weights = np.polynomial.legendre.leggauss(200)
    nelbo = 0.0
    for t, wq in zip((nodes + 1) / 2, weights / 2, strict=True):
        tt = torch.tensor(t, dtype=torch.float64)
        a, w = float(mdm.alpha(tt, schedule)), float(mdm.elbo_weight(tt, schedule))
        nelbo += wq * w * sum((1 - a) ** len(M) * a ** (3 - len(M)) * c for M, c in ce.items())
    by_count = sum(c / len(M) / math.comb(3, len(M)) for M, c in ce.items())
    assert nelbo == pytest.approx(by_count, rel=1e-6)
    lp = text_model.log_prob(row.repeat(200, 1), samples=30)
    stderr = float(text_model.log_prob_stderr_.double().pow(2).sum().sqrt()) / 200
    assert float(text_model.log_prob_stderr_.max()) > 0
    assert abs(float(lp.double().mean()) + nelbo) < 4 * stderr + 1e-4


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_step_bound_equals_brute_force_and_is_looser(text_model, steps):
    """The T-step bound (of what `sample(steps=T)` draws): sum over the steps j and every mask
    M of P_{t_j}(M) (alpha(s) - alpha(t)) / (1 - alpha(t)) CE(M); T = 1 is the sum of the
    tokens' predictions from all masks; it never beats the continuous-time bound."""
    row = torch.tensor([text_model.tokenizer_.encode("sat")])
    padded = torch.full((1, 8), text_model.mask_id_)
    padded[0, :3] = row
    ce = {M: masked_ce(text_model, padded, range(3), M)
          for k in range(1, 4) for M in itertools.combinations(range(3), k)}  # fmt: skip
    nelbo = 0.0
    for j in range(1, steps + 1):
        t, s = j / steps, (j - 1) / steps
        a_t, a_s = 1 - t, 1 - s  # the linear schedule
        step = sum((1 - a_t) ** len(M) * a_t ** (3 - len(M)) * c for M, c in ce.items())
        nelbo += (a_s - a_t) / (1 - a_t) * step
    if steps == 1:
        assert nelbo == pytest.approx(ce[(0, 1, 2)])
    continuous = sum(c / len(M) / math.comb(3, len(M)) for M, c in ce.items())
    assert nelbo >= continuous - 1e-9
    lp = text_model.log_prob(row.repeat(200, 1), samples=30, steps=steps)
    stderr = float(text_model.log_prob_stderr_.double().pow(2).sum().sqrt()) / 200
    assert abs(float(lp.double().mean()) + nelbo) < 4 * stderr + 1e-4


def test_with_all_but_one_token_given_the_bound_is_that_tokens_log_prob(text_model):
    x = torch.tensor([text_model.tokenizer_.encode("the mat.")])
    for i in (0, 3, 7):
        given = torch.ones_like(x, dtype=torch.bool)
        given[0, i] = False
        lp = text_model.log_prob(x, given=given, samples=5)
        exact = -masked_ce(text_model, x, range(8), [i])
        assert float(lp) == pytest.approx(exact, abs=1e-4)
        assert float(text_model.log_prob_stderr_) == 0.0


def test_text_bound_is_the_sum_of_chunk_bounds_and_seeded(text_model):
    text = "the cat sat on the mat. th"  # 26 characters: chunks of 8, 8, 8 and 2
    lp = text_model.log_prob(text)
    assert torch.equal(lp, text_model.log_prob(text))  # a fixed seed
    assert not torch.equal(lp, text_model.log_prob(text, seed=1))
    scores = text_model.evaluate_text(text)
    assert scores["bits_per_char"] == pytest.approx(-float(lp) / len(text) / math.log(2), 1e-5)
    assert scores["bits_per_char_stderr"] > 0 and scores["n_tokens"] == 26
    assert math.isfinite(scores["window_loss"])


# -- sampling --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps, confidence", [(1, False), (3, False), (50, False), (3, True)])
def test_sampling_never_leaves_a_mask(text_model, image_model, steps, confidence):
    out = text_model.sample(5, seed=0, steps=steps, confidence=confidence,
                            return_trajectory=True)  # fmt: skip
    assert isinstance(out, MaskedSamples) and out.tokens.shape == (steps + 1, 5, 8)
    assert (out.tokens[0] == out.mask_id).all() and not (out.tokens[-1] == out.mask_id).any()
    revealed = out.tokens != out.mask_id
    assert (revealed[1:] >= revealed[:-1]).all()  # once revealed, a token stays
    assert (out.tokens[1:][revealed[:-1]] == out.tokens[:-1][revealed[:-1]]).all()
    assert all(len(s) == 8 and "_" not in s for s in out.samples)
    images = image_model.sample(4, seed=0, steps=steps, confidence=confidence, y=3)
    grid = images * (image_model.tokenizer_.levels - 1)
    assert images.shape == (4, 1, 8, 8) and torch.equal(grid, grid.round())
    assert (images >= 0).all() and (images <= 1).all()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_reveal_steps_follow_the_step_by_step_unmasking_law(schedule):
    """P(revealed at step j) = alpha(t_{j+1}) - alpha(t_j): the product of the ancestral coin
    flips unmask_probability(t_i, t_{i+1}) (not revealed before j, revealed at j)."""
    steps, n = 5, 40_000
    free = torch.ones(n, 3, dtype=torch.bool)
    free[:, 1] = False
    when = mdm.reveal_steps(free, steps, schedule, torch.Generator().manual_seed(0))
    assert (when[:, 1] == -1).all() and when[:, [0, 2]].min() >= 0
    grid = mdm.time_grid(steps)
    expected, still = [], 1.0
    for t, s in itertools.pairwise(grid):
        p = mdm.unmask_probability(t, s, schedule)
        expected.append(still * p)
        still *= 1 - p
    freq = torch.bincount(when[:, [0, 2]].flatten(), minlength=steps).double() / (2 * n)
    torch.testing.assert_close(freq, torch.tensor(expected, dtype=torch.float64), atol=6e-3,
                               rtol=0)  # fmt: skip


def test_ancestral_sampler_draws_the_brute_force_distribution(text_model):
    """Two free tokens (the rest of the window stays [MASK]) sampled at T steps: both at one
    step with probability 1/T (linear schedule), else one first, uniformly:
    p(a, b) = p(a|MM) p(b|MM) / T + (1 - 1/T) / 2 [p(a|MM) p(b|aM) + p(b|MM) p(a|Mb)]."""
    model, T, n = text_model, 4, 30_000
    M, V = model.mask_id_, model.n_out_
    with torch.no_grad():

        def lp(rows):  # (k, 8) -> (k, 2, V) probabilities at the two free positions
            return torch.softmax(model.net(rows)[:, :2, :V].double(), -1)

        base = torch.full((1, 8), M)
        p0 = lp(base)[0]  # (2, V): both masked
        first = base.repeat(V, 1)
        first[:, 0] = torch.arange(V)
        p_b_given_a = lp(first)[:, 1]  # (V_a, V_b)
        second = base.repeat(V, 1)
        second[:, 1] = torch.arange(V)
        p_a_given_b = lp(second)[:, 0]  # (V_b, V_a)
    exact = p0[0][:, None] * p0[1][None, :] / T + (1 - 1 / T) / 2 * (
        p0[0][:, None] * p_b_given_a + p0[1][None, :] * p_a_given_b.T
    )
    assert float(exact.sum()) == pytest.approx(1.0, abs=1e-9)
    rows = model.unmask(torch.full((n, 8), M), torch.arange(8).expand(n, 8) < 2, T,
                        torch.Generator().manual_seed(0))  # fmt: skip
    assert (rows[:, 2:] == M).all()
    counts = torch.bincount(rows[:, 0] * V + rows[:, 1], minlength=V * V).double() / n
    tv = 0.5 * float((counts - exact.flatten()).abs().sum())
    noise = 0.5 * float((2 * exact / (math.pi * n)).sqrt().sum())  # E TV of n exact draws
    assert tv < 2 * noise + 0.005, (tv, noise)


def test_sampler_runs_only_the_rows_that_reveal_and_bfloat16(text_model):
    """Each forward pass runs the rows that reveal a token at that step: at most one row
    per revealed token in all, and at most one pass per step."""
    rows_seen = []
    hook = text_model.net.register_forward_pre_hook(lambda m, a: rows_seen.append(len(a[0])))
    try:
        out = text_model.sample(4, seed=0, steps=64)
    finally:
        hook.remove()
    assert sum(rows_seen) <= 4 * 8 and len(rows_seen) == text_model.nfe_ <= 64
    assert all(len(s) == 8 and "_" not in s for s in out)
    for confidence in (False, True):
        fast = text_model.sample(3, seed=0, steps=4, precision="bfloat16", confidence=confidence,
                                 infill="t_e _a_.")  # fmt: skip
        assert all(len(s) == 8 and s[0] == "t" and s[2:4] == "e " for s in fast)
    with pytest.raises(ValueError, match="precision must be one of"):
        text_model.sample(1, precision="float16")


def test_prompt_and_infill_keep_the_fixed_tokens(text_model):
    out = text_model.sample(6, seed=1, prompt="the ", steps=4)
    assert all(s.startswith("the ") and len(s) == 8 for s in out)
    short = text_model.sample(3, seed=1, prompt="the", max_new_tokens=2)
    assert all(len(s) == 5 and s.startswith("the") for s in short)
    template = "t_e _a_."
    for confidence in (False, True):
        filled = text_model.sample(6, seed=2, infill=template, confidence=confidence)
        for s in filled:
            assert len(s) == len(template)
            assert all(c == f for c, f in zip(s, template, strict=True) if f != "_")
    frames = text_model.sample(1, seed=0, infill="t*e", placeholder="*", steps=2,
                               return_trajectory=True).frames  # fmt: skip
    assert frames[0] == ["t*e"] and "*" not in frames[-1][0]


def test_sampling_is_seeded_and_uses_a_local_generator(text_model):
    a = text_model.sample(4, seed=5, steps=4)
    assert a == text_model.sample(4, generator=torch.Generator().manual_seed(5), steps=4)
    assert a != text_model.sample(4, seed=6, steps=4)
    state = torch.random.get_rng_state()
    text_model.sample(2, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    assert "".join(text_model.generate("the ", seed=5, steps=4)) == text_model.sample(
        1, seed=5, steps=4, prompt="the "
    )[0].removeprefix("the ")


def test_conditional_images_guidance_and_label_sum(image_model, digits):
    x = digits[1].x[:4]
    per_class = torch.stack([image_model.log_prob(x, torch.full((4,), c)) for c in range(10)])
    mixed = image_model.log_prob(x)
    expected = torch.logsumexp(
        per_class.double() + image_model.class_prior.double().log()[:, None], 0
    )
    torch.testing.assert_close(mixed.double(), expected, rtol=0, atol=1e-3)
    s = image_model.sample(3, seed=0, y=[1, 2, 3], guidance=2.0, steps=4)
    assert s.shape == (3, 1, 8, 8)
    traj = image_model.sample(2, seed=0, steps=3, return_trajectory=True)
    assert traj.frames.shape == (4, 2, 1, 8, 8) and traj.frames[0].isnan().all()
    assert not traj.frames[-1].isnan().any()


# -- the network -----------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_bidirectional_transformer_sees_both_sides_and_causal_does_not(positions):
    torch.manual_seed(0)
    causal = Transformer(11, 8, 2, 2, 16, positions=positions)
    both = Transformer(11, 8, 2, 2, 16, positions=positions, causal=False)
    assert list(both.state_dict()) == list(causal.state_dict())
    both.load_state_dict(causal.state_dict())
    x = torch.randint(0, 11, (3, 8))
    later = x.clone()
    later[:, 6] = (later[:, 6] + 1) % 11
    with torch.no_grad():
        assert not torch.allclose(both(x)[:, 2], both(later)[:, 2])
        torch.testing.assert_close(causal(x)[:, :6], causal(later)[:, :6])
        torch.testing.assert_close(both(x)[:, 7], both(x)[:, 7])
    with pytest.raises(ValueError, match="no cache"):
        both(x, both.new_cache(3))
    with pytest.raises(TypeError, match="causal must be"):
        Transformer(11, 8, causal="no")


# -- fit, save and load, bad input ----------------------------------------------------------------
def test_fit_lowers_the_loss_on_text_and_digit_pixels(text_model, image_model, digits):
    losses = [row["loss"] for row in text_model.train_result_.history if "loss" in row]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    uniform = math.log(text_model.tokenizer_.vocab_size)  # nats per character
    assert text_model.evaluate_text(CORPUS[:400])["loss"] < 0.9 * uniform
    uniform = 64 * math.log(17)  # nats per 8 x 8 image of 17 levels
    assert float(image_model.log_prob(digits[1]).mean()) > -0.97 * uniform
    assert text_model.is_text and image_model.conditional
    assert text_model.net.causal is False


def test_save_load_round_trip(text_model, image_model, digits, tmp_path):
    for name, model in (("text", text_model), ("image", image_model)):
        model.save(tmp_path / name)
        loaded = genlab.load(tmp_path / name)
        assert type(loaded) is MaskedDiffusion and loaded.config == model.config
    loaded = genlab.load(tmp_path / "text")
    torch.testing.assert_close(loaded.log_prob(["the cat", "a hat"]),
                               text_model.log_prob(["the cat", "a hat"]))  # fmt: skip
    assert loaded.sample(3, seed=0) == text_model.sample(3, seed=0)
    loaded = genlab.load(tmp_path / "image")
    x = digits[1].x[:5]
    torch.testing.assert_close(loaded.log_prob(x), image_model.log_prob(x))
    assert torch.equal(loaded.sample(3, seed=0), image_model.sample(3, seed=0))


def test_bad_inputs_raise_clear_errors(text_model, image_model):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        text_model.sample(2, steps=0)
    with pytest.raises(ValueError, match="more than block_size"):
        text_model.sample(2, prompt="the cat sat")
    with pytest.raises(ValueError, match="more than block_size"):
        text_model.sample(2, infill="the cat sat on _")
    with pytest.raises(ValueError, match=r"'Z'.*not in this model's vocabulary"):
        text_model.sample(2, infill="Z__")
    with pytest.raises(ValueError, match=r"'Q'.*not in this model's vocabulary"):
        text_model.sample(2, prompt="Q")
    with pytest.raises(ValueError, match="not both"):
        text_model.sample(2, prompt="a", infill="a_")
    with pytest.raises(ValueError, match="exceed block_size"):
        text_model.sample(2, prompt="the", max_new_tokens=6)
    with pytest.raises(ValueError, match="no prompt"):
        image_model.sample(2, prompt="a")
    with pytest.raises(ValueError, match="guidance"):
        image_model.sample(2, guidance=-1.0)
    with pytest.raises(ValueError, match="given must be a bool"):
        text_model.log_prob(torch.zeros(1, 3, dtype=torch.long), given=torch.ones(1, 2).bool())
    with pytest.raises(ValueError, match="samples must be"):
        text_model.log_prob("the", samples=0)
    with pytest.raises(ValueError, match="models text and quantised images"):
        MaskedDiffusion(**TINY).fit(load_dataset("moons", n=50))
