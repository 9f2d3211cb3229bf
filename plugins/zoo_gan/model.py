"""Generative adversarial networks: a generator and a discriminator trained as a two-player game.

References
----------
- I. Goodfellow, J. Pouget-Abadie, M. Mirza, B. Xu, D. Warde-Farley, S. Ozair, A. Courville and
  Y. Bengio, "Generative Adversarial Nets", NeurIPS 2014 (arXiv:1406.2661).
- A. Radford, L. Metz and S. Chintala, "Unsupervised Representation Learning with Deep
  Convolutional Generative Adversarial Networks" (DCGAN), ICLR 2016 (arXiv:1511.06434).
- T. Miyato, T. Kataoka, M. Koyama and Y. Yoshida, "Spectral Normalization for Generative
  Adversarial Networks", ICLR 2018 (arXiv:1802.05957); the hinge loss as used there (after
  Lim & Ye 2017, "Geometric GAN").
- I. Gulrajani, F. Ahmed, M. Arjovsky, V. Dumoulin and A. Courville, "Improved Training of
  Wasserstein GANs" (WGAN-GP), NeurIPS 2017 (arXiv:1704.00028).

The generator G maps noise z ~ N(0, I_L) to data; the discriminator D(x) = sigmoid(l(x)) (l a
network giving one logit per example) tells data from samples. Goodfellow et al. define the game

    min_G max_D V(D, G),  V(D, G) = E_{x~p_data}[log D(x)] + E_{z~p(z)}[log(1 - D(G(z)))].

For a fixed G the best discriminator is D*(x) = p_data(x) / (p_data(x) + p_g(x)) (maximise
a log d + b log(1 - d) pointwise), and at D* the value is

    V(D*, G) = -log 4 + 2 JSD(p_data || p_g),

so the outer minimisation over G minimises the Jensen-Shannon divergence, with minimum -log 4
at p_g = p_data. ``tests/test_gan.py`` checks both facts numerically on Gaussians.

Objectives (model parameter ``objective``; r = l(x) on data, f = l(G(z)) on samples, means over
the batch, log D = -softplus(-l) and log(1 - D) = -softplus(l) computed stably from logits):

- ``nonsaturating`` (default; Goodfellow et al., section 3): D descends
  -V = mean softplus(-r) + mean softplus(f); G descends -mean log D(G(z)) = mean softplus(-f),
  which has the same fixed point as the minimax loss but strong gradients early in training.
- ``minimax``: the same D loss; G descends V's second term, mean log(1 - D(G(z))) (the
  saturating original, kept for teaching: it learns slowly when D wins).
- ``hinge`` (Miyato et al. 2018, with spectral normalisation of every layer of D by default):
  D descends mean relu(1 - r) + mean relu(1 + f); G descends -mean f.
- ``wgan-gp`` (Gulrajani et al. 2017): the critic l descends mean f - mean r +
  lambda mean_i (||grad_x l(x_hat_i)||_2 - 1)^2 with x_hat = eps x + (1 - eps) G(z),
  eps ~ U[0, 1] per example and lambda = ``gp_weight``; G descends -mean f. Use d_steps = 5.

``loss(x)`` (the base class's val/loss) returns the *value of the game as D scores it* on a
batch, without regularisers, with fresh z (one per example):

- ``nonsaturating``/``minimax``: V(D, G) = mean log D(x) + mean log(1 - D(G(z))), in nats; it
  lies in (-inf, 0], equals -log 4 = -1.386 when D cannot tell (D = 1/2) and at the optimum.
- ``hinge``: -(mean relu(1 - r) + mean relu(1 + f)), the negated hinge loss of D (in [-inf, 0],
  -2 when D outputs 0 everywhere).
- ``wgan-gp``: mean r - mean f, the critic's estimate of the Wasserstein-1 distance (without
  the penalty).

D ascends this value; G descends it (exactly for ``minimax``; ``nonsaturating`` and
``hinge`` use the surrogates above). It is *not* a likelihood and a lower value does not mean
a better model unless D is near-optimal; a GAN has no likelihood (``log_prob`` raises).

Training (``training_step``, Lightning manual optimisation, two optimisers built from the
registry's ``optim`` settings, the discriminator's learning rate ``d_lr`` if given): every
training batch takes one discriminator step on that batch and fresh z; after every
``d_steps``-th discriminator step one generator step follows with fresh z (Goodfellow et al.,
Algorithm 1, k = d_steps). Lightning's ``global_step`` counts optimiser steps, so one batch
with d_steps = 1 advances it by 2 (``--max-steps`` counts both kinds).

Distributed data parallel: gradients are averaged across processes by DDP in each
``manual_backward``. Each backward must reach every parameter DDP wraps, so the discriminator
loss is joined to the generator's parameters by a zero-weighted term (the generator loss
reaches D's parameters through D(G(z)) anyway). Each rank draws its own slice of noise (a
different z per rank, the same stream). Buffers (BatchNorm running statistics in G, spectral
normalisation's u and v in D) are updated in forward passes on each rank's own batch, so after
every training step the floating-point buffers are averaged over ranks (BatchNorm statistics of
all ranks' batches; u and v are already identical, being functions of identical weights);
every rank ends with identical weights *and* buffers.

Class-conditional GAN (``data.conditional: true``; Miyato & Koyama 2018, "cGANs with Projection
Discriminator"): G(z, y) takes a class embedding next to z and D is the projection discriminator
l(x, y) = psi(phi(x)) + v_y^T phi(x) (see ``nets``). Every step uses the real batch's labels for
the generated samples too, so D compares p_data(x | y) with p_g(x | y) under the data's p(y);
``sample(n, context=y)`` draws from G(., y), and without a context y is drawn from the training
class frequencies. ``loss`` of a conditional GAN needs the labels.

Data representations: for ``continuous`` (2-D toys) G's output is unconstrained; for images it
goes through a sigmoid to [0, 1]. ``dequantized`` images are modelled directly (G outputs grey
levels); for ``binarized`` images G outputs pixel probabilities, D compares them with the binary
data (the usual continuous relaxation), ``sample`` returns Bernoulli draws and
``sample_for_display`` the probabilities.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from zoo_core.class_prior import ClassPrior
from zoo_core.errors import ContextError
from zoo_core.model import OPTIMIZERS, GenerativeModel, as_sample_shape

from .nets import ConvDiscriminator, ConvGenerator, MLPDiscriminator, MLPGenerator

OBJECTIVES = ("nonsaturating", "minimax", "hinge", "wgan-gp")
ARCHS = ("mlp", "conv")


# ---- the objectives, as functions of discriminator logits (each (N,)) -------------------------------
def game_value(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """V(D, G) = mean log D(x) + mean log(1 - D(G(z))) with D = sigmoid(logit); a scalar in nats."""
    return -F.softplus(-real_logits).mean() - F.softplus(fake_logits).mean()


def hinge_value(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-(mean relu(1 - l(x)) + mean relu(1 + l(G(z)))): what the hinge discriminator ascends."""
    return -(F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def wasserstein_value(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """mean l(x) - mean l(G(z)): the critic's Wasserstein-1 estimate (for a 1-Lipschitz l)."""
    return real_logits.mean() - fake_logits.mean()


VALUES = {"nonsaturating": game_value, "minimax": game_value, "hinge": hinge_value, "wgan-gp": wasserstein_value}


def generator_loss(objective: str, fake_logits: Tensor) -> Tensor:
    """The scalar G descends, from D's logits on generated samples (N,)."""
    if objective == "nonsaturating":
        return F.softplus(-fake_logits).mean()  # -mean log D(G(z))
    if objective == "minimax":
        return -F.softplus(fake_logits).mean()  # mean log(1 - D(G(z)))
    return -fake_logits.mean()  # hinge and wgan-gp


def gradient_penalty(critic, real: Tensor, fake: Tensor, eps: Tensor | None = None) -> Tensor:
    """WGAN-GP penalty mean_i (||grad_x critic(x_hat_i)||_2 - 1)^2 at x_hat = eps x + (1 - eps) x~.

    real, fake: (N, *event); eps: (N,) in [0, 1], drawn uniformly when not given. Differentiable
    with respect to the critic's parameters (create_graph=True)."""
    n = len(real)
    if eps is None:
        eps = torch.rand(n, device=real.device, dtype=real.dtype)
    eps = eps.reshape(n, *([1] * (real.dim() - 1)))
    x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)  # (N, *event)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)  # (N, *event)
    return ((grad.reshape(n, -1).norm(dim=1) - 1) ** 2).mean()


class GAN(GenerativeModel):
    """Generative adversarial network (Goodfellow et al. 2014): MLP or DCGAN nets, no likelihood.

    Objectives: non-saturating (default), minimax, hinge with spectral norm (Miyato et al. 2018),
    WGAN-GP (Gulrajani et al. 2017); see the module docstring.

    Args:
        data, optim: see :class:`GenerativeModel`; ``optim`` (name, lr, betas, weight_decay) sets
            both optimisers. ``optim.scheduler`` is not supported (constant learning rates).
        objective: one of ``nonsaturating`` (default), ``minimax``, ``hinge``, ``wgan-gp``.
        arch: ``mlp`` (any data) or ``conv`` (DCGAN-style, images with H, W divisible by 4).
        latent_dim: L, the dimension of z ~ N(0, I).
        g_hidden, d_hidden: hidden widths of the MLP generator and discriminator.
        width: base channel count of the conv nets (the generator starts from 2*width maps).
        d_steps: discriminator steps per generator step (k in Goodfellow et al.'s Algorithm 1).
        d_lr: the discriminator's learning rate; None uses ``optim.lr`` (the generator's).
        spectral_norm: spectral normalisation of every discriminator layer; None means on for
            ``hinge`` and off otherwise.
        gp_weight: lambda of the WGAN-GP gradient penalty.
    """

    family = "gan"
    likelihood = "none"
    conditional = True
    no_likelihood_alternatives = (
        "sample-quality metrics (Fréchet distance, precision/recall) and, for 2-D data, a kernel or "
        "sliced-Wasserstein distance to held-out data")

    def __init__(
        self,
        data: dict,
        optim: dict | None = None,
        objective: str = "nonsaturating",
        arch: str = "mlp",
        latent_dim: int = 8,
        g_hidden: Sequence[int] = (128, 128),
        d_hidden: Sequence[int] = (128, 128),
        width: int = 32,
        d_steps: int = 1,
        d_lr: float | None = None,
        spectral_norm: bool | None = None,
        gp_weight: float = 10.0,
    ):
        # Plain Python types, so the hyperparameters (captured from these locals by
        # save_hyperparameters in the base class) load with torch.load(weights_only=True).
        objective, arch = str(objective), str(arch)
        latent_dim, width, d_steps = int(latent_dim), int(width), int(d_steps)
        g_hidden, d_hidden = [int(h) for h in g_hidden], [int(h) for h in d_hidden]
        d_lr = None if d_lr is None else float(d_lr)
        spectral_norm = None if spectral_norm is None else bool(spectral_norm)
        gp_weight = float(gp_weight)
        super().__init__(data, optim)
        self.automatic_optimization = False
        if objective not in OBJECTIVES:
            raise ValueError(f"gan: objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        if arch not in ARCHS:
            raise ValueError(f"gan: arch must be one of {list(ARCHS)}, got {arch!r}")
        if latent_dim < 1 or width < 1 or d_steps < 1 or min([*g_hidden, *d_hidden, 1]) < 1:
            raise ValueError("gan: latent_dim, width, d_steps and hidden widths must be positive")
        if (d_lr is not None and d_lr <= 0) or gp_weight < 0:
            raise ValueError("gan: d_lr must be positive and gp_weight non-negative")
        if self.optim_config.get("scheduler") not in (None, "none"):
            raise ValueError("gan: optim.scheduler is not supported (both optimisers keep a constant learning rate)")
        spec = self.data_spec
        if arch == "conv" and not (spec.is_image and spec.event_shape[1] % 4 == 0 and spec.event_shape[2] % 4 == 0):
            raise ValueError(f"gan: arch 'conv' needs images (C, H, W) with H and W divisible by 4, "
                             f"got event shape {spec.event_shape}")
        self.objective, self.arch, self.latent_dim = objective, arch, latent_dim
        self.d_steps, self.d_lr, self.gp_weight = d_steps, d_lr, gp_weight
        self.use_spectral_norm = (objective == "hinge") if spectral_norm is None else spectral_norm
        event = tuple(self.event_shape)
        classes = int(self.num_classes) if self.is_conditional else 0
        if arch == "conv":
            self.generator = ConvGenerator(latent_dim, width, event, num_classes=classes)
            self.discriminator = ConvDiscriminator(width, event, spectral=self.use_spectral_norm, num_classes=classes)
        else:
            self.generator = MLPGenerator(latent_dim, g_hidden, event, num_classes=classes)
            self.discriminator = MLPDiscriminator(d_hidden, event, spectral=self.use_spectral_norm, num_classes=classes)
        if classes:
            self.class_prior = ClassPrior(classes)
        # Discriminator steps taken so far (a buffer: saved in checkpoints, so a resumed run keeps
        # its place in the k-to-1 schedule).
        self.register_buffer("d_step_count", torch.tensor(0, dtype=torch.long))

    # ---- building blocks ------------------------------------------------------------------------
    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """z (N, L) [, labels y (N,) for a conditional GAN] -> G(z, y) (N, *event_shape) in the data
        representation (probabilities for binarized images, grey levels in [0, 1] for dequantized
        ones, raw values for 2-D data)."""
        a = self.generator(z, self._labels(y, len(z))) if self.is_conditional else self.generator(z)
        return torch.sigmoid(a) if self.data_spec.is_image else a

    def discriminate(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Logits l(x [, y]) (N,) for x (N, *event_shape); images are mapped to [-1, 1] first."""
        x = 2 * x - 1 if self.data_spec.is_image else x
        if not self.is_conditional:
            return self.discriminator(x)
        return self.discriminator(x, self._labels(y, len(x), "discriminate"))

    def _labels(self, y: Tensor | None, n: int, what: str = "") -> Tensor | None:
        """The labels a conditional net needs: ``y`` (n,), or for the generator y ~ p(y) when None."""
        if not self.is_conditional:
            return None
        if y is None:
            if what:
                raise ContextError(f"family 'gan': the projection discriminator of a conditional GAN needs class "
                                   f"labels (context=) for its {n} inputs")
            return self.class_prior.sample(torch.Size([n])).to(self.device)
        return y.reshape(n).to(self.device)

    def noise(self, n: int) -> Tensor:
        """z ~ N(0, I): (n, L). In distributed training every rank takes its own slice of one draw
        of (world_size * n, L), so ranks (seeded alike) use different z."""
        world, rank = 1, 0
        trainer = self._trainer
        if self.training and trainer is not None and trainer.world_size > 1:
            world, rank = trainer.world_size, trainer.global_rank
        z = torch.randn(world * n, self.latent_dim, device=self.device, dtype=self.dtype)  # (world*n, L)
        return z[rank * n:(rank + 1) * n]

    def _logits(self, real: Tensor, fake: Tensor, y: Tensor | None = None,
                y_fake: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One discriminator pass over data and samples together: logits (N_real,), (N_fake,);
        labels y (N_real,) and y_fake (N_fake,) for a conditional GAN."""
        labels = None if y is None else torch.cat([y, y if y_fake is None else y_fake])
        logits = self.discriminate(torch.cat([real, fake]), labels)  # (N_real + N_fake,)
        return logits[: len(real)], logits[len(real):]

    def discriminator_loss(self, real: Tensor, fake: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(the scalar D descends, the game value) for data real (N, *event), samples fake (N, *event),
        both of labels y (N,) for a conditional GAN."""
        real_logits, fake_logits = self._logits(real, fake, y)
        value = VALUES[self.objective](real_logits, fake_logits)
        d_loss = -value
        if self.objective == "wgan-gp" and self.gp_weight > 0:
            m = min(len(real), len(fake))
            critic = (self.discriminate if y is None else
                      (lambda x_hat: self.discriminate(x_hat, y[:m])))
            d_loss = d_loss + self.gp_weight * gradient_penalty(critic, real[:m], fake[:m])
        return d_loss, value

    def _flat_batch(self, x: Tensor) -> Tensor:
        self.validate_sample(x)
        return x.reshape(-1, *self.event_shape).to(self.dtype)

    # ---- the interface --------------------------------------------------------------------------
    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The game value on a batch (see the module docstring): V(D, G) for the standard
        objectives, the negated hinge loss of D for ``hinge``, mean l(x) - mean l(G(z)) for
        ``wgan-gp``; z is drawn afresh, one per example. x: (*batch, *event_shape) -> scalar."""
        x = self._flat_batch(x)  # (N, *event)
        y = self._labels(context, len(x), "loss")  # (N,) or None
        fake = self.generate(self.noise(len(x)), y)  # (N, *event)
        real_logits, fake_logits = self._logits(x, fake, y)
        return VALUES[self.objective](real_logits, fake_logits)

    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        raise self.no_likelihood()

    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        """x = G(z [, y]), z ~ N(0, I), y the context or y ~ p(y); Bernoulli draws from G's
        probabilities for binarized images."""
        shape = as_sample_shape(sample_shape)
        n = shape.numel()
        x = self.generate(self.noise(n), None if context is None else context.reshape(n))  # (n, *event)
        if self.data_spec.is_binary:
            x = torch.bernoulli(x)
        return x.reshape(*shape, *self.event_shape)

    def sample_for_display(self, n: int) -> Tensor:
        """G(z [, y]) itself: pixel probabilities for binarized images (not Bernoulli draws); for a
        conditional GAN the labels cycle through the classes (y_i = i mod C)."""
        y = torch.arange(n, device=self.device) % self.num_classes if self.is_conditional else None
        return self.generate(self.noise(n), y)

    # ---- Lightning: two optimisers, manual optimisation ------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim_config
        name = str(cfg["name"]).lower()
        if name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {sorted(OPTIMIZERS)}, got {cfg['name']!r}")
        kwargs = {"weight_decay": float(cfg["weight_decay"])}
        if name != "sgd":
            kwargs["betas"] = tuple(float(b) for b in cfg["betas"])
        g_lr = float(cfg["lr"])
        d_lr = g_lr if self.d_lr is None else self.d_lr
        opt_d = OPTIMIZERS[name](self.discriminator.parameters(), lr=d_lr, **kwargs)
        opt_g = OPTIMIZERS[name](self.generator.parameters(), lr=g_lr, **kwargs)
        return [opt_d, opt_g]

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        opt_d, opt_g = self.optimizers()
        x, y = self.split_batch(batch)
        x = self._flat_batch(x)  # (N, *event)
        n = len(x)
        if self.is_conditional:
            y = self._labels(y, n, "training_step")  # (N,) the batch's labels, also for its samples
            self.class_prior.observe(y)

        # discriminator step: ascend the game value on this batch and fresh samples
        with torch.no_grad():
            fake = self.generate(self.noise(n), y)  # (N, *event), no graph to G
        d_loss, value = self.discriminator_loss(x, fake, y)
        self.check_finite(d_loss, "discriminator loss")
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss + self._zero_touch(self.generator))
        opt_d.step()
        self.d_step_count += 1
        self.log("train/d_loss", d_loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self.log("train/loss", value.detach(), on_step=True, on_epoch=False, batch_size=n)

        # generator step after every d_steps-th discriminator step
        if int(self.d_step_count) % self.d_steps == 0:
            fake_logits = self.discriminate(self.generate(self.noise(n), y), y)  # (N,)
            g_loss = generator_loss(self.objective, fake_logits)
            self.check_finite(g_loss, "generator loss")
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            opt_g.step()
            self.log("train/g_loss", g_loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self._sync_buffers()

    def on_train_epoch_end(self) -> None:
        if self.is_conditional:
            self.class_prior.commit()

    @staticmethod
    def _zero_touch(module: torch.nn.Module) -> Tensor:
        """0 * (one element of every parameter): gives ``module`` zero gradients, so DDP (without
        find_unused_parameters) sees every parameter used in this backward."""
        return 0.0 * sum(p.reshape(-1)[0] for p in module.parameters() if p.requires_grad)

    def _sync_buffers(self) -> None:
        """Average floating-point buffers over ranks (one all-reduce), so replicas stay identical."""
        trainer = self._trainer
        if trainer is None or trainer.world_size < 2 or not (dist.is_available() and dist.is_initialized()):
            return
        buffers = [b for b in self.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.all_reduce(flat)
        flat /= trainer.world_size
        offset = 0
        with torch.no_grad():
            for b in buffers:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()
