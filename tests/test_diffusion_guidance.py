"""Classifier-free guidance (Ho & Salimans 2022) in the diffusion family."""
import torch

import zoo_core
from zoo_diffusion.model import DDPM

SPEC = {"name": "toy", "event_shape": [2], "representation": "continuous", "num_classes": 3, "conditional": True}
SMALL = dict(network="mlp", hidden=[32, 32], timesteps=20, ema_decay=None, bound_timesteps=None)


def test_conditional_shapes_and_the_guidance_formula():
    torch.manual_seed(0)
    model = DDPM(SPEC, **SMALL)
    torch.nn.init.normal_(model.net.class_embed.weight)  # zero at init: make the classes differ
    torch.nn.init.normal_(model.net.out.weight, std=0.1)
    x = torch.randn(7, 2)
    for k in range(3):
        assert model.log_prob(x, torch.full((7,), k)).shape == (7,)
    assert model.log_prob(x).shape == (7,)  # the marginal (null-label) model
    t = torch.full((7,), 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    cond, uncond = model.eps(model.net, x, t, y), model.eps(model.net, x, t, None)
    assert not torch.allclose(cond, uncond)
    torch.testing.assert_close(model.eps(model.net, x, t, y, guidance=2.0), 3 * cond - 2 * uncond)
    assert model.sample((4,), context=1).shape == (4, 2)
    assert model.sample((2, 3), context=torch.tensor([[0, 1, 2], [2, 1, 0]])).shape == (2, 3, 2)


def test_label_dropout_trains_the_unconditional_model_too():
    torch.manual_seed(0)
    model = DDPM(SPEC, cond_drop=0.5, **SMALL)
    torch.nn.init.normal_(model.net.out.weight, std=0.1)  # zero at init (the usual start): no gradient reaches back
    x, y = torch.randn(64, 2), torch.randint(3, (64,))
    model.loss(x, y).backward()
    grad = model.net.class_embed.weight.grad  # (4, E): rows of the 3 classes and the null label
    assert (grad.abs().sum(1) > 0).all()


def test_guided_samples_follow_their_class(tmp_path):
    """Two well separated clusters, labelled: samples of class k land in cluster k, more often with
    guidance than without (guidance trades diversity for fidelity to the label)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(2, (1200,), generator=g)
    x = torch.randn(1200, 2, generator=g) * 0.3 + torch.tensor([[-3.0, 0.0], [3.0, 0.0]])[y]
    run = zoo_core.train("diffusion-moons", data=(x, y), runs_dir=str(tmp_path), max_steps=600,
                         data__conditional=True, hidden=[64, 64], timesteps=50, sample_steps=None,
                         eval__metrics=["nll"], train__check_val_every_n_epoch=100)
    model = run.model
    assert model.is_conditional
    accuracy = {}
    for w in (0.0, 3.0):
        torch.manual_seed(1)
        model.guidance_scale = w
        right = [(torch.sign(model.sample((300,), context=k)[:, 0]) == sign).float().mean()
                 for k, sign in ((0, -1), (1, 1))]
        accuracy[w] = float(sum(right) / 2)
    assert accuracy[0.0] > 0.7 and accuracy[3.0] > 0.95 and accuracy[3.0] > accuracy[0.0], accuracy
    assert run.metrics["test"]["nll_nats"] < 3.0
