"""Denoising diffusion probabilistic models, scored with their variational bound.

References
----------
- J. Ho, A. Jain and P. Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020
  (arXiv:2006.11239). Referred to as "Ho et al." below.
- A. Nichol and P. Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021
  (arXiv:2102.09672): the cosine schedule, respaced sampling and learned variances.
- J. Song, C. Meng and S. Ermon, "Denoising Diffusion Implicit Models", ICLR 2021
  (arXiv:2010.02502): the DDIM sampler.

Forward process (fixed), for t = 1..T with a schedule beta_1..beta_T, alpha_t = 1 - beta_t and
alphabar_t = prod_{s<=t} alpha_s (alphabar_0 = 1)::

    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)
    q(x_t | x_0)     = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I)
    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I),
        mu~_t   = sqrt(alphabar_{t-1}) beta_t / (1 - alphabar_t) x_0
                  + sqrt(alpha_t) (1 - alphabar_{t-1}) / (1 - alphabar_t) x_t
        beta~_t = (1 - alphabar_{t-1}) / (1 - alphabar_t) beta_t

Schedules: ``linear`` (Ho et al.: beta from 1e-4 to 0.02 for T = 1000, both ends scaled by
1000 / T for other T as in Nichol & Dhariwal, so a short chain still ends near N(0, I)) and
``cosine`` (Nichol & Dhariwal eq. 17, alphabar_t = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2),
s = 0.008, betas clipped at 0.999).

Reverse process (learned): p(x_T) = N(0, I) and, for t >= 2,
p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) with the noise parametrisation (Ho et al. eq. 11)

    mu_theta(x_t, t) = mu~_t(x_t, x0_theta),   x0_theta = (x_t - sqrt(1 - alphabar_t) eps_theta(x_t, t)) / sqrt(alphabar_t)

(equal to (x_t - beta_t / sqrt(1 - alphabar_t) eps_theta) / sqrt(alpha_t); for images x0_theta
is clipped to [-1, 1] when ``clip_denoised``, in the bound and in sampling alike, so both always
describe the same model). Fixed variances (``variance``): ``beta`` (sigma_t^2 = beta_t) or
``posterior`` (sigma_t^2 = beta~_t, with sigma_1^2 = beta~_2 since beta~_1 = 0, as in Ho et al.'s
code). The last step is the decoder p(x_0 | x_1), centred on mu_theta(x_1, 1) = x0_theta(x_1):

- 2-D (continuous) data: the Gaussian density N(x_0; x0_theta(x_1), sigma_1^2 I).
- images: Ho et al.'s discretised Gaussian (section 3.3): pixel levels k = 0..L-1 sit at
  v_k = 2k/(L-1) - 1 in [-1, 1] and P(k) = Phi((v_k + 1/(L-1) - mu)/sigma_1) - Phi((v_k - 1/(L-1) - mu)/sigma_1),
  with the outer edges at -inf and +inf. L is the data's ``num_levels`` (256 for MNIST, 17 for digits).

Learned variances (``variance: learned``, Nichol & Dhariwal section 3.1): the network outputs,
besides eps_theta, a vector v_theta(x_t, t) of the data's shape (twice the output features or
channels), and the reverse variance is diagonal, interpolated in the log domain (their eq. 15)

    Sigma_theta(x_t, t) = exp(v log beta_t + (1 - v) log beta~_t),

per dimension; beta~_1 = 0 is replaced by beta~_2 (as for ``posterior``, and in Nichol &
Dhariwal's code), so the decoder variance at t = 1 interpolates between beta_1 and beta~_2. v is
not constrained (neither is it in the paper): v outside [0, 1] extrapolates beyond the two
bounds. The output layer starts at zero, so an untrained model has v = 0, the ``posterior``
variances. All sigma_t^2 above then read Sigma_theta(x_t, t) per dimension: in the KL terms, the
decoder (Gaussian or discretised) and the ancestral sampler (whose respaced steps interpolate
between their own respaced beta and beta~, as Nichol & Dhariwal do; the final decoder draw keeps
the bound's Sigma_theta(x_1, 1)). DDIM and the probability-flow ODE use eps_theta only.

Training minimises Ho et al.'s simple loss L_simple = E_{t, x_0, eps} ||eps - eps_theta(x_t, t)||^2
with t ~ U{1..T}, eps ~ N(0, I), x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps (a mean over
pixels and batch). With learned variances the loss is the hybrid (Nichol & Dhariwal eq. 16)

    L_hybrid = L_simple + lambda L_vlb,   lambda = ``vlb_weight`` (0.001),
    L_vlb = L_0 + sum_{t=2}^T L_{t-1} ~ T L_{t-1} with the same t ~ U{1..T} and x_t as L_simple,

where L_{t-1} is the KL term below (t >= 2) or the decoder NLL L_0 (t = 1), both per dimension
(divided by D, like L_simple, as in Nichol & Dhariwal's code; in nats where their code uses bits)
and with a stop-gradient on the mean: L_vlb sees eps_theta detached, so it trains v only and
the mean is trained by L_simple alone. L_T has no parameters and is left out. (The paper's
importance sampling of t for L_vlb alone is not implemented: t is uniform.)

Likelihood (``log_prob``): the evidence lower bound, per example (Ho et al. eq. 5)::

    log p(x_0) >= ELBO = -(L_T + sum_{t=2}^T L_{t-1} + L_0),
    L_T     = KL(q(x_T | x_0) || N(0, I))                       (analytic, no network)
    L_{t-1} = E_{q(x_t|x_0)} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
            = E [ 1/2 sum_d ( log(sigma_t^2 / beta~_t) + beta~_t / sigma_t^2 - 1 + (mu~_t - mu_theta)^2 / sigma_t^2 ) ]
    L_0     = -E_{q(x_1|x_0)} log p(x_0 | x_1).

Each expectation over x_t is estimated with one draw x_t ~ q(x_t | x_0), so ``log_prob`` is one
draw of an unbiased estimator of the ELBO (like the VAE family's K=1 bound). The T-1 middle
terms cost one network call each; ``bound_timesteps`` = K chooses how they are summed:

- ``None`` (or K >= T-1): all of them (the exact sum over t);
- K < T-1: an unbiased stratified Monte-Carlo estimate: {2..T} is cut into K contiguous strata of
  sizes n_k, one t_k is drawn uniformly in each, and sum_t L_{t-1} ~ sum_k n_k L_{t_k - 1}. The
  strata are spaced geometrically (the terms are largest and change fastest at small t), so
  the first ones are single timesteps, summed exactly.

L_T and L_0 are always computed. ``likelihood_description`` says which estimate was used.
During training, ``val/nll`` uses ``val_bound_timesteps`` strata (cheap, still unbiased).

Dequantised images: the runner hands the model x = (k + u)/L in [0, 1) and adds -D log L to
``log_prob``. This model is a model of the integer levels k = floor(x L): its training input is
v_k (the dequantisation noise is dropped, as in Ho et al.) and its decoder gives P(k). The
piecewise-constant function p(x) = L^D P(floor(x L)) is a density on [0, 1)^D, and ``log_prob``
returns the ELBO on log P(k) plus D log L, a lower bound on log p(x). After the runner's
offset the reported number is therefore exactly the ELBO on the discrete log P(k): no
dequantisation gap, and bits/dim comparable with Ho et al.'s (3.70-3.75 on CIFAR-10).
Binarized data are refused: DDPM models Gaussian-corrupted continuous or many-level data;
use ``representation: dequantized``.

Sampling (``sample``): ``sampler: ancestral`` runs p(x_{t-1} | x_t) from x_T ~ N(0, I) down to
the decoder p(x_0 | x_1) (images: a discretised draw of the level k, then x = (k + u)/L, i.e. a
true draw from the density above); with learned variances each step draws with Sigma_theta. ``sample_steps`` S < T respaces the chain over S timesteps
(Nichol & Dhariwal section 4: betas recomputed from alphabar on the subsequence). ``sampler:
ddim`` uses Song et al.'s update (eq. 12) on S timesteps with noise scale ``ddim_eta``:

    x_{t'} = sqrt(alphabar_{t'}) x0_theta + sqrt(1 - alphabar_{t'} - s^2) eps_theta + s z,
    s^2 = eta^2 (1 - alphabar_{t'}) / (1 - alphabar_t) (1 - alphabar_t / alphabar_{t'}),

deterministic given x_T for eta = 0, and the ancestral sampler with ``variance: posterior`` for
eta = 1 and all T steps. DDIM's last step returns x0_theta itself (images: rounded to the nearest
level). ``log_prob`` is always the bound of the ancestral model; DDIM with eta != 1 or S < T
samples a different generative process built on the same network.

Probability-flow ODE likelihood (``ode_log_prob``), after Y. Song, J. Sohl-Dickstein, D. P. Kingma,
A. Kumar, S. Ermon and B. Poole, "Score-Based Generative Modeling through Stochastic Differential
Equations", ICLR 2021 (arXiv:2011.13456), section 4.3 and appendix D. With continuous time
s = t/T in [0, 1], the discrete chain is the variance-preserving SDE (Song et al. eq. 11)

    dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw,    x_s | x_0 ~ N(sqrt(abar(s)) x_0, (1 - abar(s)) I),
    abar(s) = exp(-int_0^s beta(u) du),

observed at s = t/T, when abar(t/T) = alphabar_t. The discrete schedule fixes log abar at those
T + 1 points; between them log abar(s) is their cubic spline interpolant (not-a-knot ends), and

    beta(s) = -d log abar(s)/ds,

continuous and piecewise quadratic, so the ODE is smooth enough for an adaptive solver (a
piecewise-constant beta, -T log(1 - beta_t) on each step, has T jumps that each force the solver
into tiny steps). For the linear schedule log alphabar_t is nearly quadratic in t and beta(s) is
nearly Song et al.'s linear beta(s) = T beta_1 + s T (beta_T - beta_1). The noise network gives the score,
grad log q_s(x) ~ -eps_theta(x, sT) / sqrt(1 - abar(s)) (the network takes the fractional
timestep sT), and the probability-flow ODE (Song et al. eq. 13), which shares the SDE's marginals,

    dx/ds = -1/2 beta(s) [x - eps_theta(x, sT) / sqrt(1 - abar(s))],

is a continuous normalizing flow from N(0, I) at s = 1 to s = s_min (``ode_t_min``, by default
1/T, the first trained timestep; eps_theta is never evaluated below it). Its exact log-density,
by the instantaneous change of variables (Chen et al. 2018; ``zoo_core.ode``),

    log p_{s_min}(x) = log N(x(1); 0, I) + int_{s_min}^1 tr(d drift/dx) ds,
    tr(d drift/dx) = -1/2 beta(s) [D - tr(d eps_theta/dx) / sqrt(1 - abar(s))],

is the density of a different model than the ancestral chain (the one whose samples are x(s_min)
of the ODE), evaluated at the data point, with the exact trace (``ode_trace: auto`` up to 2
dimensions) or Hutchinson's unbiased estimate with ``ode_probes`` probes; x0_theta is not
clipped in the ODE. Images: the ODE density p_Y over R^D is dequantised onto the levels: the
level k's cell is v_k +- 1/(L-1), x = (k + u)/L in [0, 1) maps to y = v_k + (2u - 1)/(L-1), and
log p(x) = log p_Y(y) + D log(2L/(L-1)), a density on [0, 1)^D of mass <= 1, so the runner's
discrete NLL (adding -D log L) is an upper bound on -log P(k) of that model. The ``ode_nll`` metric
reports it next to the bound (``ode_nll_nats``, ``ode_bits_per_dim``, ``ode_nll_stderr``).

EMA: with ``ema_decay`` a shadow copy of the network tracks an exponential moving average of
the trained weights (decay min(ema_decay, (1 + n)/(10 + n)) after n updates), as Ho et al. do.
The EMA network *is* the model: ``log_prob`` and ``sample`` use it; ``loss`` trains the raw one.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from zoo_core.errors import ConfigError
from zoo_core.model import GenerativeModel, as_sample_shape, gaussian_log_prob
from zoo_core.nn import ema_update
from zoo_core.ode import LikelihoodSettings, LogDensityEstimate, standard_normal_log_prob

from .nets import TimeMLP, UNet

SCHEDULES = ("linear", "cosine")
VARIANCES = ("beta", "posterior", "learned")
SAMPLERS = ("ancestral", "ddim")
NETWORKS = ("auto", "mlp", "unet")


def make_betas(schedule: str, timesteps: int) -> Tensor:
    """(T,) float64 betas for t = 1..T."""
    T = timesteps
    if schedule == "linear":
        scale = 1000.0 / T
        betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    elif schedule == "cosine":
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T  # (T+1,) t/T for t = 0..T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alphas_bar = f / f[0]
        betas = 1 - alphas_bar[1:] / alphas_bar[:-1]
    else:
        raise ValueError(f"diffusion: schedule must be one of {SCHEDULES}, got {schedule!r}")
    return betas.clamp(1e-8, 0.999)


def log_alpha_bar_spline(alphas_bar: Tensor) -> Tensor:
    """The cubic spline (not-a-knot) through log alphabar_t at s = t/T, t = 0..T: (T+1,) -> (T, 4)
    float64 coefficients per interval, log abar(s) = c0 h^3 + c1 h^2 + c2 h + c3 with h = s - t/T.
    With fewer than 3 steps, the piecewise-linear interpolant. (scipy comes with scikit-learn.)"""
    from scipy.interpolate import CubicSpline

    T = len(alphas_bar) - 1
    s = torch.arange(T + 1, dtype=torch.float64) / T
    log_ab = torch.log(alphas_bar.double())
    if T < 3:  # too few points for a not-a-knot cubic: the piecewise-linear interpolant
        slope = (log_ab[1:] - log_ab[:-1]) * T
        zeros = torch.zeros(T, dtype=torch.float64)
        return torch.stack([zeros, zeros, slope, log_ab[:-1]], -1)
    spline = CubicSpline(s.numpy(), log_ab.numpy(), bc_type="not-a-knot")
    return torch.as_tensor(spline.c.T.copy(), dtype=torch.float64)  # (T, 4)


def log_normal_cdf_diff(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b (a may be -inf, b +inf), stable in both tails: where the
    interval lies mostly above 0 it uses the mirror image Phi(-a) - Phi(-b)."""
    flip = (a + b) > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi))


