"""The PixelCNN and Gated PixelCNN on colour images (van den Oord, Kalchbrenner & Kavukcuoglu 2016,
"Pixel Recurrent Neural Networks", sec. 3.4: R, G, B channel masks): receptive fields by autograd
(every earlier pixel and the earlier colours of the pixel itself; a blind spot for the masked
PixelCNN), probabilities summing to 1 over every binary 3-channel 1x2 image, a 3-channel mixture
density integrating to 1, samples following log_prob (chi-square), the incremental sampler against
the definition, and the conformance kit plus a few training steps of the CIFAR-10 entry on small
archives in the official binary format."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_autoregressive import Autoregressive, all_binary, randomised, spec  # noqa: E402
from test_autoregressive_sampling import reference_draw  # noqa: E402

from zoo_autoregressive.incremental import incremental_sampler  # noqa: E402
from zoo_core.errors import ConfigError  # noqa: E402
from zoo_autoregressive.nets import MaskedConv2d, channel_groups, colour_mask  # noqa: E402

ENTRY = "autoregressive-pixelcnn-cifar10"
C, H, W = 3, 6, 6


def receptive_field(model: Autoregressive, n_images: int = 3) -> torch.Tensor:
    """(D, D) bool: [d, e] is True when the conditional of dimension d has a non-zero gradient
    with respect to dimension e (flattened as (c, i, j)) at one of ``n_images`` random images."""
    gen = torch.Generator().manual_seed(11)
    D = C * H * W
    seen = torch.zeros(D, D, dtype=torch.bool)
    for _ in range(n_images):
        x = torch.rand(1, C, H, W, dtype=torch.float64, generator=gen)
        jac = torch.autograd.functional.jacobian(lambda v: model.conditionals(v), x, vectorize=True)  # (1, D, P, 1, C, H, W)
        seen |= jac.reshape(D, -1, D).abs().sum(1) != 0
    return seen


def position() -> torch.Tensor:
    """(D,) position of dimension (c, i, j) in the joint order: pixels in raster order, then c."""
    c, pixel = torch.meshgrid(torch.arange(C), torch.arange(H * W), indexing="ij")
    return (pixel * C + c).reshape(-1)


def earlier() -> torch.Tensor:
    """(D, D) bool: [d, e] is True when e comes strictly before d: an earlier pixel (any colour)
    or a colour c' < c of the same pixel."""
    pos = position()
    return pos[None, :] < pos[:, None]


def describe(pairs) -> list:
    return [(divmod(d, H * W), divmod(e, H * W)) for d, e in pairs[:5]]


@pytest.mark.parametrize("representation", ["binarized", "dequantized"])
def test_gated_colour_receptive_field_is_every_earlier_sub_pixel(representation):
    """d p_(c,i,j) / d x_(c',i',j') != 0 for every earlier pixel (all colours) and for c' < c at
    (i, j); exactly 0 for c' >= c at (i, j) and for every later pixel (kernel 5 + 3 layers
    reach the 6 x 6 image)."""
    model = randomised(Autoregressive(spec((C, H, W), representation), architecture="gated_pixelcnn",
                                      channels=24, n_layers=3, kernel_size=5, n_components=2), seed=1, std=0.3)
    seen = receptive_field(model)
    before = earlier()
    leaks = (seen & ~before).nonzero().tolist()
    assert not leaks, f"conditionals depending on a later sub-pixel (dim (c, pixel), input): {describe(leaks)}"
    missed = (before & ~seen).nonzero().tolist()
    assert not missed, f"earlier sub-pixels outside the receptive field: {describe(missed)}"
    # the same pixel's earlier colours are among them: G sees R, B sees R and G, R sees neither
    same = torch.arange(H * W)
    for c in range(C):
        for c2 in range(C):
            assert bool(seen[c * H * W + same, c2 * H * W + same].all()) == (c2 < c)


