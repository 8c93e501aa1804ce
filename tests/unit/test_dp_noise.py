"""DP-LoRA's Gaussian mechanism: clipping, the noise scale, and ΔW linear in the noise."""

from __future__ import annotations

import numpy as np
import pytest

from client.privacy.dp_lora import (
    SENSITIVITY_PER_CLIP,
    clip_total_norm,
    dp_lora_release,
    total_norm,
)


def _factors(scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"m{i}.lora_B.weight": scale * rng.normal(size=(64, 4)) for i in range(3)}


def test_joint_norm_is_clipped_to_c_and_small_updates_pass_unchanged() -> None:
    big = _factors(5.0)
    clipped = clip_total_norm(big, max_norm=2.0)
    assert total_norm(clipped) == pytest.approx(2.0)
    direction = np.concatenate([v.ravel() for v in big.values()])
    kept = np.concatenate([clipped[k].ravel() for k in big])
    assert np.allclose(kept / np.linalg.norm(kept), direction / np.linalg.norm(direction))
    small = _factors(1e-3)
    assert total_norm(small) < 2.0
    assert all(np.array_equal(clip_total_norm(small, max_norm=2.0)[k], small[k]) for k in small)


def test_noise_std_matches_sigma_times_two_c_with_a_fixed_seed() -> None:
    zero = {f"m{i}.lora_B.weight": np.zeros((256, 16)) for i in range(4)}
    sigma, clip = 0.7, 1.5
    noised, norm = dp_lora_release(
        zero, clip_norm=clip, noise_multiplier=sigma, rng=np.random.default_rng(3)
    )
    assert norm == 0.0
    values = np.concatenate([v.ravel() for v in noised.values()]).astype(np.float64)
    expected = sigma * SENSITIVITY_PER_CLIP * clip
    assert SENSITIVITY_PER_CLIP == 2.0  # replace-one of a node's whole data set
    assert values.std() == pytest.approx(expected, rel=0.02)  # 16384 draws
    assert abs(values.mean()) < 0.05 * expected


def test_delta_w_is_linear_in_the_noise() -> None:
    """With A fixed, s·(B + N)·A = s·B·A + s·N·A: doubling σ doubles the deviation exactly."""
    b = _factors(5.0)
    a = {k.replace("lora_B", "lora_A"): np.random.default_rng(9).normal(size=(4, 32)) for k in b}
    clipped = clip_total_norm(b, max_norm=1.0)

    def deviation(sigma: float) -> dict[str, np.ndarray]:
        noised, _ = dp_lora_release(
            b, clip_norm=1.0, noise_multiplier=sigma, rng=np.random.default_rng(5)
        )
        return {
            k: noised[k].astype(np.float64) @ a[k.replace("lora_B", "lora_A")]
            - clipped[k] @ a[k.replace("lora_B", "lora_A")]
            for k in b
        }

    one, two = deviation(0.5), deviation(1.0)
    for key in b:
        assert np.allclose(two[key], 2.0 * one[key], atol=1e-5)
    assert all(np.allclose(v, 0.0, atol=1e-6) for v in deviation(0.0).values())


def test_a_non_positive_clip_is_refused() -> None:
    with pytest.raises(ValueError, match="`dp-clip-norm`"):
        clip_total_norm(_factors(1.0), max_norm=0.0)


def test_the_secure_source_is_gaussian_keyed_and_independent_of_torch_seeds() -> None:
    import torch
    from scipy import stats

    from client.privacy.noise import SecureRandom

    draws = SecureRandom().normal(0.0, 3.0, size=(200, 100))
    assert draws.shape == (200, 100) and draws.std() == pytest.approx(3.0, rel=0.02)
    assert stats.kstest(draws.ravel() / 3.0, "norm").pvalue > 1e-3
    key = bytes(range(32))
    np.testing.assert_array_equal(
        SecureRandom(key).normal(size=5), SecureRandom(key).normal(size=5)
    )
    torch.manual_seed(0)
    first = SecureRandom().normal(size=5)
    torch.manual_seed(0)  # a fresh 256-bit key each time: no seed anyone knows repeats it
    assert not np.array_equal(first, SecureRandom().normal(size=5))
    assert SecureRandom().bernoulli(100_000, 0.1).mean() == pytest.approx(0.1, abs=0.005)
    with pytest.raises(ValueError, match="32 bytes"):
        SecureRandom(b"short")


def test_dp_sgd_noise_has_std_sigma_c_over_the_expected_batch() -> None:
    """An empty Poisson batch: the step is the noise alone, N(0, (σC)²) / expected batch size."""
    import torch
    from opacus import GradSampleModule

    from client.privacy.dp_sgd import SecureNoiseDPOptimizer
    from client.privacy.noise import SecureRandom

    layer = GradSampleModule(torch.nn.Linear(100, 100))
    params = [q for q in layer.parameters() if q.requires_grad]
    before = [q.detach().clone() for q in params]
    optimizer = SecureNoiseDPOptimizer(
        torch.optim.SGD(params, lr=1.0), noise_multiplier=2.0, max_grad_norm=0.5,
        expected_batch_size=4.0, loss_reduction="mean", source=SecureRandom(),
    )  # fmt: skip
    for q in params:
        q.grad_sample = torch.zeros((0, *q.shape))
    optimizer.step()
    moved = torch.cat([(b - q.detach()).ravel() for b, q in zip(before, params, strict=True)])
    assert float(moved.std()) == pytest.approx(2.0 * 0.5 / 4.0, rel=0.03)
    assert abs(float(moved.mean())) < 0.01