class DDPM(GenerativeModel):
    """Denoising diffusion probabilistic model (Ho et al. 2020) with its ELBO as ``log_prob``.

    Args:
        data, optim: see :class:`GenerativeModel`. Binarized data is refused (use dequantized).
        network: ``mlp`` (residual MLP on the flattened data), ``unet`` (images only) or ``auto``
            (U-Net for images, MLP otherwise).
        hidden: MLP widths. channels: U-Net widths per resolution; blocks: residual blocks per level.
        time_embed_dim: width of the time embedding. dropout: in the residual blocks.
        timesteps: T, the number of diffusion steps.
        schedule: ``linear`` or ``cosine``. variance: ``beta`` (sigma_t^2 = beta_t), ``posterior``
            (beta~_t) or ``learned`` (Nichol & Dhariwal 2021: per-dimension
            exp(v log beta_t + (1 - v) log beta~_t) with v an unconstrained second network output,
            trained by the hybrid loss L_simple + vlb_weight L_vlb).
        vlb_weight: lambda of the hybrid loss with learned variances (0.001, Nichol & Dhariwal eq. 16).
        clip_denoised: clip x0_theta to [-1, 1] (default: True for images, False otherwise).
        sampler: ``ancestral`` or ``ddim``; sample_steps: S timesteps used by the sampler
            (None = all T); ddim_eta: DDIM's noise scale.
        bound_timesteps: number of the T-1 KL terms that ``log_prob`` evaluates (None = all,
            the exact sum; fewer = a stratified Monte-Carlo estimate).
        val_bound_timesteps: the same for ``val/nll`` during training.
        eval_chunk: rows (example x timestep pairs) per network call in ``log_prob``.
        ema_decay: EMA decay of the weights used by ``log_prob``/``sample`` (None or 0: no EMA).
        ode_trace, ode_probes, ode_probe_noise, ode_method, ode_rtol, ode_atol, ode_steps: how
            ``ode_log_prob`` integrates the probability-flow ODE (see ``zoo_core.ode``; the registry's
            ``eval.ode_*`` keys override them at evaluation); ode_t_min: its data end s_min in (0, 1)
            (None: 1/T).
        cond_drop, guidance: for class-conditional data (``data.conditional: true``), classifier-free
            guidance (Ho & Salimans 2022): a class embedding (plus a "null" class) is added to the
            time embedding; in training the label is replaced by the null class with probability
            ``cond_drop``, so one network learns eps(x_t, y) and the unconditional eps(x_t); sampling
            uses eps~ = (1 + w) eps(x_t, y) - w eps(x_t) with w = ``guidance`` (``zoo sample
            --guidance W`` sets it); learned variances come from the conditional branch v(x_t, y)
            alone, as in GLIDE (Nichol et al. 2022) and Dhariwal & Nichol's guided samplers. ``log_prob(x, y)`` is the bound on log p(x | y) at w = 0; without
            a label, on the marginal model eps(x_t).
    """

    family = "diffusion"
    likelihood = "bound"
    conditional = True  # class labels, through classifier-free guidance
    representations = ("continuous", "dequantized")  # Gaussian noise on real or many-level data

    def __init__(
        self,
        data: dict,
        optim: dict | None = None,
        network: str = "auto",
        hidden: Sequence[int] = (256, 256, 256),
        channels: Sequence[int] = (32, 64),
        blocks: int = 1,
        time_embed_dim: int = 128,
        dropout: float = 0.0,
        timesteps: int = 1000,
        schedule: str = "linear",
        variance: str = "beta",
        vlb_weight: float = 0.001,
        clip_denoised: bool | None = None,
        sampler: str = "ancestral",
        sample_steps: int | None = None,
        ddim_eta: float = 0.0,
        bound_timesteps: int | None = None,
        val_bound_timesteps: int | None = 8,
        eval_chunk: int = 2048,
        ema_decay: float | None = 0.999,
        ode_trace: str = "auto",
        ode_probes: int = 2,
        ode_probe_noise: str = "rademacher",
        ode_method: str = "dopri5",
        ode_rtol: float = 1e-5,
        ode_atol: float = 1e-5,
        ode_steps: int = 100,
        ode_t_min: float | None = None,
        cond_drop: float = 0.1,
        guidance: float = 0.0,
    ):
        # plain Python types: save_hyperparameters (in the base class) captures these locals
        network, schedule, variance, sampler = str(network), str(schedule), str(variance), str(sampler)
        hidden, channels = [int(h) for h in hidden], [int(c) for c in channels]
        blocks, time_embed_dim, timesteps, eval_chunk = int(blocks), int(time_embed_dim), int(timesteps), int(eval_chunk)
        dropout, ddim_eta = float(dropout), float(ddim_eta)
        clip_denoised = None if clip_denoised is None else bool(clip_denoised)
        sample_steps = None if sample_steps is None else int(sample_steps)
        bound_timesteps = None if bound_timesteps is None else int(bound_timesteps)
        val_bound_timesteps = None if val_bound_timesteps is None else int(val_bound_timesteps)
        ema_decay = None if ema_decay is None else float(ema_decay)
        ode_trace, ode_probes, ode_probe_noise, ode_method = str(ode_trace), int(ode_probes), str(ode_probe_noise), str(ode_method)
        ode_rtol, ode_atol, ode_steps = float(ode_rtol), float(ode_atol), int(ode_steps)
        ode_t_min = None if ode_t_min is None else float(ode_t_min)
        cond_drop, guidance, vlb_weight = float(cond_drop), float(guidance), float(vlb_weight)
        super().__init__(data, optim)
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"diffusion: cond_drop must be in [0, 1), got {cond_drop}")
        self.cond_drop, self.guidance_scale = cond_drop, guidance
        spec = self.data_spec
        if spec.representation == "binarized":
            raise ValueError("diffusion: binarized data is not what DDPM models (it adds Gaussian noise to "
                             "continuous or many-level data); use representation: dequantized")
        for name, value, options in (("network", network, NETWORKS), ("schedule", schedule, SCHEDULES),
                                     ("variance", variance, VARIANCES), ("sampler", sampler, SAMPLERS)):
            if value not in options:
                raise ValueError(f"diffusion: {name} must be one of {list(options)}, got {value!r}")
        if timesteps < 1:
            raise ValueError(f"diffusion: timesteps must be >= 1, got {timesteps}")
        for name, value in (("sample_steps", sample_steps), ("bound_timesteps", bound_timesteps),
                            ("val_bound_timesteps", val_bound_timesteps)):
            if value is not None and value < 1:
                raise ValueError(f"diffusion: {name} must be a positive integer or null, got {value}")
        if not hidden or min(hidden) < 1 or not channels or min(channels) < 1 or blocks < 1 or eval_chunk < 1:
            raise ValueError("diffusion: hidden, channels, blocks and eval_chunk must be positive")
        if not 0.0 <= ddim_eta <= 1.0 or not 0.0 <= dropout < 1.0:
            raise ValueError("diffusion: ddim_eta must be in [0, 1] and dropout in [0, 1)")
        if not (vlb_weight >= 0.0 and math.isfinite(vlb_weight)):
            raise ValueError(f"diffusion: vlb_weight must be a finite number >= 0, got {vlb_weight}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"diffusion: ema_decay must be in [0, 1) or null, got {ema_decay}")
        if ode_t_min is not None and not 0.0 < ode_t_min < 1.0:
            raise ValueError(f"diffusion: ode_t_min must lie in (0, 1) or be null, got {ode_t_min}")
        self.ode = LikelihoodSettings.build(ode_trace, ode_probes, ode_probe_noise, ode_method, ode_rtol, ode_atol,
                                            ode_steps)
        self.ode_t_min = 1.0 / timesteps if ode_t_min is None else ode_t_min
        if network == "unet" and not spec.is_image:
            raise ValueError(f"diffusion: network 'unet' needs images, got data of shape {spec.event_shape}")

        self.is_image = spec.representation == "dequantized"
        self.num_levels = spec.num_levels if self.is_image else None
        self.timesteps, self.schedule, self.variance = timesteps, schedule, variance
        self.learned_variance, self.vlb_weight = variance == "learned", vlb_weight
        self.clip_denoised = self.is_image if clip_denoised is None else clip_denoised
        self.sampler, self.sample_steps, self.ddim_eta = sampler, sample_steps, ddim_eta
        self.bound_timesteps, self.val_bound_timesteps, self.eval_chunk = bound_timesteps, val_bound_timesteps, eval_chunk
        self.ema_decay = ema_decay or None
        self.network = ("unet" if spec.is_image else "mlp") if network == "auto" else network

        outputs = 2 if self.learned_variance else 1  # [eps, v] with learned variances
        if self.network == "unet":
            self.net = UNet(spec.event_shape[0], channels, blocks, time_embed_dim, dropout, outputs)
        else:
            self.net = TimeMLP(spec.dims, hidden, time_embed_dim, dropout, outputs)
        if self.is_conditional:  # label embeddings, index num_classes = the null label; EMA'd with the net
            self.net.class_embed = nn.Embedding(self.num_classes + 1, time_embed_dim)
            nn.init.zeros_(self.net.class_embed.weight)
        self.ema_net = None
        if self.ema_decay is not None:
            self.ema_net = copy.deepcopy(self.net)
            self.ema_net.requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

        # ---- the schedule, float64, indexed by t = 0..T (index 0: alphabar_0 = 1, beta_0 = 0) ----
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), make_betas(schedule, timesteps)])  # (T+1,)
        alphas_bar = torch.cumprod(1 - betas, dim=0)  # (T+1,)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_bar[:-1]])  # (T+1,) alphabar_{t-1}
        post_var = torch.zeros_like(betas)
        post_var[1:] = (1 - ab_prev[1:]) / (1 - alphas_bar[1:]) * betas[1:]  # beta~_t (beta~_1 = 0)
        post_clipped = post_var.clone()
        post_clipped[1] = post_var[2] if timesteps >= 2 else betas[1]  # beta~_1 = 0: use beta~_2
        post_clipped[0] = 1.0  # unused
        # fixed sigma_t^2; with learned variances the v = 0 end (the model uses log_var_min/max instead)
        sigma2 = betas.clone() if variance == "beta" else post_clipped.clone()
        sigma2[0] = 1.0  # unused
        buffers = {
            "betas": betas, "alphas_bar": alphas_bar, "alphas_bar_prev": ab_prev, "posterior_var": post_var,
            "sigma2": sigma2,
            # the ends of the learned log-variance, log Sigma = v log_var_max + (1 - v) log_var_min
            "log_var_max": torch.log(torch.where(betas > 0, betas, torch.ones_like(betas))),
            "log_var_min": torch.log(post_clipped),
            # mu~_t = c_x0 x_0 + c_xt x_t
            "c_x0": torch.sqrt(ab_prev) * betas / (1 - alphas_bar).clamp_min(1e-300),
            "c_xt": torch.sqrt(1 - betas) * (1 - ab_prev) / (1 - alphas_bar).clamp_min(1e-300),
            # mu~_t - mu_theta = c_eps (eps_theta - eps) without clipping (Ho et al. eq. 12)
            "c_eps": betas / (torch.sqrt(1 - betas) * torch.sqrt((1 - alphas_bar).clamp_min(1e-300))),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)
        self.register_buffer("log_ab_spline", log_alpha_bar_spline(alphas_bar), persistent=False)  # (T, 4)

    # ---- spaces -----------------------------------------------------------------------------------
    def to_model_space(self, x: Tensor) -> Tensor:
        """Data -> the space the diffusion runs in: continuous data as is; dequantised images
        x in [0, 1) -> level values v_k = 2k/(L-1) - 1 in [-1, 1] with k = floor(x L)."""
        x = x.to(self.dtype)
        if not self.is_image:
            return x
        L = self.num_levels
        k = torch.floor(x * L).clamp(0, L - 1)
        return 2 * k / (L - 1) - 1

    def levels_to_data(self, v: Tensor) -> Tensor:
        """Model-space values -> dequantised data: nearest level k, then x = (k + u)/L, u ~ U[0, 1)."""
        L = self.num_levels
        k = torch.round((v + 1) * (L - 1) / 2).clamp(0, L - 1)
        return (k + torch.rand_like(k)) / L

    @property
    def denoiser(self) -> nn.Module:
        """The network of the model (the EMA copy when there is one)."""
        return self.ema_net if self.ema_net is not None else self.net

    def _coef(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """A schedule buffer at timesteps t (N,), shaped (N, 1, ...) to broadcast against ``like``."""
        v = getattr(self, name)[t].to(like.dtype)
        return v.reshape(-1, *([1] * (like.dim() - 1)))

    def eps(self, net: nn.Module, x_t: Tensor, t: Tensor, labels: Tensor | None = None,
            guidance: float = 0.0) -> Tensor:
        """eps_theta(x_t, t[, y]): x_t (N, *event), t (N,) timesteps in 1..T, labels (N,) or None (the
        null label of a conditional model) -> (N, *event). With ``guidance`` w != 0 and labels:
        (1 + w) eps(x_t, y) - w eps(x_t) (Ho & Salimans 2022, eq. 6)."""
        return self._guided(net, x_t, t, labels, guidance)[0]

    def predict(self, net: nn.Module, x_t: Tensor, t: Tensor, labels: Tensor | None = None,
                guidance: float = 0.0) -> tuple[Tensor, Tensor | None]:
        """(eps_theta, v_theta): eps as in :meth:`eps` (N, *event), and the learned variance's
        interpolation v (N, *event), or None with fixed variances (then eps comes from :meth:`eps`
        itself). With guidance, v is the conditional branch's v(x_t, y) (GLIDE, Nichol et al. 2022)."""
        if not self.learned_variance:
            return self.eps(net, x_t, t, labels, guidance), None
        return self._guided(net, x_t, t, labels, guidance)

    def _guided(self, net: nn.Module, x_t: Tensor, t: Tensor, labels: Tensor | None,
                guidance: float) -> tuple[Tensor, Tensor | None]:
        if not self.is_conditional:
            return self._predict(net, x_t, t, None)
        null = torch.full((len(x_t),), self.num_classes, dtype=torch.long, device=x_t.device)  # (N,)
        if labels is None:
            return self._predict(net, x_t, t, null)
        conditional, v = self._predict(net, x_t, t, labels)
        if guidance == 0.0:
            return conditional, v
        return (1 + guidance) * conditional - guidance * self._predict(net, x_t, t, null)[0], v

    def _predict(self, net: nn.Module, x_t: Tensor, t: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        n = len(x_t)
        t_in = t.to(x_t.dtype) * (1000.0 / self.timesteps)
        extra = (net.class_embed(labels),) if labels is not None else ()  # (N, E): the label's embedding
        if self.network == "mlp":
            out = net(x_t.reshape(n, -1), t_in, *extra)  # (N, outputs * D)
        else:
            out = net(x_t, t_in, *extra)  # (N, outputs * C, H, W)
        if not self.learned_variance:
            return out.reshape(x_t.shape), None
        eps, v = out.chunk(2, dim=1)  # features / channels [0, D) and [D, 2D)
        return eps.reshape(x_t.shape), v.reshape(x_t.shape)

    def log_variance(self, t: Tensor, v: Tensor | None, like: Tensor) -> Tensor:
        """log Sigma_theta(x_t, t), float64, for t (N,) in 1..T: fixed, log sigma_t^2 shaped (N, 1, ...)
        to broadcast against ``like`` (N, *event); learned (Nichol & Dhariwal eq. 15),
        v log beta_t + (1 - v) log beta~_t with v (N, *event) -> (N, *event)."""
        if v is None:
            return torch.log(self._coef("sigma2", t, like.double()))
        v = v.double()
        return v * self._coef("log_var_max", t, v) + (1 - v) * self._coef("log_var_min", t, v)

    # ---- the forward process -------------------------------------------------------------------------
    def q_mean_var(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """q(x_t | x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I): mean (N, *event), variance (N, 1..)."""
        ab = self._coef("alphas_bar", t, x0)
        return torch.sqrt(ab) * x0, 1 - ab

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        ab = self._coef("alphas_bar", t, x0)
        return torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I): mean (N, *event), variance (N, 1..)."""
        mean = self._coef("c_x0", t, x0) * x0 + self._coef("c_xt", t, x0) * x_t
        return mean, self._coef("posterior_var", t, x0)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0_theta = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t), clipped for images."""
        ab = self._coef("alphas_bar", t, x_t)
        x0 = (x_t - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)
        return x0.clamp(-1, 1) if self.clip_denoised else x0

    # ---- training ----------------------------------------------------------------------------------
    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """L_simple: mean squared error of the noise prediction at t ~ U{1..T}; a conditional model
        sees the null label instead of y with probability ``cond_drop``. With learned variances,
        L_hybrid = L_simple + vlb_weight L_vlb (see :meth:`hybrid_terms`)."""
        simple, vlb = self.hybrid_terms(x, context)
        return simple if vlb is None else simple + self.vlb_weight * vlb

    def hybrid_terms(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(L_simple, L_vlb) on one draw of t ~ U{1..T}, eps and x_t per example; L_vlb (None with fixed
        variances) is T/D times the batch mean of L_{t-1}, with eps_theta detached (Nichol & Dhariwal
        section 3.1: the mean is trained by L_simple only)."""
        self.validate_sample(x)
        x0 = self.to_model_space(x.reshape(-1, *self.event_shape))  # (N, *event)
        t = torch.randint(1, self.timesteps + 1, (len(x0),), device=x0.device)  # (N,)
        noise = torch.randn_like(x0)
        labels = None
        if context is not None:
            labels = context.reshape(-1).clone()  # (N,)
            labels[torch.rand(len(labels), device=labels.device) < self.cond_drop] = self.num_classes
        x_t = self.q_sample(x0, t, noise)
        pred, v = self.predict(self.net, x_t, t, labels)
        simple = ((pred - noise) ** 2).mean()
        if v is None:
            return simple, None
        return simple, self.vlb_estimate(x0, x_t, noise, t, pred.detach(), v).to(simple.dtype)

    def vlb_estimate(self, x0: Tensor, x_t: Tensor, noise: Tensor, t: Tensor, eps: Tensor, v: Tensor) -> Tensor:
        """T/D mean_n L_{t_n - 1}, a scalar float64 estimate of L_vlb - L_T per dimension: the decoder
        NLL L_0 where t = 1, the KL term L_{t-1} elsewhere; all inputs (N, *event) but t (N,)."""
        first = t == 1  # (N,)
        terms = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
        if first.any():
            idx = first.nonzero().squeeze(1)
            terms = terms.index_put((idx,), self.decoder_nll_given(x0[idx], x_t[idx], eps[idx], v[idx]))
        if (~first).any():
            idx = (~first).nonzero().squeeze(1)
            terms = terms.index_put((idx,), self.kl_given(x0[idx], x_t[idx], noise[idx], t[idx], eps[idx], v[idx]))
        return terms.mean() * (self.timesteps / x0[0].numel())

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema_net is None:
            return
        self.ema_updates += 1
        ema_update(self.ema_net, self.net, int(self.ema_updates), self.ema_decay)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, context = self.split_batch(batch)
        n = len(x)
        self.log("val/loss", self.loss(x, context), on_epoch=True, sync_dist=True, batch_size=n)
        nll = -(self.elbo(x, self.val_bound_timesteps, context=context) + self.data_spec.log_prob_offset).mean()
        self.log("val/nll", nll, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=n)

    # ---- the bound ------------------------------------------------------------------------------------
    def prior_kl(self, x0: Tensor) -> Tensor:
        """L_T = KL(N(sqrt(ab_T) x0, (1 - ab_T) I) || N(0, I)), (N, *event) -> (N,) float64."""
        ab = self.alphas_bar[self.timesteps]
        x0 = x0.double().reshape(len(x0), -1)
        return 0.5 * (ab * (x0**2 - 1) - torch.log1p(-ab)).sum(-1)

    def kl_terms(self, x0: Tensor, t: Tensor, net: nn.Module | None = None, labels: Tensor | None = None) -> Tensor:
        """One-draw estimates of L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t >= 2:
        x0 (N, *event), t (N,) -> (N,) float64."""
        net = net if net is not None else self.denoiser
        noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        eps, v = self.predict(net, x_t, t, labels)
        return self.kl_given(x0, x_t, noise, t, eps, v)

    def kl_given(self, x0: Tensor, x_t: Tensor, noise: Tensor, t: Tensor, eps: Tensor, v: Tensor | None) -> Tensor:
        """L_{t-1} for t (N,) >= 2 given x_t = q_sample(x0, t, noise) and the network's eps (and v),
        all (N, *event): sum_d 1/2 (log Sigma_d - log beta~_t + beta~_t / Sigma_d - 1 + (mu~_t - mu_theta)_d^2 / Sigma_d)
        -> (N,) float64."""
        if self.clip_denoised:  # mu~ - mu_theta = c_x0 (x0 - x0_theta)
            diff = self._coef("c_x0", t, x0) * (x0 - self.predict_x0(x_t, t, eps))
        else:  # the same, written through the noise (stable where alphabar_t is tiny)
            diff = self._coef("c_eps", t, x0) * (eps - noise)
        diff = diff.double()  # (N, *event)
        log_var = self.log_variance(t, v, diff)  # (N, 1, ...) or (N, *event)
        log_post = torch.log(self._coef("posterior_var", t, diff))  # (N, 1, ...)
        kl = 0.5 * (log_var - log_post + torch.exp(log_post - log_var) - 1 + diff**2 * torch.exp(-log_var))
        return kl.reshape(len(x0), -1).sum(-1)  # (N,)

    def decoder_nll(self, x0: Tensor, net: nn.Module | None = None, labels: Tensor | None = None) -> Tensor:
        """L_0 = -log p(x_0 | x_1), x_1 ~ q(x_1 | x_0): (N, *event) -> (N,) float64."""
        net = net if net is not None else self.denoiser
        t = torch.ones(len(x0), dtype=torch.long, device=x0.device)
        x1 = self.q_sample(x0, t, torch.randn_like(x0))
        eps, v = self.predict(net, x1, t, labels)
        return self.decoder_nll_given(x0, x1, eps, v)

    def decoder_nll_given(self, x0: Tensor, x1: Tensor, eps: Tensor, v: Tensor | None) -> Tensor:
        """-log p(x_0 | x_1) given the network's eps (and v) at x_1, all (N, *event) -> (N,) float64."""
        t = torch.ones(len(x0), dtype=torch.long, device=x0.device)
        mean = self.predict_x0(x1, t, eps).double()  # mu_theta(x_1, 1)
        log_var = self.log_variance(t, v, mean)  # (N, 1, ...) or (N, *event)
        if not self.is_image:
            return -gaussian_log_prob(x0.double(), mean, log_var).reshape(len(x0), -1).sum(-1)
        half = 1.0 / (self.num_levels - 1)  # half a bin in [-1, 1]
        level = x0.double()
        inv_sd = torch.exp(-0.5 * log_var)
        lo = torch.where(level < -1 + half / 2, -math.inf, (level - half - mean) * inv_sd)
        hi = torch.where(level > 1 - half / 2, math.inf, (level + half - mean) * inv_sd)
        return -log_normal_cdf_diff(lo, hi).reshape(len(x0), -1).sum(-1)

    def bound_strata(self, n: int, num_timesteps: int | None, device) -> tuple[Tensor, Tensor]:
        """Timesteps t (n, K) in 2..T and weights (n, K) for sum_{t=2}^T L_{t-1} ~ sum_k w_k L_{t_k - 1}:
        all of them with weight 1, or one uniform draw per stratum weighted by the stratum size."""
        T = self.timesteps
        if num_timesteps is None or num_timesteps >= T - 1:
            t = torch.arange(2, T + 1, device=device).expand(n, T - 1)
            return t, torch.ones(n, T - 1, dtype=torch.float64, device=device)
        edges = torch.tensor(self.strata_edges(num_timesteps), device=device)  # (K+1,)
        sizes = edges[1:] - edges[:-1]  # (K,), each >= 1
        u = torch.rand(n, len(sizes), device=device, dtype=torch.float64)
        t = edges[:-1] + torch.floor(u * sizes).long()  # (n, K)
        return t, sizes.to(torch.float64).expand(n, len(sizes))

    def strata_edges(self, K: int) -> list[int]:
        """K + 1 increasing edges from 2 to T + 1 (stratum k is edges[k] <= t < edges[k+1]), spaced
        geometrically: the terms L_{t-1} are largest and vary fastest at small t, so the first
        strata are single timesteps (summed exactly) and later ones wide."""
        T = self.timesteps
        edges = [2]
        for k in range(1, K):
            target = round(2 * ((T + 1) / 2) ** (k / K))
            edges.append(min(max(edges[-1] + 1, target), T + 1 - (K - k)))
        return edges + [T + 1]

    def elbo(self, x: Tensor, num_timesteps: int | None = None, net: nn.Module | None = None,
             context: Tensor | None = None) -> Tensor:
        """(*batch, *event_shape) -> (*batch,): one draw of the ELBO estimator (see the module doc),
        in the density of the model's representation (images: + D log L); with ``context`` (labels
        (*batch,)) the bound on log p(x | y) at guidance 0."""
        batch_shape = self.validate_sample(x)
        x0 = self.to_model_space(x.reshape(-1, *self.event_shape))  # (N, *event)
        N = len(x0)
        labels = context.reshape(-1) if context is not None else None  # (N,)
        total = -(self.prior_kl(x0) + self.decoder_nll(x0, net, labels))  # (N,) float64
        if self.timesteps >= 2 and N > 0:
            t, w = self.bound_strata(N, num_timesteps, x0.device)  # (N, K) each
            rows = torch.arange(N, device=x0.device).repeat_interleave(t.shape[1])  # (N K,)
            t, w = t.reshape(-1), w.reshape(-1)
            for start in range(0, len(rows), self.eval_chunk):
                sl = slice(start, start + self.eval_chunk)
                kl = self.kl_terms(x0[rows[sl]], t[sl], net,
                                   labels[rows[sl]] if labels is not None else None)  # (chunk,)
                total = total.index_add(0, rows[sl], -w[sl] * kl)
        if self.is_image:
            total = total + self.data_spec.dims * math.log(self.num_levels)
        return total.to(self.dtype).reshape(batch_shape)

    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(*batch, *event_shape) -> (*batch,): the ELBO with ``bound_timesteps`` KL terms."""
        return self.elbo(x, self.bound_timesteps, context=context)

    def likelihood_description(self) -> str:
        T, K = self.timesteps, self.bound_timesteps
        decoder = (f"discretised Gaussian decoder over {self.num_levels} levels: a bound on the discrete "
                   "log P(k), no dequantisation gap" if self.is_image else "Gaussian decoder density")
        if K is None or K >= T - 1:
            how = f"all T={T} terms summed"
        else:
            how = (f"unbiased Monte-Carlo estimate over {K} of the {T - 1} KL terms L_1..L_{T - 1} "
                   "(one t per geometrically spaced stratum)")
        variances = "; learned variances (Nichol & Dhariwal 2021)" if self.learned_variance else ""
        return f"ELBO (Ho et al. 2020), {how}, one draw of x_t per term; {decoder}{variances}"

    def configure_evaluation(self, eval_config: dict) -> None:
        """Applies ``eval.ode_*`` (see ``zoo_core.ode.EVAL_KEYS``) to ``ode_log_prob`` where present."""
        if eval_config.get("iw_samples") is not None:
            raise ConfigError("diffusion: eval.iw_samples has no meaning for the diffusion ELBO (it is not an "
                              "importance-weighted bound); the number of timesteps in the bound is the model "
                              "setting bound_timesteps (null = all T)")
        self.ode = self.ode.updated(eval_config)

    # ---- the probability-flow ODE (see the module docstring) ---------------------------------------------
    def vp_schedule(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """beta(s) and abar(s) of the continuous VP process at times s (N,) in [0, 1], both (N,) float64:
        log abar is the cubic spline through log alphabar_t at s = t/T, beta = -d log abar/ds."""
        T = self.timesteps
        u = s.double().clamp(0.0, 1.0) * T  # (N,) fractional timestep
        i = torch.floor(u).long().clamp(0, T - 1)  # (N,) the interval i/T <= s <= (i+1)/T
        c = self.log_ab_spline[i]  # (N, 4) coefficients in powers of (s - i/T)
        h = (u - i) / T  # (N,)
        log_ab = ((c[:, 0] * h + c[:, 1]) * h + c[:, 2]) * h + c[:, 3]
        beta = -((3 * c[:, 0] * h + 2 * c[:, 1]) * h + c[:, 2])
        return beta, torch.exp(log_ab)

    def probability_flow(self, s: Tensor, x: Tensor) -> Tensor:
        """dx/ds = -1/2 beta(s) [x - eps_theta(x, sT) / sqrt(1 - abar(s))]: s (N,), x (N, *event) -> (N, *event)."""
        beta, ab = self.vp_schedule(s)
        eps = self.eps(self.denoiser, x, s.to(x.dtype) * self.timesteps)
        beta, inv_sd = self._bcast(beta, x), self._bcast(torch.rsqrt(1 - ab), x)
        return -0.5 * beta * (x - eps * inv_sd)

    @staticmethod
    def _bcast(v: Tensor, like: Tensor) -> Tensor:
        return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def ode_space(self, x: Tensor) -> tuple[Tensor, float]:
        """Data (N, *event) -> the ODE's space and log|dy/dx|: continuous data as is; pixels
        x = (k + u)/L -> y = v_k + (2u - 1)/(L - 1), log|dy/dx| = D log(2L/(L-1))."""
        x = x.to(self.dtype)
        if not self.is_image:
            return x, 0.0
        L = self.num_levels
        k = torch.floor(x * L).clamp(0, L - 1)
        u = x * L - k
        return 2 * k / (L - 1) - 1 + (2 * u - 1) / (L - 1), self.data_spec.dims * math.log(2 * L / (L - 1))

    def ode_log_prob(self, x: Tensor, context: Tensor | None = None) -> LogDensityEstimate:
        """x (*batch, *event) -> log p(x) of the probability-flow ODE model (*batch,) and the variance of
        its estimate (*batch,): 0 for the exact trace, the probes' spread / K for Hutchinson's."""
        batch = self.validate_sample(x)
        y, log_det = self.ode_space(x.reshape(-1, *self.event_shape))  # (N, *event)
        out = self.ode.log_density_change(self.probability_flow, y, self.ode_t_min, 1.0)
        value = standard_normal_log_prob(out.z) + out.integral + log_det  # (N,)
        return LogDensityEstimate(value.to(self.dtype).reshape(batch), out.variance.reshape(batch))

    def ode_likelihood_description(self) -> str:
        dims = self.data_spec.dims
        kind = "exact" if self.ode.trace_for(dims) == "exact" else "unbiased estimate of the exact"
        return (f"{kind} log-likelihood of the probability-flow ODE (Song et al. 2021) from s=1 to "
                f"s_min={self.ode_t_min:g}: {self.ode.describe(dims)}")

    # ---- sampling ---------------------------------------------------------------------------------------
    def sampling_timesteps(self, steps: int | None) -> list[int]:
        """The decreasing timesteps the sampler visits: T..1, or S of them evenly spaced (T and 1 included)."""
        T = self.timesteps
        if steps is None or steps >= T:
            return list(range(T, 0, -1))
        taus = torch.linspace(1, T, max(steps, 1), dtype=torch.float64).round().long().unique().tolist()
        return sorted(set(taus) | {T}, reverse=True)

    @torch.no_grad()
    def denoise(self, x_T: Tensor, sampler: str | None = None, steps: int | None = -1,
                eta: float | None = None, labels: Tensor | None = None, guidance: float | None = None,
                decoder_log_var: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Run the reverse process from x_T (N, *event) to x0_theta(x_1), the mean of the decoder
        p(x_0 | x_1) (for DDIM: its final prediction). Noise comes from torch's global generator,
        drawn only at steps that add noise (none at all for DDIM with eta = 0). With
        ``decoder_log_var``, also the decoder's log-variance at x_1 (float64, (N, *event) or broadcastable)."""
        sampler = sampler or self.sampler
        steps = self.sample_steps if steps == -1 else steps
        eta = self.ddim_eta if eta is None else eta
        net, x = self.denoiser, x_T
        taus = self.sampling_timesteps(steps)
        for i, t_int in enumerate(taus):
            prev = taus[i + 1] if i + 1 < len(taus) else 0
            t = torch.full((len(x),), t_int, dtype=torch.long, device=x.device)
            eps, v = self.predict(net, x, t, labels, self.guidance_scale if guidance is None else guidance)
            ab_t, ab_p = self.alphas_bar[t_int], self.alphas_bar[prev]
            x0 = self.predict_x0(x, t, eps)
            if self.clip_denoised:  # the noise that is consistent with the clipped x0
                eps = (x - torch.sqrt(ab_t).to(x.dtype) * x0) / torch.sqrt(1 - ab_t).to(x.dtype)
            if prev == 0:
                return (x0, self.log_variance(t, v, x0)) if decoder_log_var else x0
            beta = 1 - ab_t / ab_p  # (respaced) beta of this step
            post = (1 - ab_p) / (1 - ab_t) * beta
            if sampler == "ancestral":
                if v is not None:  # eq. 15 between this (respaced) step's beta and beta~, per dimension
                    log_var = v.double() * torch.log(beta) + (1 - v.double()) * torch.log(post)  # (N, *event)
                    std = torch.exp(0.5 * log_var).to(x.dtype)
                    x = self.ancestral_mean(x, x0, eps, ab_t, ab_p, beta) + std * torch.randn_like(x)
                    continue
                var = beta if self.variance == "beta" else post
                mean = self.ancestral_mean(x, x0, eps, ab_t, ab_p, beta)
            elif sampler == "ddim":
                var = eta**2 * post
                mean = torch.sqrt(ab_p).to(x.dtype) * x0 + torch.sqrt((1 - ab_p - var).clamp_min(0)).to(x.dtype) * eps
            else:
                raise ValueError(f"diffusion: sampler must be one of {SAMPLERS}, got {sampler!r}")
            x = mean + torch.sqrt(var).to(x.dtype) * torch.randn_like(x) if float(var) > 0 else mean
        return x  # pragma: no cover - the loop always returns at t = 1

    def ancestral_mean(self, x: Tensor, x0: Tensor, eps: Tensor, ab_t: Tensor, ab_p: Tensor, beta: Tensor) -> Tensor:
        """mu_theta of one (respaced) ancestral step from alphabar_t to alphabar_prev: x, x0, eps (N, *event)."""
        if self.clip_denoised:
            return (torch.sqrt(ab_p) * beta / (1 - ab_t)).to(x.dtype) * x0 + \
                (torch.sqrt(1 - beta) * (1 - ab_p) / (1 - ab_t)).to(x.dtype) * x
        return (x - (beta / torch.sqrt(1 - ab_t)).to(x.dtype) * eps) / torch.sqrt(1 - beta).to(x.dtype)

    @torch.no_grad()
    def _generate(self, n: int, labels: Tensor | None = None, decoder_log_var: bool = False):
        x_T = torch.randn(n, *self.event_shape, device=self.device, dtype=self.dtype)
        return self.denoise(x_T, labels=labels, decoder_log_var=decoder_log_var)

    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        """Draws in the data's representation: 2-D points, or dequantised images in [0, 1)."""
        shape = as_sample_shape(sample_shape)
        n = math.prod(shape)
        with torch.no_grad():
            labels = context.reshape(n) if context is not None else None  # (n,)
            x0, log_var = self._generate(n, labels, decoder_log_var=True)  # (n, *event) decoder mean / DDIM output
            if self.sampler == "ancestral":  # the decoder draw p(x_0 | x_1)
                x0 = x0 + torch.exp(0.5 * log_var).to(x0.dtype) * torch.randn_like(x0)
            x = self.levels_to_data(x0) if self.is_image else x0
        return x.reshape(*shape, *self.event_shape)

    def sample_for_display(self, n: int) -> Tensor:
        """Images show the decoder mean x0_theta(x_1) mapped to [0, 1] (no decoder or dequantisation
        noise), the usual DDPM pictures; 2-D data get true samples."""
        if not self.is_image:
            return self.sample((n,))
        return ((self._generate(n).clamp(-1, 1) + 1) / 2).reshape(n, *self.event_shape)
