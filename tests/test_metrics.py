"""Metrics against known answers."""
import math

import torch

from zoo_core.metrics.sample_quality import median_bandwidth, mmd2_unbiased, sliced_wasserstein


def test_sliced_wasserstein_of_a_shift_in_one_dimension():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 1, generator=gen, dtype=torch.float64)
    y = torch.randn(20000, 1, generator=gen, dtype=torch.float64) + 1.0
    assert abs(sliced_wasserstein(x, y) - 1.0) < 0.03  # W1(N(0,1), N(1,1)) = 1


def test_sliced_wasserstein_of_an_isotropic_shift():
    """In D dims, a shift by vector s projects to |s.u|; E|s.u| over uniform u is known in 2-D: 2|s|/pi."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 2, generator=gen, dtype=torch.float64)
    y = x + torch.tensor([3.0, 0.0], dtype=torch.float64)
    assert abs(sliced_wasserstein(x, y) - 2 * 3.0 / math.pi) < 0.1


def test_mmd_is_unbiased_near_zero_for_equal_distributions_and_positive_otherwise():
    gen = torch.Generator().manual_seed(2)
    values = []
    for _ in range(20):
        x = torch.randn(300, 2, generator=gen, dtype=torch.float64)
        y = torch.randn(300, 2, generator=gen, dtype=torch.float64)
        values.append(mmd2_unbiased(x, y, median_bandwidth(y)))
    values = torch.tensor(values)
    assert abs(float(values.mean())) < 3 * float(values.std()) / math.sqrt(len(values))
    x = torch.randn(300, 2, generator=gen, dtype=torch.float64) + 0.5
    assert mmd2_unbiased(x, y, median_bandwidth(y)) > 10 * float(values.std())
