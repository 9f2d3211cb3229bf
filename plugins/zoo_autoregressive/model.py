"""Autoregressive models with an exact likelihood: MADE, PixelCNN and Gated PixelCNN.

References
----------
- M. Germain, K. Gregor, I. Murray and H. Larochelle, "MADE: Masked Autoencoder for
  Distribution Estimation", ICML 2015 (arXiv:1502.03509).
- A. van den Oord, N. Kalchbrenner and K. Kavukcuoglu, "Pixel Recurrent Neural Networks",
  ICML 2016 (arXiv:1601.06759), the PixelCNN of sections 3.4-3.5.
- A. van den Oord, N. Kalchbrenner, O. Vinyals, L. Espeholt, A. Graves and K. Kavukcuoglu,
  "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016 (arXiv:1606.05328), the
  Gated PixelCNN and its class conditioning.

All factorise the density by the chain rule along an ordering o of the D dimensions,

    p(x) = prod_{i=1}^{D} p(x_{o(i)} | x_{o(1)}, ..., x_{o(i-1)}),

and compute every conditional's parameters in ONE forward pass of a network whose weights are
masked so that the output for x_{o(i)} cannot see x_{o(j)} for j >= i. The log-likelihood is
therefore exact and costs one pass; sampling is sequential (D steps).

- ``made``: a masked MLP over the flattened data. Each unit gets a degree m(k); a hidden unit
  may see units of lower-or-equal degree of the layer below, an output unit of dimension d only
  hidden units of degree < m^0(d) (the position of d in the ordering); optional direct
  input-to-output connections with mask [m^0(d) > m^0(d')]. With ``num_masks`` = K > 1 the
  model is trained order-agnostically (one of K seeded orderings and connectivities per
  minibatch; mask 0 is the natural raster order), or with ``orderings: natural`` only
  connectivity-agnostically (every mask in raster order), and ``log_prob`` is the exact density of the
  uniform mixture of the K autoregressive models, log (1/K) sum_k p_k(x), as the paper's
  ensembles average probabilities over masks.
- ``pixelcnn``: for images in raster order; a k x k type-A masked convolution (centre
  excluded) followed by residual blocks of 3x3 type-B masked convolutions (centre included)
  and a 1x1 head. Like the paper's PixelCNN it has a "blind spot" (some pixels above-right are
  out of its receptive field); that only limits what it can model.
- ``gated_pixelcnn``: the Gated PixelCNN (``gated.py``): vertical and horizontal stacks of gated
  convolutions tanh(W_f * x) ⊙ sigmoid(W_g * x), the vertical stack feeding the horizontal one
  (shifted down a row), residual connections in the horizontal stack; no blind spot.

Colour images (C, H, W) with C > 1 (e.g. R, G, B) are ordered over pixels in raster order and
over channels within a pixel (Pixel Recurrent Neural Networks, sec. 3.4):

    p(x) = prod_{i,j} p(x_{R,i,j} | x_{<(i,j)}) p(x_{G,i,j} | x_{<(i,j)}, x_{R,i,j})
                      p(x_{B,i,j} | x_{<(i,j)}, x_{R,i,j}, x_{G,i,j}).

The feature maps of both PixelCNNs are split into C groups g(k) (R, G, B); at the current pixel
a connection from input unit k' (group g(k'), or image channel c') to unit k is kept only when

    type A (first layer):    g(k) > c'          type B (later layers, 1x1 head): g(k) >= g(k'),

and every earlier pixel is connected in full (the Gated PixelCNN masks only its horizontal
stack's connections to the current pixel; see ``gated.py``). Output channels c P .. c P + P - 1
give channel c's P conditional parameters, so the output for x_{c,i,j} sees exactly the pixels
before (i, j) and the channels < c of (i, j).

Class conditioning (``data.conditional: true`` on labelled data): p(x | y) with a learnt
per-class bias of every hidden unit and output (MADE) or of every layer's pre-activations (both
PixelCNNs; the Gated PixelCNN paper's eq. 4 with a one-hot h). Without labels a conditional model
gives the marginal under a uniform class prior: log p(x) = log (1/K) sum_y p(x | y), and samples
draw y uniformly first.

Sampling is ancestral and incremental (``incremental.py``): each hidden unit is computed once,
when the dimensions it sees have all been drawn, so the D steps cost about one network pass for
MADE and one k x k window per layer per pixel for the PixelCNNs.

Conditionals by data representation (see ``zoo_core.data.spec``):

- ``binarized``: Bernoulli, p(x_d = 1 | x_<d) = sigmoid(a_d), one logit per dimension.
- ``continuous`` / ``dequantized``: a mixture of ``n_components`` Gaussians per dimension,
  p(x_d | x_<d) = sum_c pi_c N(x_d; mu_c, s_c^2), with 3 n_components outputs (mixture logits,
  means, log-scales squashed smoothly into [LOG_SCALE_MIN, LOG_SCALE_MAX]). On the 2-D toys
  the first conditional has no inputs at all (a plain mixture for x_1) and the second is a
  mixture whose parameters are a network of x_1. For dequantized images the density lives on
  R^D, so the little mass it puts outside [0, 1]^D only loosens the reported bound.

Inputs are fed to the networks as 2x - 1 for images (so zero padding differs from every pixel
value) and unchanged for real-valued data.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo_core.errors import ConfigError
from zoo_core.model import GenerativeModel, as_sample_shape

from .gated import GatedPixelCNNNet
from .incremental import incremental_sampler
from .nets import MADENet, PixelCNNNet

ARCHITECTURES = ("made", "pixelcnn", "gated_pixelcnn")
IMAGE_ARCHITECTURES = ("pixelcnn", "gated_pixelcnn")
ORDERINGS = ("random", "natural")  # what MADE's masks 1.. vary besides the hidden connectivity
LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 3.0
# raw = 0 maps to log-scale 0 (unit scale): sigmoid(raw + _SCALE_SHIFT) = -MIN / (MAX - MIN)
_SCALE_SHIFT = math.log(-LOG_SCALE_MIN / LOG_SCALE_MAX)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Autoregressive(GenerativeModel):
    """MADE (Germain et al. 2015), PixelCNN or Gated PixelCNN (van den Oord et al. 2016): an
    exact likelihood by the chain rule, one masked network pass per evaluation, D incremental
    steps per sample; optionally conditioned on a class label.

    Args:
        data, optim: see :class:`GenerativeModel`.
        architecture: ``made`` (any data), ``pixelcnn`` or ``gated_pixelcnn`` (images, one or more channels).
        hidden: MADE's hidden layer widths.
        num_masks: MADE's number of orderings/connectivities (1 = the natural order only).
        orderings: what MADE's masks 1.. vary: ``random`` (order- and connectivity-agnostic training)
            or ``natural`` (the natural order in every mask; connectivity-agnostic training only).
        direct: MADE's direct input-to-output masked connections.
        mask_seed: seed of MADE's hidden degrees and orderings (masks are rebuilt from it).
        channels: the PixelCNNs' feature maps (at least the image's channels: split into colour groups).
        n_layers: the PixelCNNs' 3x3 layers (residual blocks of type-B convolutions, or gated layers).
        kernel_size: the PixelCNNs' first kernel size, odd (>= 3 for the gated one).
        n_components: Gaussians per conditional for real-valued data (ignored for binarized data).
    """

    family = "autoregressive"
    likelihood = "exact"
    conditional = True

    def __init__(
        self,
        data: dict,
        optim: dict | None = None,
        architecture: str = "made",
        hidden: Sequence[int] = (500,),
        num_masks: int = 1,
        orderings: str = "random",
        direct: bool = True,
        mask_seed: int = 0,
        channels: int = 64,
        n_layers: int = 4,
        kernel_size: int = 7,
        n_components: int = 10,
    ):
        # Plain Python types, so the hyperparameters load with torch.load(weights_only=True).
        architecture, direct, orderings = str(architecture), bool(direct), str(orderings)
        hidden = [int(h) for h in hidden]
        num_masks, mask_seed, channels = int(num_masks), int(mask_seed), int(channels)
        n_layers, kernel_size, n_components = int(n_layers), int(kernel_size), int(n_components)
        super().__init__(data, optim)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"autoregressive: architecture must be one of {list(ARCHITECTURES)}, got {architecture!r}")
        if self.is_conditional and self.data_spec.context_shape:
            raise ConfigError(f"autoregressive: conditions on class labels only, got a context of shape "
                              f"{tuple(self.data_spec.context_shape)}")
        if orderings not in ORDERINGS:
            raise ConfigError(f"autoregressive: model.orderings must be one of {', '.join(ORDERINGS)}, got {orderings!r}")
        classes = self.num_classes if self.is_conditional else None
        if num_masks < 1 or n_components < 1 or channels < 1 or n_layers < 0 or any(h < 1 for h in hidden):
            raise ValueError("autoregressive: num_masks, n_components, channels and hidden widths must be positive")
        self.architecture = architecture
        self.binary = self.data_spec.is_binary
        self.n_components = n_components
        self.P = 1 if self.binary else 3 * n_components  # conditional parameters per dimension
        self.D = self.data_spec.dims
        if architecture == "made":
            self.num_masks = num_masks
            self.net = MADENet(self.D, hidden, self.P, num_masks, mask_seed, direct, classes,
                               random_orders=orderings == "random")
        else:
            if not self.data_spec.is_image:
                raise ValueError(
                    f"autoregressive: architecture '{architecture}' needs images (C, H, W), "
                    f"got event shape {tuple(self.event_shape)}; use architecture 'made'")
            colours = self.event_shape[0]
            if channels < colours:
                raise ConfigError(f"autoregressive: channels must be at least the image's {colours} channels "
                                 f"(one group of feature maps per colour), got {channels}")
            smallest = 3 if architecture == "gated_pixelcnn" else 1
            if kernel_size < smallest or kernel_size % 2 != 1:
                raise ValueError(f"autoregressive: kernel_size must be odd and >= {smallest} for '{architecture}', "
                                 f"got {kernel_size}")
            self.num_masks = 1
            net = PixelCNNNet if architecture == "pixelcnn" else GatedPixelCNNNet
            self.net = net(channels, n_layers, kernel_size, self.P, classes, colours)

    # ---- the networks ---------------------------------------------------------------------------
    def net_input(self, x: Tensor) -> Tensor:
        """Images as 2x - 1 (zero padding then differs from every pixel), real data unchanged."""
        return 2 * x - 1 if self.data_spec.is_image else x

    def conditionals(self, x: Tensor, k: int = 0, y: Tensor | None = None) -> Tensor:
        """x (N, *event_shape), labels y (N,) or None -> (N, D, P): parameters of
        p(x_d | x before d[, y]), d in raster order of the flattened event; for MADE under mask k
        (the ordering ``order(k)``)."""
        N = len(x)
        inp = self.net_input(x.to(self.dtype))
        if self.architecture == "made":
            return self.net(inp.reshape(N, self.D), k, y)  # (N, D, P)
        G = self.event_shape[0]
        out = self.net(inp, y)  # (N, G P, H, W)
        out = out.reshape(N, G, self.P, self.D // G).transpose(2, 3)  # (N, G, H W, P)
        return out.reshape(N, self.D, self.P)  # (N, D, P), D flattened as (c, i, j)

    def order(self, k: int = 0) -> Tensor:
        """(D,) position 1..D of each (flattened) dimension in the ordering of mask k; for the
        PixelCNNs, dimension (c, i, j) of a (C, H, W) image comes at position (i W + j) C + c + 1
        (pixels in raster order, channels in order within a pixel)."""
        if self.architecture == "made":
            return self.net.order(k)
        G = self.event_shape[0]
        pixel = torch.arange(self.D // G)  # (H W,) raster index
        return (pixel[None, :] * G + torch.arange(G)[:, None]).reshape(-1) + 1  # (D,)

    # ---- conditionals ---------------------------------------------------------------------------
    def _mixture(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., 3C) -> log-weights, means, log-scales, each (..., C)."""
        logits, means, raw = params.split(self.n_components, dim=-1)
        log_scale = LOG_SCALE_MIN + (LOG_SCALE_MAX - LOG_SCALE_MIN) * torch.sigmoid(raw + _SCALE_SHIFT)
        return F.log_softmax(logits, dim=-1), means, log_scale

    def dim_log_prob(self, x_flat: Tensor, params: Tensor) -> Tensor:
        """log p(x_d | x_<d): x (N, D), params (N, D, P) -> (N, D)."""
        if self.binary:
            return -F.binary_cross_entropy_with_logits(params[..., 0], x_flat, reduction="none")
        log_w, means, log_scale = self._mixture(params)  # (N, D, C) each
        z = (x_flat[..., None] - means) * torch.exp(-log_scale)  # (N, D, C)
        return torch.logsumexp(log_w - 0.5 * z**2 - log_scale - LOG_SQRT_2PI, dim=-1)  # (N, D)

    def dim_sample(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """One draw per row from the conditionals with params (N, P) -> draws (N,), means (N,)."""
        if self.binary:
            p = torch.sigmoid(params[:, 0])  # (N,)
            return torch.bernoulli(p), p
        log_w, means, log_scale = self._mixture(params)  # (N, C) each
        w = log_w.exp()
        c = torch.multinomial(w, 1)  # (N, 1) component per row
        mean, scale = means.gather(1, c)[:, 0], log_scale.gather(1, c)[:, 0].exp()  # (N,)
        return mean + scale * torch.randn_like(mean), (w * means).sum(-1)

    # ---- the interface --------------------------------------------------------------------------
    def _flat(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        batch_shape = self.validate_sample(x)
        return x.reshape(-1, *self.event_shape).to(self.dtype), batch_shape  # (N, *event)

    def log_prob_mask(self, x: Tensor, k: int = 0, y: Tensor | None = None) -> Tensor:
        """log p_k(x [| y]) under mask k: x (N, *event_shape), labels y (N,) or None -> (N,)."""
        params = self.conditionals(x, k, y)  # (N, D, P)
        return self.dim_log_prob(x.reshape(len(x), self.D), params).sum(-1)  # (N,)

    def log_prob_given(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x [| y]): x (N, *event_shape) -> (N,); for K masks, of the uniform mixture
        over the K orderings."""
        if self.num_masks == 1:
            return self.log_prob_mask(x, 0, y)
        per_mask = torch.stack([self.log_prob_mask(x, k, y) for k in range(self.num_masks)])  # (K, N)
        return torch.logsumexp(per_mask, dim=0) - math.log(self.num_masks)

    def _log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(*batch, *event_shape) -> (*batch,) exact log-likelihood in nats: log p(x | y) given
        labels, otherwise (for a conditional model) log (1/K) sum_y p(x | y)."""
        x, batch_shape = self._flat(x)
        if context is not None:
            return self.log_prob_given(x, context.reshape(-1)).reshape(batch_shape)
        if not self.is_conditional:
            return self.log_prob_given(x).reshape(batch_shape)
        K = self.num_classes
        per_class = torch.stack([self.log_prob_given(x, torch.full((len(x),), c, dtype=torch.long, device=x.device))
                                 for c in range(K)])  # (K, N)
        return (torch.logsumexp(per_class, dim=0) - math.log(K)).reshape(batch_shape)

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean NLL (given the labels for a conditional model); order-agnostic MADE draws one of
        its K masks per minibatch (the paper's training procedure, an upper bound on the NLL of
        the mixture that log_prob reports)."""
        x, _ = self._flat(x)
        y = context.reshape(-1) if context is not None else None
        k = int(torch.randint(self.num_masks, ())) if self.num_masks > 1 else 0
        return -self.log_prob_mask(x, k, y).mean()

    def _sample(self, sample_shape: torch.Size, context: Tensor | None = None) -> Tensor:
        """Ancestral sampling, one dimension at a time in the model's ordering; with K masks each
        sample first draws its mask uniformly; a conditional model without labels draws them
        uniformly first."""
        shape = as_sample_shape(sample_shape)
        y = context.reshape(-1) if context is not None else None
        return self._draw(math.prod(shape), y)[0].reshape(*shape, *self.event_shape)

    def _draw(self, n: int, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """n samples (n, *event) and the conditional means E[x_d | x_<d] met on the way (n, *event);
        labels y (n,) for a conditional model (drawn uniformly when None). Runs under
        inference_mode; the results are ordinary tensors."""
        with torch.inference_mode():
            x, means = self._draw_inference(n, y)
        return x.clone(), means.clone()

    def _draw_inference(self, n: int, y: Tensor | None) -> tuple[Tensor, Tensor]:
        x = torch.zeros(n, *self.event_shape, device=self.device, dtype=self.dtype)  # (n, *event)
        means = torch.zeros_like(x)
        if n == 0:
            return x, means
        if self.is_conditional and y is None:
            y = torch.randint(self.num_classes, (n,)).to(self.device)  # (n,) uniform class prior
        ks = torch.randint(self.num_masks, (n,)) if self.num_masks > 1 else torch.zeros(n, dtype=torch.long)  # (n,)
        for k in range(self.num_masks):
            rows = (ks == k).nonzero()[:, 0].to(x.device)
            if len(rows) == n:
                return self._sample_mask(x, k, y)
            if len(rows):
                x[rows], means[rows] = self._sample_mask(x[rows], k, y[rows] if y is not None else None)
        return x, means

    def _sample_mask(self, x: Tensor, k: int, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Fill x (n, *event) dimension by dimension under mask k, each hidden unit computed once
        (``incremental.py``); also return the conditional means."""
        n = len(x)
        flat = x.reshape(n, self.D)  # a view: writes go to x
        means = torch.zeros_like(flat)  # (n, D)
        steps = incremental_sampler(self.net, n, self.event_shape, self.net_input, k, y)
        for d in torch.argsort(self.order(k)).tolist():  # dimensions in their sampling order
            flat[:, d], means[:, d] = self.dim_sample(steps.params(d))
            steps.set(d, flat[:, d])
        return x, means.reshape(x.shape)

    @torch.no_grad()
    def sample_for_display(self, n: int) -> Tensor:
        """Binarized images: for each sample x, the probabilities p(x_d = 1 | x_<d) met while
        drawing it (grey where the model hesitated; thresholding them is NOT the sample, but they
        read far better than 8x8 binary pixels). Dequantized images: samples clipped to [0, 1].
        Other data: true samples. A conditional model shows the classes in turn (0, 1, ..., K-1, 0, ...)."""
        y = torch.arange(n, device=self.device) % self.num_classes if self.is_conditional else None
        x, means = self._draw(n, y)
        if self.data_spec.is_image and self.binary:
            return means
        return x.clamp(0.0, 1.0) if self.data_spec.representation == "dequantized" else x

    def likelihood_description(self) -> str:
        if self.num_masks > 1:
            return f"exact log-likelihood of the uniform mixture over {self.num_masks} orderings"
        return "exact log-likelihood"

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Output biases at the data's marginals: Bernoulli logits at each pixel's mean (one
        shared mean per image channel for the PixelCNNs); mixture means at the quantiles of each
        dimension's values with scales of std / C."""
        flat = x.reshape(len(x), -1).to(self.dtype)  # (N, D)
        bias = self.net.output_bias()  # MADE (D, P), PixelCNNs (G P,)
        if self.architecture in IMAGE_ARCHITECTURES:
            G = self.event_shape[0]
            bias = bias.view(G, self.P)  # (G, P): one row per image channel
            flat = flat.reshape(len(x), G, -1).transpose(1, 2).reshape(-1, G)  # every pixel one draw per channel
        if self.binary:
            p = flat.mean(0).clamp(1e-3, 1 - 1e-3)  # (D,) or (1,)
            bias[..., 0] = torch.log(p) - torch.log1p(-p)
            return
        C = self.n_components
        q = (torch.arange(C, dtype=flat.dtype, device=flat.device) + 0.5) / C  # (C,)
        means = torch.quantile(flat, q, dim=0).T  # (D or 1, C)
        std = flat.std(0).clamp_min(1e-3)  # (D or 1,)
        log_scale = (torch.log(std) - math.log(C)).clamp(LOG_SCALE_MIN + 0.1, LOG_SCALE_MAX - 0.1)
        u = (log_scale - LOG_SCALE_MIN) / (LOG_SCALE_MAX - LOG_SCALE_MIN)
        raw = torch.log(u) - torch.log1p(-u) - _SCALE_SHIFT  # inverse of the squashing
        bias[..., :C] = 0.0
        bias[..., C:2 * C] = means
        bias[..., 2 * C:] = raw[..., None]
