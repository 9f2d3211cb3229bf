"""Conditional flow matching with the optimal-transport (linear) path; likelihood through the ODE.

References
----------
- Y. Lipman, R. T. Q. Chen, H. Ben-Hamu, M. Nickel and M. Le, "Flow Matching for Generative
  Modeling", ICLR 2023 (arXiv:2210.02747).
- X. Liu, C. Gong and Q. Liu, "Flow Straight and Fast: Learning to Generate and Transfer Data
  with Rectified Flow", ICLR 2023 (arXiv:2209.03003).
- R. T. Q. Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018, and W. Grathwohl
  et al., "FFJORD", ICLR 2019, for the likelihood (see ``zoo_core.ode``).

Time runs from noise (t = 0) to data (t = 1). With x_0 ~ N(0, I), x_1 a data point (in model
space, below) and t ~ U[0, 1], the path and its velocity are

    x_t = (1 - t) x_0 + t x_1,        u_t = x_1 - x_0,

and training minimises the conditional flow-matching loss E ||v_theta(x_t, t) - (x_1 - x_0)||^2
(a mean over dimensions and batch), whose minimiser is the marginal velocity E[x_1 - x_0 | x_t].
The model is the ODE dx/dt = v_theta(x, t) started at x(0) ~ N(0, I); a sample is x(1).

Likelihood: the model is a continuous normalizing flow, so (Chen et al. 2018)

    log p_1(x) = log N(x(0); 0, I) + int_1^0 tr(dv_theta/dx(x(t), t)) dt,

integrating x from t = 1 back to t = 0. The trace is exact (``trace: exact``; ``auto`` picks it up
to 2 dimensions) or Hutchinson's estimate with K probes (``auto`` above 2 dimensions; FFJORD):
then ``log_prob`` is one draw of an unbiased estimate of log p (not of p), and
``likelihood_description`` says so and names K. The family's likelihood kind stays ``exact``:
the estimate is not a bound, and its mean over a test set converges to the exact NLL, with the
probe noise included in the reported standard error.

Model space: continuous data are modelled as they are. Dequantized pixels x in [0, 1) are mapped
to y = 2x - 1, and log p(x) = log p(y) + D log 2 is a density on R^D whose mass on [0, 1)^D is at
most 1, so the discrete NLL the runner reports (adding -D log L) is an upper bound. Samples are
the exact ODE outputs mapped back (a few pixels may fall slightly outside [0, 1]; pictures clip).
Binarized data are refused (a density model of continuous values).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor

from zoo_core.errors import ConfigError
from zoo_core.model import GenerativeModel, as_sample_shape
from zoo_core.nn import ACTIVATIONS, ema_update
from zoo_core.ode import LikelihoodSettings, LogDensityEstimate, Solver, odeint, standard_normal_log_prob

from .nets import VelocityConvNet, VelocityMLP

NETWORKS = ("auto", "mlp", "conv")


class FlowMatching(GenerativeModel):
    """Flow matching (Lipman et al. 2023) on the linear path (rectified flow, Liu et al. 2023).

    Args:
        data, optim: see :class:`GenerativeModel`.
        network: ``mlp`` (on flattened data), ``conv`` (images only) or ``auto`` (conv for images).
        hidden, activation, time_embed_dim: the MLP's widths, activation and time-feature width.
        channels, dilations: the conv net's width and one residual block per dilation.
        sampler: ``dopri5`` (adaptive, ``sample_rtol``/``sample_atol``) or ``euler``, ``midpoint``,
            ``rk4`` with ``sample_steps`` fixed steps.
        trace: ``auto``, ``exact`` or ``hutchinson``; probes, probe_noise: Hutchinson's K and noise.
        ode_method, ode_rtol, ode_atol, ode_steps: the solver of the likelihood ODE.
        (The registry's ``eval.ode_*`` keys override these likelihood settings at evaluation.)
        val_likelihood: also log ``val/nll`` (an ODE solve per validation batch) during training.
        ema_decay: EMA decay of the velocity network's weights (None or 0: no EMA). The EMA network
            is the model (``log_prob`` and ``sample`` use it; ``loss`` trains the raw one), with decay
            min(ema_decay, (1 + n)/(10 + n)) after n updates, as in the diffusion family.
    """

    family = "flow_matching"
    likelihood = "exact"
    #: the conformance kit integrates exp(log_prob) on a coarser grid: each point is an ODE solve
    conformance_grid_points = 100
    representations = ("dequantized", "continuous")
    event_ranks = (1, 3)

    def __init__(
        self,
        data: dict,
        optim: dict | None = None,
        network: str = "auto",
        hidden: Sequence[int] = (256, 256, 256),
        activation: str = "silu",
        time_embed_dim: int = 32,
        channels: int = 64,
        dilations: Sequence[int] = (1, 2, 1, 2),
        sampler: str = "dopri5",
        sample_steps: int = 50,
        sample_rtol: float = 1e-5,
        sample_atol: float = 1e-5,
        trace: str = "auto",
        probes: int = 2,
        probe_noise: str = "rademacher",
        ode_method: str = "dopri5",
        ode_rtol: float = 1e-5,
        ode_atol: float = 1e-5,
        ode_steps: int = 100,
        val_likelihood: bool = False,
        ema_decay: float | None = None,
    ):
        # plain Python types: save_hyperparameters (in the base class) captures these locals
        network, activation, sampler = str(network), str(activation), str(sampler)
        hidden, dilations = [int(h) for h in hidden], [int(d) for d in dilations]
        time_embed_dim, channels, sample_steps = int(time_embed_dim), int(channels), int(sample_steps)
        sample_rtol, sample_atol = float(sample_rtol), float(sample_atol)
        trace, probes, probe_noise = str(trace), int(probes), str(probe_noise)
        ode_method, ode_rtol, ode_atol, ode_steps = str(ode_method), float(ode_rtol), float(ode_atol), int(ode_steps)
        val_likelihood = bool(val_likelihood)
        ema_decay = None if ema_decay is None else float(ema_decay)
        super().__init__(data, optim)
        spec = self.data_spec
        if spec.representation == "binarized":
            raise ValueError("flow_matching: binarized (discrete) pixels have no density for an ODE flow; "
                              "use data: {representation: dequantized}")
        if network not in NETWORKS:
            raise ValueError(f"flow_matching: network must be one of {list(NETWORKS)}, got {network!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"flow_matching: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not hidden or min(hidden) < 1 or channels < 1 or not dilations or min(dilations) < 1 or time_embed_dim < 2:
            raise ValueError("flow_matching: hidden, channels, dilations (non-empty) and time_embed_dim (>= 2) "
                              "must be positive")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"flow_matching: ema_decay must be in [0, 1) or null, got {ema_decay}")
        self.network = ("conv" if spec.is_image else "mlp") if network == "auto" else network
        if self.network == "conv" and not spec.is_image:
            raise ValueError(f"flow_matching: network 'conv' needs images, got data of shape {spec.event_shape}")
        self.sample_solver = Solver(sampler, sample_steps, sample_rtol, sample_atol)
        self.ode = LikelihoodSettings.build(trace, probes, probe_noise, ode_method, ode_rtol, ode_atol, ode_steps)
        self.val_likelihood = val_likelihood
        self.dims = spec.dims
        self.dequantized = spec.representation == "dequantized"
        if self.network == "conv":
            self.net = VelocityConvNet(spec.event_shape[0], channels, dilations, time_embed_dim)
        else:
            self.net = VelocityMLP(self.dims, hidden, activation, time_embed_dim)
        self.ema_decay = ema_decay or None
        self.ema_net = None
        if self.ema_decay is not None:
            self.ema_net = copy.deepcopy(self.net)
            self.ema_net.requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    # ---- spaces --------------------------------------------------------------------------------------
    def to_model_space(self, x: Tensor) -> tuple[Tensor, float]:
        """(N, *event) data -> model space and log|dy/dx| (a constant): y = 2x - 1 for pixels."""
        x = x.to(self.dtype)
        return (2 * x - 1, self.dims * math.log(2.0)) if self.dequantized else (x, 0.0)

    def to_data(self, y: Tensor) -> Tensor:
        return (y + 1) / 2 if self.dequantized else y

    def velocity(self, t: Tensor, y: Tensor, net: torch.nn.Module | None = None) -> Tensor:
        """v_theta(y, t) of the model (the EMA network where there is one): t (N,), y (N, *event) -> (N, *event)."""
        net = net if net is not None else (self.ema_net if self.ema_net is not None else self.net)
        if self.network == "mlp":
            return net(y.reshape(len(y), -1), t).reshape(y.shape)
        return net(y, t)

    # ---- training ------------------------------------------------------------------------------------
    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The conditional flow-matching loss on the linear path."""
        self.validate_sample(x)
        x1, _ = self.to_model_space(x.reshape(-1, *self.event_shape))  # (N, *event) data
        x0 = torch.randn_like(x1)  # (N, *event) noise
        t = torch.rand(len(x1), device=x1.device, dtype=x1.dtype)  # (N,)
        tb = t.reshape(-1, *([1] * (x1.dim() - 1)))
        xt = (1 - tb) * x0 + tb * x1
        return ((self.velocity(t, xt, self.net) - (x1 - x0)) ** 2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema_net is None:
            return
        self.ema_updates += 1
        ema_update(self.ema_net, self.net, int(self.ema_updates), self.ema_decay)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = self.split_batch(batch)
        self.log("val/loss", self.loss(x), on_epoch=True, sync_dist=True, batch_size=len(x))
        if self.val_likelihood:
            nll = -(self.log_prob(x) + self.data_spec.log_prob_offset).mean()
            self.log("val/nll", nll, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=len(x))

    # ---- likelihood ----------------------------------------------------------------------------------
    def ode_log_prob(self, x: Tensor, context: Tensor | None = None) -> LogDensityEstimate:
        """x (*batch, *event) -> log p(x) (*batch,) and the variance of its estimate (*batch,)
        (0 for the exact trace, the probes' spread / K for Hutchinson's)."""
        batch = self.validate_sample(x)
        y, log_det = self.to_model_space(x.reshape(-1, *self.event_shape))  # (N, *event)
        out = self.ode.log_density_change(self.velocity, y, 1.0, 0.0)
        value = standard_normal_log_prob(out.z) + out.integral + log_det  # (N,)
        return LogDensityEstimate(value.reshape(batch), out.variance.reshape(batch))

    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(*batch, *event_shape) -> (*batch,): the ODE log-density (exact trace or Hutchinson's estimate)."""
        return self.ode_log_prob(x).value

    def likelihood_description(self) -> str:
        kind = ("exact log-likelihood" if self.ode.trace_for(self.dims) == "exact"
                else "unbiased estimate of the exact log-likelihood")
        return f"{kind} through the ODE (instantaneous change of variables): {self.ode.describe(self.dims)}"

    def configure_evaluation(self, eval_config: dict) -> None:
        """Applies ``eval.ode_*`` (trace, probes, probe_noise, method, rtol, atol, steps) where present."""
        if eval_config.get("iw_samples") is not None:
            raise ConfigError("flow_matching: eval.iw_samples has no meaning for an ODE likelihood (it is not an "
                              "importance-weighted bound); set the model's probes and ode_rtol/ode_atol instead")
        self.ode = self.ode.updated(eval_config)

    # ---- sampling ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, n: int) -> Tensor:
        z = torch.randn(n, *self.event_shape, device=self.device, dtype=self.dtype)  # (n, *event) x(0)
        y, _ = odeint(self.velocity, z, 0.0, 1.0, self.sample_solver)
        return self.to_data(y)

    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        shape = as_sample_shape(sample_shape)
        return self._generate(math.prod(shape)).reshape(*shape, *self.event_shape)

    def sample_for_display(self, n: int) -> Tensor:
        """True samples; images clipped to [0, 1]."""
        x = self.sample((n,))
        return x.clamp(0.0, 1.0) if self.data_spec.is_image else x
