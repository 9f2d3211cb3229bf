"""The VQ-VAE family: straight-through gradients, the EMA codebook on exact examples, the PixelCNN
prior's autoregressive property and normalisation, and the one-point bound against the exact
log-likelihood by enumerating every code grid. Seeded and small."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from zoo_core.data.spec import DataSpec
from zoo_core.errors import ConfigError
from zoo_vqvae import VQVAE
from zoo_vqvae.codebook import EMACodebook
from zoo_vqvae.prior import CodePixelCNN

TINY = DataSpec("tiny-binary", (1, 4, 4), "binarized").to_dict()
TINY_DEQ = DataSpec("tiny-deq", (1, 4, 4), "dequantized", num_levels=17).to_dict()
DIGITS = DataSpec("digits", (1, 8, 8), "binarized").to_dict()
SMALL = dict(channels=8, downsample=1, n_res=1, num_codes=3, code_dim=2, prior_channels=8, prior_layers=1,
             prior_kernel=3)


def tiny_data(n: int, seed: int) -> torch.Tensor:
    return (torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def all_binary_images() -> torch.Tensor:
    """All 2^16 binary 4x4 images, (65536, 1, 4, 4)."""
    bits = (torch.arange(2**16)[:, None] >> torch.arange(16)) & 1
    return bits.float().reshape(-1, 1, 4, 4)


def trained_tiny(spec=TINY, steps: int = 40, seed: int = 0) -> VQVAE:
    torch.manual_seed(seed)
    model = VQVAE(spec, **SMALL)
    x = tiny_data(64, seed) if spec is TINY else torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    model.init_from_data(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()
    return model.eval()


# ---- codebook ------------------------------------------------------------------------------------
def test_ema_update_on_an_exact_example():
    """Codes (0, 0) and (10, 10); outputs (1, 1), (1, 1) go to code 0 and (9, 9) to code 1.
    With decay 1/2 and the pseudo-count of one: N = (1.5, 1), m = ((1, 1), (9.5, 9.5)), and
    the Laplace-smoothed counts N~ = (N + eps) / (2.5 + 2 eps) * 2.5."""
    eps = 1e-3
    book = EMACodebook(2, 2, decay=0.5, epsilon=eps)
    book.reset_to(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    z = torch.tensor([[1.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
    index = book.assign(z)
    assert index.tolist() == [0, 0, 1]
    book.ema_update(z, index)
    n = torch.tensor([1.5, 1.0])
    smoothed = (n + eps) / (2.5 + 2 * eps) * 2.5
    expected = torch.tensor([[1.0, 1.0], [9.5, 9.5]]) / smoothed[:, None]
    torch.testing.assert_close(book.cluster_size, n)
    torch.testing.assert_close(book.codes, expected)
    # both codes moved toward their members: 0 -> 0.667 (members at 1), 10 -> 9.5 (member at 9)
    assert 0 < book.codes[0, 0] < 1 and 9 < book.codes[1, 0] < 10


def test_ema_converges_to_the_cluster_means_and_spares_unused_codes():
    torch.manual_seed(1)
    book = EMACodebook(3, 2, decay=0.9, epsilon=1e-5)
    book.reset_to(torch.tensor([[0.0, 0.0], [5.0, 5.0], [100.0, -100.0]]))
    z = torch.cat([torch.randn(50, 2) * 0.1 + 1, torch.randn(50, 2) * 0.1 + 4])  # (100, 2)
    for _ in range(300):
        book.ema_update(z, book.assign(z))
    torch.testing.assert_close(book.codes[0], z[:50].mean(0), rtol=0, atol=1e-3)
    torch.testing.assert_close(book.codes[1], z[50:].mean(0), rtol=0, atol=1e-3)
    # the unused code decays toward the origin only through its smoothed count; never NaN
    assert torch.isfinite(book.codes).all()


# ---- straight-through gradients ---------------------------------------------------------------------
def test_straight_through_gradient_reaches_the_encoder():
    """d loss / d z_e = d(-log p(x|z))/dz at z = z_q (copied through) + 2 beta (z_e - z_q)."""
    torch.manual_seed(2)
    model = VQVAE(TINY, **SMALL).train()
    x = tiny_data(8, 2)
    model.init_from_data(x)
    z_e = model.encode(x).detach().requires_grad_()
    codes = model.quantize(z_e.detach())
    z_q = model.code_vectors(codes)
    z_st = z_e + (z_q - z_e).detach()
    loss = (model.commitment * ((z_e - z_q) ** 2).flatten(1).sum(1) - model.decoder_log_prob(x, z_st)).sum()
    (grad_e,) = torch.autograd.grad(loss, z_e)
    at_q = z_q.clone().requires_grad_()
    (grad_q,) = torch.autograd.grad(-model.decoder_log_prob(x, at_q).sum(), at_q)
    torch.testing.assert_close(grad_e, grad_q + 2 * model.commitment * (z_e - z_q).detach())
    # through the model's own loss: every encoder weight gets a non-zero gradient
    model.prior_warmup_steps = 10**9  # the autoencoder alone
    model.loss(x).backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.prior.parameters())  # before the warm-up ends: no prior loss


def test_the_prior_is_trained_on_detached_codes():
    torch.manual_seed(3)
    model = VQVAE(TINY, **SMALL).train()
    x = tiny_data(8, 3)
    codes = model.quantize(model.encode(x))
    prior_only = -model.prior.log_prob(codes).mean()
    prior_only.backward()
    assert all(p.grad is None for p in model.encoder.parameters())  # integer codes: no path back
    assert any(p.grad.abs().sum() > 0 for p in model.prior.parameters())


def test_codebook_moves_in_training_mode_only():
    torch.manual_seed(4)
    model = VQVAE(TINY, **SMALL)
    x = tiny_data(16, 4)
    before = model.codebook.codes.clone()
    with torch.no_grad():
        model.eval().loss(x)
    assert torch.equal(model.codebook.codes, before)
    model.train().loss(x)
    assert not torch.equal(model.codebook.codes, before)


# ---- the prior ------------------------------------------------------------------------------------------
def test_prior_is_autoregressive_in_raster_order():
    """The logits at position i depend on the one-hot inputs at positions < i only (autograd)."""
    torch.manual_seed(5)
    prior = CodePixelCNN(num_codes=4, channels=8, n_layers=2, kernel_size=3)
    h = w = 3
    onehot = torch.nn.functional.one_hot(torch.randint(4, (1, h, w)), 4).permute(0, 3, 1, 2).float()
    for i in range(h * w):
        inp = onehot.clone().requires_grad_()
        prior.forward_onehot(inp)[0, :, i // w, i % w].sum().backward()
        seen = inp.grad.abs().sum(1)[0].reshape(-1) > 0  # (h w,)
        assert not seen[i:].any(), f"position {i} sees positions {seen[i:].nonzero().flatten().add(i).tolist()}"
    # the last position sees at least its left neighbour and the one above
    assert seen[h * w - 2] and seen[h * w - 1 - w]


def test_prior_sums_to_one_over_all_code_grids():
    torch.manual_seed(6)
    prior = CodePixelCNN(num_codes=3, channels=8, n_layers=1, kernel_size=3)
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(-1, 2, 2)  # (81, 2, 2)
    with torch.no_grad():
        total = torch.logsumexp(prior.log_prob(grids).double(), 0)
    assert abs(float(total)) < 1e-5
    codes = prior.sample(5, 2, 2, "cpu")
    assert codes.shape == (5, 2, 2) and codes.min() >= 0 and codes.max() < 3


# ---- the bound -------------------------------------------------------------------------------------------
def test_reference_log_prob_is_a_normalised_distribution():
    """exp(reference_log_prob) sums to 1 over all 2^16 binary 4x4 images (81 code grids)."""
    model = trained_tiny(steps=10)
    with torch.no_grad():
        total = torch.logsumexp(model.reference_log_prob(all_binary_images()).double(), 0)
    assert abs(float(total)) < 1e-3


@pytest.mark.parametrize("spec", [TINY, TINY_DEQ], ids=["binarized", "dequantized"])
def test_one_point_bound_is_below_the_exact_log_likelihood(spec):
    """log p(x|z_q) + log p(z_q) <= log sum_z p(x|z) p(z) for every example, with a gap that is
    the log of the posterior mass off z_q: gap = -log p(z_q | x) >= 0."""
    model = trained_tiny(spec, steps=40, seed=7)
    x = tiny_data(100, 8) if spec is TINY else torch.rand(100, 1, 4, 4, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        bound = model.log_prob(x)
        exact = model.reference_log_prob(x)
        codes = model.quantize(model.encode(x))  # (100, 2, 2)
        joint = model.decoder_log_prob(x, model.code_vectors(codes)) + model.prior.log_prob(codes)
    assert bound.shape == exact.shape == (100,)
    assert (bound <= exact + 1e-4).all(), float((bound - exact).max())
    torch.testing.assert_close(bound, joint)
    assert float((exact - bound).mean()) > 1e-3  # a strict bound here: other grids carry mass


def test_loss_is_the_negative_bound_plus_commitment_once_the_prior_is_active():
    model = trained_tiny(steps=5, seed=9)
    x = tiny_data(16, 9)
    with torch.no_grad():
        z_e = model.encode(x)
        z_q = model.code_vectors(model.quantize(z_e))
        commit = model.commitment * ((z_e - z_q) ** 2).flatten(1).sum(1)
        torch.testing.assert_close(model.loss(x), (commit - model.log_prob(x)).mean())


# ---- the family ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [TINY, TINY_DEQ, DIGITS], ids=["binarized", "dequantized", "digits"])
def test_shapes(spec):
    torch.manual_seed(10)
    model = VQVAE(spec, **{**SMALL, "num_codes": 5}).eval()
    event = tuple(spec["event_shape"])
    x = torch.rand(6, *event).round() if spec["representation"] == "binarized" else torch.rand(6, *event)
    with torch.no_grad():
        assert model.log_prob(x.reshape(2, 3, *event)).shape == (2, 3)
        assert model.reconstruct(x).shape == x.shape
        assert model.sample((2, 3)).shape == (2, 3, *event)
        shown = model.sample_for_display(4)
    assert shown.shape == (4, *event) and shown.min() >= 0 and shown.max() <= 1
    assert model.grid == (event[1] // 2, event[2] // 2)
    assert (model.reference_log_prob(x) is None) == (5 ** (model.grid[0] * model.grid[1]) > 4096)
    assert "one-point ELBO" in model.likelihood_description()


def test_configuration_errors_name_the_setting():
    with pytest.raises(ConfigError, match="downsample"):
        VQVAE(DataSpec("odd", (1, 6, 6), "binarized").to_dict(), downsample=2)
    with pytest.raises(ConfigError, match="images"):
        VQVAE(DataSpec("toy", (2,), "continuous").to_dict())
    with pytest.raises(ConfigError, match="decay"):
        VQVAE(TINY, **{**SMALL, "decay": 1.0})
    with pytest.raises(ConfigError, match="prior_kernel"):
        VQVAE(TINY, **{**SMALL, "prior_kernel": 4})


def test_training_improves_reconstruction_and_uses_the_codebook():
    """A few hundred steps on 8x8 binarised digits: reconstructions far better than the start, and
    more than a handful of codes in use (the data-initialised EMA codebook does not collapse)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(11)
    x = torch.tensor(load_digits().images[:512] / 16.0 > 0.5, dtype=torch.float32)[:, None]  # (512, 1, 8, 8)
    model = VQVAE(DIGITS, channels=16, downsample=1, num_codes=16, code_dim=4, prior_channels=8, prior_layers=1,
                  prior_kernel=3)
    model.init_from_data(x[:256])

    def bce():
        with torch.no_grad():
            p = model.reconstruct(x).clamp(1e-6, 1 - 1e-6)
            return float(-(x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3)).mean())

    before = bce()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for step in range(150):
        batch = x[torch.randint(len(x), (64,))]
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    model.eval()
    after = bce()
    with torch.no_grad():
        used = model.quantize(model.encode(x)).unique().numel()
    assert after < 0.5 * before, (before, after)
    assert used >= 6, used
    assert math.isfinite(float(model.log_prob(x[:10]).sum()))