def test_masked_colour_pixelcnn_obeys_the_order_and_has_a_blind_spot():
    """The masked PixelCNN never sees a later sub-pixel; it sees the earlier colours of its own
    pixel and misses only pixels above and to the right (its blind spot, which exists)."""
    model = randomised(Autoregressive(spec((C, H, W), "dequantized"), architecture="pixelcnn", channels=24,
                                      n_layers=3, kernel_size=5, n_components=1), seed=1, std=0.3)
    seen = receptive_field(model, n_images=8)  # ReLUs everywhere: more images before a zero counts as blind
    before = earlier()
    leaks = (seen & ~before).nonzero().tolist()
    assert not leaks, f"conditionals depending on a later sub-pixel: {describe(leaks)}"
    blind = (before & ~seen).nonzero().tolist()
    assert len(blind) > 0, "the masked PixelCNN was expected to have a blind spot"
    for d, e in blind:
        (_, (i, j)), (_, (i2, j2)) = [(k // (H * W), divmod(k % (H * W), W)) for k in (d, e)]
        assert i2 < i and j2 > j, f"pixel {(i, j)} misses {(i2, j2)}, not above-right of it"


def test_colour_masks_by_hand():
    """The centre tap of a 3-colour type-A / type-B convolution, and the feature groups."""
    assert channel_groups(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert channel_groups(5, 1).tolist() == [0] * 5
    conv = MaskedConv2d("A", 3, 6, 3, colours=3)  # image R, G, B -> groups [0, 0, 1, 1, 2, 2]
    centre = conv.mask[:, :, 1, 1]
    assert centre.tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]]
    assert torch.equal(conv.mask[:, :, 0], torch.ones(6, 3, 3)) and conv.mask[:, :, 1, 2].sum() == 0
    assert conv.mask[:, :, 2].sum() == 0
    groups = torch.tensor([0, 1, 2])
    assert colour_mask(groups, groups, "B").tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    single = MaskedConv2d("B", 4, 4, 3)  # one colour: type B keeps the whole centre, as before
    assert single.mask[:, :, 1, 1].sum() == 16 and MaskedConv2d("A", 4, 4, 3).mask[:, :, 1, 1].sum() == 0


@pytest.mark.parametrize("architecture", ["pixelcnn", "gated_pixelcnn"])
def test_probabilities_sum_to_one_over_every_binary_colour_image(architecture):
    """A 3-channel 1 x 2 binary image: sum_x p(x) = 1 over all 2^6 = 64 images, and so for every
    class of a class-conditional model."""
    images = all_binary((C, 1, 2))  # (64, 3, 1, 2)
    model = randomised(Autoregressive(spec((C, 1, 2)), architecture=architecture, channels=6, n_layers=2,
                                      kernel_size=3), seed=3, std=0.8)
    with torch.no_grad():
        p = model.log_prob(images).exp()
    assert abs(float(p.sum()) - 1) < 1e-12, float(p.sum())
    assert float(p.max()) > 4 * float(p.min()), "a near-uniform model would test little"
    labelled = dict(spec((C, 1, 2)), conditional=True, num_classes=3)
    model = randomised(Autoregressive(labelled, architecture=architecture, channels=6, n_layers=1, kernel_size=3),
                       seed=4, std=0.8)
    with torch.no_grad():
        for y in range(3):
            total = model.log_prob(images, torch.full((64,), y)).exp().sum()
            assert abs(float(total) - 1) < 1e-12, (y, float(total))


@pytest.mark.parametrize("architecture", ["pixelcnn", "gated_pixelcnn"])
def test_colour_mixture_density_integrates_to_one(architecture):
    """One pixel, three real channels: p(R) p(G | R) p(B | R, G), integrated on a 3-D grid (80^3
    midpoints over [-6, 6]^3, step h = 0.15). The midpoint rule's error on a Gaussian of scale s is
    about 2 exp(-2 pi^2 s^2 / h^2), 1e-5 for s >= 0.8 h; scales below 1 and means within 1.5 leave
    under 1e-5 of the mass outside the cube."""
    model = randomised(Autoregressive(spec((C, 1, 1), "dequantized"), architecture=architecture, channels=6,
                                      n_layers=1, kernel_size=3, n_components=2), seed=6, std=0.3)
    n, lo, hi = 80, -6.0, 6.0
    step = (hi - lo) / n
    axis = lo + step * (torch.arange(n, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(axis, axis, axis).reshape(-1, C, 1, 1)
    with torch.no_grad():
        model.net.head[-1].weight.mul_(0.3)
        for c in range(C):  # colour c's raw log-scales (entries 6c + 4, 6c + 5): scales about 0.4
            model.net.head[-1].bias[6 * c + 4:6 * c + 6] = -0.4
        params = model.conditionals(grid)  # (n^3, 3, 6)
        _, means, log_scale = model._mixture(params)
        assert log_scale.min() > math.log(0.8 * step) and log_scale.max() < 0 and means.abs().max() < 1.5
        for c in (1, 2):  # G and B depend on the colours before them
            assert (params[:, c] - params[:, c].mean(0)).abs().max() > 1e-3
        mass = float(model.log_prob(grid).exp().sum()) * step ** 3
    assert abs(mass - 1) < 1e-3, f"integral {mass}"


@pytest.mark.parametrize("architecture", ["pixelcnn", "gated_pixelcnn"])
def test_samples_follow_log_prob(architecture):
    """20,000 seeded samples of a 3-channel 1 x 2 binary model: the chi-square statistic of their
    64 image counts against exp(log_prob) stays below 63 + 6 sd (63 degrees of freedom); the same
    counts against the model with its colour order reversed are far off."""
    images = all_binary((C, 1, 2))
    model = randomised(Autoregressive(spec((C, 1, 2)), architecture=architecture, channels=6, n_layers=2,
                                      kernel_size=3), seed=3, std=0.4)
    n = 20000
    torch.manual_seed(0)
    x = model.sample((n,))  # (n, 3, 1, 2)
    index = (x.reshape(n, -1) * 2 ** torch.arange(5, -1, -1, dtype=x.dtype)).sum(1).long()  # as all_binary orders them
    counts = torch.bincount(index, minlength=64).double()
    with torch.no_grad():
        expected = n * model.log_prob(images).exp()
    assert float(expected.min()) > 5, "every cell needs an expected count above 5"
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 63 + 6 * math.sqrt(2 * 63), f"chi-square {chi2:.1f} with 63 degrees of freedom"
    wrong = expected.reshape(2, 2, 2, 2, 2, 2).flip(0, 1, 2, 3, 4, 5).reshape(-1)  # every bit flipped
    assert float(((counts - wrong) ** 2 / wrong).sum()) > 10 * chi2 + 200


CASES = [  # (representation, model kwargs)
    ("binarized", dict(architecture="pixelcnn", channels=7, n_layers=2, kernel_size=5)),
    ("dequantized", dict(architecture="pixelcnn", channels=6, n_layers=2, kernel_size=3, n_components=2)),
    ("binarized", dict(architecture="gated_pixelcnn", channels=7, n_layers=2, kernel_size=5)),
    ("dequantized", dict(architecture="gated_pixelcnn", channels=6, n_layers=2, kernel_size=3, n_components=2)),
]


@pytest.mark.parametrize("representation, kwargs", CASES)
def test_incremental_colour_sampling_matches_the_definition(representation, kwargs):
    """Same seed, same samples as one full network pass per sub-pixel (R, G, B within a pixel),
    and every step's parameters equal the full pass's at a fixed image."""
    model = randomised(Autoregressive(spec((C, 4, 5), representation), **kwargs), seed=2, std=0.3)
    torch.manual_seed(5)
    fast, fast_means = model._draw(12)
    torch.manual_seed(5)
    ref, ref_means = reference_draw(model, 12)
    if representation == "binarized":
        assert torch.equal(fast, ref)
    else:
        torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(fast_means, ref_means, atol=1e-10, rtol=1e-10)
    x = torch.rand(3, C, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        full = model.conditionals(x)  # (3, D, P)
        steps = incremental_sampler(model.net, 3, model.event_shape, model.net_input)
        flat = x.reshape(3, -1)
        order = torch.argsort(model.order()).tolist()
        assert order[:4] == [0, 20, 40, 1], "R, G, B of pixel (0, 0), then R of pixel (0, 1)"
        for d in order:
            torch.testing.assert_close(steps.params(d), full[:, d], atol=1e-12, rtol=1e-12)
            steps.set(d, flat[:, d])


def test_colour_shapes_init_and_errors():
    torch.manual_seed(3)
    for architecture in ("pixelcnn", "gated_pixelcnn"):
        model = Autoregressive(spec((C, 4, 4), "dequantized"), architecture=architecture, channels=6, n_layers=1,
                               kernel_size=3, n_components=2)
        x = torch.rand(32, C, 4, 4) * torch.tensor([0.2, 0.5, 1.0])[:, None, None]  # channels of different ranges
        model.init_from_data(x)
        bias = model.net.output_bias().view(C, 6)  # (colour, P)
        for c in range(C):
            q = torch.quantile(x[:, c].reshape(-1), torch.tensor([0.25, 0.75]))
            torch.testing.assert_close(bias[c, 2:4], q, rtol=1e-5, atol=1e-6)
        assert model.log_prob(x[:6].reshape(2, 3, C, 4, 4)).shape == (2, 3)
        assert model.sample((2,)).shape == (2, C, 4, 4) and model.sample(0).shape == (0, C, 4, 4)
        model.loss(x).backward()
        assert all(p.grad is not None for p in model.parameters())
        with pytest.raises(ConfigError, match="at least the image's 3 channels"):
            Autoregressive(spec((C, 4, 4)), architecture=architecture, channels=2)


# ---- the CIFAR-10 entry on small archives in the official binary format ------------------------------
@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """A data directory with a small CIFAR-10 archive (6 images per training file, 7 test images),
    accepted as the official one (its md5 patched for the module)."""
    from test_cifar10 import N_TEST, PER_BATCH, _records, _write_archive
    from zoo_core.data import cifar10

    root = tmp_path_factory.mktemp("cifar")
    members = {f"cifar-10-batches-bin/{name}": _records(PER_BATCH, i)[0] for i, name in enumerate(cifar10.TRAIN_FILES)}
    members["cifar-10-batches-bin/test_batch.bin"] = _records(N_TEST, 99)[0]
    members["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(cifar10.CLASS_NAMES).encode()
    md5 = _write_archive(root / "cifar10" / cifar10.ARCHIVE, members)
    patch = pytest.MonkeyPatch()
    patch.setattr(cifar10, "ARCHIVE_MD5", md5)
    patch.delenv("ZOO_CIFAR10_MIRROR", raising=False)
    patch.setenv("ZOO_DATA_DIR", str(root))
    yield root
    patch.undo()


SMALL_MODEL = ["model.channels=6", "model.n_layers=1", "model.kernel_size=3", "model.n_components=2"]


@pytest.fixture(scope="module")
def small_case(cifar_dir):
    from zoo_core.api import default_zoo
    from zoo_core.testing import case_from_config

    zoo = default_zoo()
    return case_from_config(zoo, zoo.resolve(ENTRY, SMALL_MODEL), batch=16)


def test_conformance_kit_passes_for_a_colour_pixelcnn(small_case):
    """Every check of zoo_core.testing on the entry's Gated PixelCNN (made small) over 32x32x3 images."""
    from zoo_core.testing import run_all

    assert tuple(small_case.data.shape) == (16, 3, 32, 32)
    report = run_all(small_case)
    failed = {k: v for k, v in report.items() if v != "passed" and not v.startswith("skipped")}
    assert not failed, failed
    assert report["loss_drops"] == "passed" and report["checkpoint_round_trip"] == "passed"


def test_cifar10_entry_builds_and_trains_a_few_steps(cifar_dir):
    """The entry as written (128 channels, 15 gated layers) builds on the CIFAR-10 spec and takes
    two Adam steps on synthetic images; then the whole runner trains and evaluates a small version."""
    from zoo_core.api import default_zoo, train
    from zoo_core.runner import build_datamodule, build_model

    zoo = default_zoo()
    config = zoo.resolve(ENTRY)
    datamodule = build_datamodule(zoo, config)
    torch.manual_seed(0)
    model = build_model(zoo, config, datamodule)
    assert model.architecture == "gated_pixelcnn" and model.net.colours == 3 and len(model.net.layers) == 16
    x = datamodule.eval_data("train")[:2]  # (2, 3, 32, 32)
    model.init_from_data(datamodule.eval_data("train"))
    opt = torch.optim.Adam(model.parameters(), lr=float(config["optim"]["lr"]))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        opt.zero_grad()
        loss = model.loss(x)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    run = train(ENTRY, max_steps=3, runs_dir=str(cifar_dir / "runs"),
                overrides=SMALL_MODEL + ["eval.metrics=[nll]", "eval.num_samples=2", "train.batch_size=8"])
    test = run.metrics["test"]
    assert run.metrics["steps"] == 3 and test["num_examples"] == 7
    # uniformly random bytes: no model beats 8 bits/dim in expectation, a barely trained one is near it
    assert 7.0 < test["bits_per_dim"] < 20.0, test
