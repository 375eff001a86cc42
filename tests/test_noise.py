"""The pooled logistic noise keeps the relaxed mask's distribution (docs/methods.md, Adaptive dropout)."""
import pytest
import torch
from conftest import TINY_RECIPE

from study.config import ModelConfig, build
from study.method.adaptive_dropout import AdaptiveDropout, AdlSettings
from study.method.attach import attach_adls
from study.method.noise import POOL_FACTOR, REFRESH, LogisticNoise
from study.model import ConformerCTC

CPU = torch.device("cpu")


def mask_moments(beta: float, tau: float) -> tuple[float, float]:
    """Mean and variance of sigmoid((beta + logit(u)) / tau), u ~ U(0, 1), by the midpoint rule."""
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    m = torch.sigmoid((beta + torch.logit(u)) / tau)
    return m.mean().item(), m.var().item()


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


@pytest.mark.parametrize("pooled", [True, False])
@pytest.mark.parametrize("beta,tau", [(-1.5, 0.5), (0.0, 1.0), (2.0, 0.5)])
def test_masks_follow_the_relaxed_bernoulli(pooled, beta, tau):
    torch.manual_seed(0)
    layer = AdaptiveDropout(32, "ffn", AdlSettings(tau=tau, beta0=beta, noise="pooled" if pooled else "fresh"))
    x = torch.ones(16, 40, 32)  # (B, T, n): the layer's output is the mask itself
    with torch.no_grad():
        masks = torch.cat([layer(x) for _ in range(40)])  # 819,200 mask values
    mean, var = mask_moments(beta, tau)
    assert masks.mean().item() == pytest.approx(mean, abs=3e-3)
    assert masks.var().item() == pytest.approx(var, abs=3e-3)
    # P(m > 1/2) = P(logit(u) > -beta) = sigmoid(beta): the retention probability, exactly
    assert (masks > 0.5).float().mean().item() == pytest.approx(torch.sigmoid(torch.tensor(beta)).item(), abs=3e-3)


def test_pooled_noise_is_independent_across_units_frames_and_draws():
    torch.manual_seed(0)
    noise = LogisticNoise()
    draws = [noise.draw((8, 200, 64), CPU) for _ in range(30)]  # (B, T, n) each
    for d in draws[:5]:
        assert abs(correlation(d[..., 1:], d[..., :-1])) < 0.01  # neighbouring units
        assert abs(correlation(d[:, 1:], d[:, :-1])) < 0.01  # neighbouring frames
    # the same position in successive draws (the offsets move, so shared values land elsewhere)
    assert max(abs(correlation(a, b)) for a, b in zip(draws, draws[1:])) < 0.01
    # and the logistic distribution itself: mean 0, variance pi^2 / 3
    values = torch.cat([d.flatten() for d in draws])
    assert values.mean().item() == pytest.approx(0.0, abs=0.01)
    assert values.var().item() == pytest.approx(torch.pi ** 2 / 3, rel=0.01)


def test_pool_turns_over_and_is_reproducible():
    torch.manual_seed(0)
    noise = LogisticNoise()
    noise.draw((100, 10), CPU)
    before = noise.pools[CPU].clone()
    assert before.numel() == POOL_FACTOR * 1000
    for _ in range(5 * POOL_FACTOR * REFRESH):
        noise.draw((100, 10), CPU)
    assert (noise.pools[CPU] != before).float().mean().item() > 0.95  # (1 - 1/64)^320: about 0.6% left

    def sequence() -> torch.Tensor:
        torch.manual_seed(3)
        pool = LogisticNoise()
        return torch.stack([pool.draw((5, 7), CPU).clone() for _ in range(4)])
    assert torch.equal(sequence(), sequence())


def test_the_pool_grows_for_a_larger_draw_and_layers_share_it():
    noise = LogisticNoise()
    noise.draw((10, 10), CPU)
    assert noise.draw((30, 10), CPU).shape == (30, 10)
    assert noise.pools[CPU].numel() == POOL_FACTOR * 300
    layers = attach_adls(ConformerCTC(build(ModelConfig, TINY_RECIPE["model"]), 80, 20), ["ffn", "conv"], AdlSettings())
    assert len({id(layer.noise) for layer in layers}) == 1
