r"""The CNN prior ``H`` of MOL (and the denoiser of MoDL): a few 3×3 convolutions with ReLU.

``H`` maps a complex image ``[B, *spatial]`` to a complex image of the same shape. Real and imaginary parts
become 2 channels only here, at the network boundary (the map :math:`\mathbb{C}^n \to \mathbb{R}^{2n}` is an
isometry, so Lipschitz constants are the same on both sides). The network is the paper's: ``layers``
convolutions (3×3, or 3×3×3 for ``"3d"`` and ``"2d+t"``), ``channels`` features, bias, ReLU after every layer
but the last; the defaults (5 × 64) give ~113k parameters in 2D, as in the authors' code.

Spectral normalisation (MOL-SN)
-------------------------------
With ``spectral_norm=True`` each convolution :math:`K_l` (an operator on images, *with* its zero padding — not
the reshaped weight matrix) is rescaled to :math:`\tilde K_l = K_l / \max(1, \sigma_l / t)` with
:math:`t = L_{target}^{1/\text{layers}}`, so that

.. math:: \operatorname{Lip}(H) \le \prod_l \|\tilde K_l\| \le L_{target}

(ReLU is 1-Lipschitz and biases do not change Lipschitz constants). ``σ_l`` is obtained in two ways:

* training mode: a persistent power iteration on :math:`K_l^T K_l` (one step per call, as the authors and
  Miyato et al.; cheap, converges from below across steps), on the input's grid cut to at most
  :data:`POWER_ITERATION_GRID` points per axis. The norm of a zero-padded convolution grows with the grid
  towards that of the convolution on the whole lattice; for the 3×3 kernels of a trained CNN the norm on 48²
  is within 0.2 % of the norm on 128² (``benchmarks/README.md``, "Exact peak"), while an image-sized vector per
  layer (16 MiB per 64-channel layer at 256²) would be memory the model keeps for the whole training;
* evaluation mode (and :meth:`ConvDenoiser.certified_lipschitz`): a *certified upper bound*. A zero-padded
  convolution on an :math:`N`-point grid is a compression :math:`K_N = P\,C_M\,E` of the circular convolution
  :math:`C_M` on :math:`M = N + k - 1` points (zero-extend, convolve circularly, crop: the wrapped taps only
  ever read zeros), so :math:`\|K_N\| \le \|C_M\| = \max_{\omega\in\text{DFT grid}} \sigma_{\max}(\hat W(\omega))`,
  computed exactly by an FFT of the kernel and a Hermitian eigen-solve per frequency.

The effective (normalised) weights are computed once per MOL forward (:meth:`ConvDenoiser.effective_weights`)
and then reused by every application of ``H``: the network must be the *same* map at every fixed-point
iteration, otherwise there is no fixed point to differentiate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..names import DIMS

POWER_ITERATION_GRID = 48
"""Most points per axis of the training-mode power iteration's vectors (module docstring)."""


def conv_functions(nd: int):
    """``(convolution, transposed convolution)`` of ``nd`` spatial dimensions (2 or 3)."""
    return (F.conv2d, F.conv_transpose2d) if nd == 2 else (F.conv3d, F.conv_transpose3d)


def conv_axes(t: torch.Tensor) -> tuple[int, ...] | None:
    """The order of a ``[B, C, D, H, W]`` CPU tensor's axes in which its 3-D convolutions run fast: the spatial
    axes longest first; ``None`` when they already are, in 2D and on other devices.

    A convolution with a cube kernel and the same padding on every axis commutes with permuting the spatial
    axes of its input and kernel alike. PyTorch's CPU convolution takes oneDNN only when ``B·C·size(2)·size(3)``
    exceeds 20480 (ATen's ``ConvParams::use_mkldnn``, a rule made for 2D) and an im2col kernel otherwise: for
    2D+time's 12 frames × 96² × 16 channels that product is 18432, and a convolution took 138 ms instead of
    11 ms with the frames last (one thread; ``benchmarks/README.md``).
    """
    if t.ndim != 5 or t.device.type != "cpu":
        return None
    order = sorted(range(3), key=lambda i: -t.shape[2 + i])
    return None if order == [0, 1, 2] else (0, 1, *(2 + i for i in order))


ONEDNN_MIN_PRODUCT = 20480
"""``B·C·size(2)·size(3)`` above which PyTorch's CPU convolution (3-wide kernels, batch 1) takes oneDNN
(:func:`conv_axes`)."""

MAX_PADDED_CHANNELS = 8
"""The most input channels :func:`convolve` pads a thin 3-D input to (6 at 64³: 20 ms on oneDNN against 60 ms for
the 2 channels on im2col, one thread)."""


def convolve(conv: Callable[..., torch.Tensor], h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
             padding: int) -> torch.Tensor:
    """``conv(h, w, bias, padding)``, with a thin 3-D CPU input zero-padded to the few channels that make PyTorch
    take oneDNN: the 2-channel first layer of a 64³ CNN is below :data:`ONEDNN_MIN_PRODUCT` in any axis order.
    Zero channels with zero kernel slices add nothing, so this is the same convolution."""
    if h.ndim == 5 and h.device.type == "cpu":
        need = ONEDNN_MIN_PRODUCT // (h.shape[0] * h.shape[2] * h.shape[3]) + 1
        if h.shape[1] < need <= MAX_PADDED_CHANNELS:
            extra = (0, 0) * 3 + (0, need - h.shape[1])
            h, w = F.pad(h, extra), F.pad(w, extra)
    return conv(h, w, bias, padding=padding)


def permute_axes(t: torch.Tensor, perm: tuple[int, ...] | None, inverse: bool = False) -> torch.Tensor:
    """``t`` (an activation or a kernel) in the order ``perm`` of :func:`conv_axes`, or back with ``inverse``."""
    if perm is None:
        return t
    return t.permute(tuple(perm.index(i) for i in range(len(perm))) if inverse else perm)


def complex_to_channels(x: torch.Tensor) -> torch.Tensor:
    """``[B, *sp]`` complex → ``[B, 2, *sp]`` real (real, imaginary)."""
    # a view with the channels innermost: in 2D these are channels-last strides, which oneDNN's CPU convolutions
    # keep through the network and run fastest on (an explicit conversion gained nothing, benchmarks/README.md)
    return torch.movedim(torch.view_as_real(x), -1, 1)


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """``[B, 2, *sp]`` real → ``[B, *sp]`` complex."""
    return torch.view_as_complex(torch.movedim(x, 1, -1).contiguous())


def conv_power_iteration(weight: torch.Tensor, u: torch.Tensor, n_iter: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Power iteration for the operator norm of the zero-padded ("same") convolution ``K``.

    ``u`` is a start vector ``[1, C_in, *sp]`` (the input grid). Iterates :math:`u \leftarrow K^T K u / \|\cdot\|`
    (``K^T`` is the transposed convolution with the same padding) and returns ``(sigma, u)`` with
    :math:`\sigma = \|K u\|` — a lower estimate of :math:`\|K\|` that is differentiable w.r.t. ``weight``
    (``u`` is treated as a constant, as in Miyato et al.'s spectral normalisation).
    """
    nd = weight.ndim - 2
    conv, convt = conv_functions(nd)
    pad = tuple(k // 2 for k in weight.shape[2:])
    with torch.no_grad():
        w = weight.detach()
        for _ in range(n_iter):
            v = conv(u, w, padding=pad)
            u = convt(v, w, padding=pad)
            u = u / u.norm().clamp_min(1e-12)
    # recomputed in backward: an image-sized conv output per layer would otherwise be held for the whole step
    sigma = checkpoint(lambda w: conv(u, w, padding=pad).norm(), weight, use_reentrant=False)
    return sigma, u


def conv_operator_norm_bound(weight: torch.Tensor, spatial_shape: tuple[int, ...],
                             chunk: int = 4096) -> torch.Tensor:
    r"""Certified upper bound on the operator norm of the zero-padded convolution on ``spatial_shape``.

    Exact norm of the circular convolution on the grid ``M_i = N_i + k_i − 1`` (which contains the zero-padded
    one as a compression, see the module docstring): ``max_ω σ_max(Ŵ(ω))`` over the ``M``-point DFT grid.
    Computed in float64; a relative margin of 1e-6 covers the eigen-solver's rounding.
    """
    nd = weight.ndim - 2
    ks = weight.shape[2:]
    grid = tuple(int(n) + int(k) - 1 for n, k in zip(spatial_shape, ks))
    w = weight.detach().to(torch.float64)
    what = torch.fft.fftn(w, s=grid, dim=tuple(range(2, 2 + nd)))  # [co, ci, *M]
    # contiguous: batched matmul on the strided permuted view is ~10x slower (minutes at 128x128 on 2 cores)
    what = what.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1).contiguous()  # [F, co, ci]
    if what.shape[1] < what.shape[2]:
        gram_of = lambda a: a @ a.conj().transpose(-1, -2)  # noqa: E731 - smaller Gram matrix
    else:
        gram_of = lambda a: a.conj().transpose(-1, -2) @ a  # noqa: E731
    best = torch.zeros((), dtype=torch.float64, device=w.device)
    for start in range(0, what.shape[0], chunk):
        ev = torch.linalg.eigvalsh(gram_of(what[start:start + chunk]))
        best = torch.maximum(best, ev[..., -1].max())
    return (best.clamp_min(0).sqrt() * (1 + 1e-6)).to(weight.dtype)


class ConvDenoiser(nn.Module):
    """The paper's CNN ``H``: complex ``[B, *spatial]`` → complex ``[B, *spatial]``.

    Parameters
    ----------
    dims: ``"2d"`` (2D convolutions) or ``"3d"`` / ``"2d+t"`` (3D convolutions over (D,H,W) or (T,H,W)).
    channels: feature channels per hidden layer (paper: 64). layers: number of convolutions (paper: 5).
    kernel_size: odd kernel size (paper: 3). bias: use biases (paper: yes).
    spectral_norm: rescale every convolution so that ``Lip(H) ≤ lipschitz_target`` (MOL-SN; see module doc).
    lipschitz_target: the bound ``L`` for the whole network (< 1 for MOL). power_iter: power-iteration steps per
    training forward.

    Example
    -------
    >>> h = ConvDenoiser(dims="2d", channels=8, layers=3)
    >>> h(torch.randn(1, 16, 16, dtype=torch.complex64)).shape
    torch.Size([1, 16, 16])
    """

    def __init__(self, dims: str = "2d", channels: int = 64, layers: int = 5, kernel_size: int = 3,
                 bias: bool = True, spectral_norm: bool = False, lipschitz_target: float = 0.95,
                 power_iter: int = 1) -> None:
        super().__init__()
        if dims not in DIMS:
            raise InputError(f"ConvDenoiser: dims must be one of {DIMS}, got {dims!r}")
        if layers < 1 or channels < 1:
            raise InputError(f"ConvDenoiser: layers and channels must be >= 1, got {layers}, {channels}")
        if kernel_size % 2 != 1:
            raise InputError(f"ConvDenoiser: kernel_size must be odd, got {kernel_size}")
        if spectral_norm and not (0 < lipschitz_target):
            raise InputError(f"ConvDenoiser: lipschitz_target must be > 0, got {lipschitz_target}")
        self.dims, self.channels, self.layers = dims, int(channels), int(layers)
        self.kernel_size, self.bias, self.spectral_norm = int(kernel_size), bool(bias), bool(spectral_norm)
        self.lipschitz_target, self.power_iter = float(lipschitz_target), int(power_iter)
        self.nd = 2 if dims == "2d" else 3
        conv_cls = nn.Conv2d if self.nd == 2 else nn.Conv3d
        chans = [2] + [channels] * (layers - 1) + [2]
        self.convs = nn.ModuleList([conv_cls(chans[i], chans[i + 1], kernel_size, padding=kernel_size // 2,
                                             bias=bias) for i in range(layers)])
        # power-iteration start vectors per (layer, spatial shape); not part of the state dict
        self._u: dict[tuple, torch.Tensor] = {}
        self._cert_cache: dict[tuple, torch.Tensor] = {}
        self.last_sigmas: list[float] = []

    # -- configuration ------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"dims": self.dims, "channels": self.channels, "layers": self.layers,
                "kernel_size": self.kernel_size, "bias": self.bias, "spectral_norm": self.spectral_norm,
                "lipschitz_target": self.lipschitz_target, "power_iter": self.power_iter}

    @property
    def per_layer_target(self) -> float:
        return self.lipschitz_target ** (1.0 / self.layers)

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_complex():
            raise InputError(f"ConvDenoiser: input must be a complex tensor, got "
                             f"{getattr(x, 'dtype', type(x))}")
        if x.ndim != self.nd + 1:
            raise InputError(f"ConvDenoiser({self.dims!r}): expected [B, {self.nd} spatial axes], got shape "
                             f"{tuple(x.shape)}")

    # -- spectral norms ------------------------------------------------------------------------------------
    def _certified_sigma(self, i: int, spatial: tuple[int, ...]) -> torch.Tensor:
        w = self.convs[i].weight
        key = (i, spatial, w._version, w.data_ptr(), w.device, w.dtype)
        hit = self._cert_cache.get(key)
        if hit is None:
            self._cert_cache = {k: v for k, v in self._cert_cache.items() if k[0] != i or k[1] != spatial}
            hit = conv_operator_norm_bound(w, spatial)
            self._cert_cache[key] = hit
        return hit

    def layer_sigmas(self, spatial: tuple[int, ...]) -> list[torch.Tensor]:
        """Per-layer operator norms used for normalisation (differentiable in training mode)."""
        sigmas = []
        grid = tuple(min(int(s), POWER_ITERATION_GRID) for s in spatial)
        for i, conv in enumerate(self.convs):
            if self.training:
                key = (i, grid, conv.weight.device, conv.weight.dtype)
                u = self._u.get(key)
                if u is None:
                    g = torch.Generator(device="cpu").manual_seed(1234 + i)
                    u = torch.randn((1, conv.in_channels, *grid), generator=g).to(conv.weight)
                    u = u / u.norm()
                    n_iter = max(self.power_iter, 10)  # a fresh vector needs a few steps to be useful
                else:
                    n_iter = self.power_iter
                sigma, u = conv_power_iteration(conv.weight, u, n_iter)
                self._u[key] = u
            else:
                sigma = self._certified_sigma(i, spatial)
            sigmas.append(sigma)
        return sigmas

    def effective_weights(self, spatial: tuple[int, ...]) -> list[torch.Tensor]:
        """The convolution weights ``H`` uses for inputs of this spatial size (normalised under SN).

        Call once per reconstruction and pass the result to :meth:`apply`, so every evaluation of ``H`` in a
        fixed-point solve uses the same operator (and the power iteration advances once per forward).
        """
        spatial = tuple(int(s) for s in spatial)
        if not self.spectral_norm:
            return [c.weight for c in self.convs]
        t = self.per_layer_target
        out = []
        sigmas = self.layer_sigmas(spatial)
        # the norms used (certified upper bounds in eval mode), for the a-posteriori bounds of MOL
        self.last_sigmas = [float(s.detach()) for s in sigmas]
        for conv, sigma in zip(self.convs, sigmas):
            # scale down only when the layer exceeds its share t of the target (never scale up)
            out.append(conv.weight / torch.clamp(sigma / t, min=1.0))
        return out

    def apply(self, x: torch.Tensor, weights: list[torch.Tensor],
              masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``H(x)`` with the given effective weights; given a list ``masks``, the hidden ReLUs' pass masks at ``x``
        are appended to it (bool, in the axis order of :func:`conv_axes`)."""
        conv, _ = conv_functions(self.nd)
        pad = self.kernel_size // 2
        h = complex_to_channels(x)
        perm = conv_axes(h)
        h = permute_axes(h, perm)
        for i, (c, w) in enumerate(zip(self.convs, weights)):
            h = convolve(conv, h, permute_axes(w, perm), c.bias, pad)
            if i < len(self.convs) - 1:
                if masks is not None:
                    masks.append(h > 0)
                h = F.relu(h, inplace=True)  # the convolution's output is needed by nothing else
        return channels_to_complex(permute_axes(h, perm, inverse=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.apply(x, self.effective_weights(tuple(x.shape[1:])))

    def jacobian_at(self, x: torch.Tensor, weights: list[torch.Tensor]) -> ReLUJacobian:
        """The Jacobian of :meth:`apply` at ``x`` as a linear operator (:class:`ReLUJacobian`): the same
        convolutions without bias, with the ReLUs' pass masks at ``x`` in between."""
        masks: list[torch.Tensor] = []
        with torch.no_grad():
            ConvDenoiser.apply(self, x, weights, masks)  # the plain network: a residual form adds its own I
        return ReLUJacobian(weights, masks, self.nd, self.kernel_size // 2,
                            perm=conv_axes(complex_to_channels(x)))

    @torch.no_grad()
    def certified_lipschitz(self, spatial: tuple[int, ...], weights: list[torch.Tensor] | None = None) -> float:
        r"""Certified upper bound on ``Lip(H)`` for inputs of this spatial size: :math:`\prod_l \|\tilde K_l\|`
        with each factor bounded by the circular-embedding norm (valid for SN and plain networks alike)."""
        spatial = tuple(int(s) for s in spatial)
        if weights is None:
            weights = self.effective_weights(spatial)
        bound = 1.0
        for w in weights:
            bound *= float(conv_operator_norm_bound(w, spatial))
        return bound

    def extra_training_state(self) -> list[dict]:
        """The power-iteration vectors, for training checkpoints (kept out of the state dict so that shipped
        weights stay plain tensors); restoring them makes a resumed MOL-SN run continue exactly."""
        return [{"layer": int(k[0]), "spatial": [int(s) for s in k[1]], "u": u.detach().cpu()}
                for k, u in self._u.items()]

    def load_extra_training_state(self, state: list[dict]) -> None:
        """Inverse of :meth:`extra_training_state`."""
        self._u = {}
        for e in state:
            w = self.convs[int(e["layer"])].weight
            self._u[(int(e["layer"]), tuple(int(s) for s in e["spatial"]), w.device, w.dtype)] = e["u"].to(w)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        sn = f", spectral_norm(L<={self.lipschitz_target})" if self.spectral_norm else ""
        return f"dims={self.dims!r}, channels={self.channels}, layers={self.layers}{sn}"


class ReLUJacobian:
    r"""The Jacobian :math:`J = s\,(\epsilon I + K_L D_{L-1} K_{L-1} \cdots D_1 K_1)` of a ReLU CNN at a point,
    with ``K_l`` its convolutions without bias and ``D_l`` the ReLUs' pass masks there (ReLU's derivative is
    taken as 0 at 0, as autograd does); ``scale`` ``s`` and ``identity`` ``ε ∈ {0, 1}`` cover the residual form.

    Exact for a ReLU network (its Jacobian does not depend on the biases once the masks are known), and lighter
    than autograd: :meth:`jvp` is one pass of masked convolutions, differentiable w.r.t. the weights, whose graph
    keeps the tangent activations and bool masks only (forward-mode autograd keeps the primal activations too);
    :meth:`vjp`, the adjoint, is one pass of transposed convolutions and needs no graph of the network.
    """

    def __init__(self, weights: list[torch.Tensor], masks: list[torch.Tensor], nd: int, padding: int,
                 scale: float = 1.0, identity: bool = False, perm: tuple[int, ...] | None = None) -> None:
        self.weights, self.masks, self.padding, self.perm = weights, masks, padding, perm
        self.conv, self.conv_t = conv_functions(nd)
        self.scale, self.identity = float(scale), bool(identity)

    def _outer(self, v: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
        body = channels_to_complex(permute_axes(body, self.perm, inverse=True))
        return self.scale * (v + body) if self.identity else (body if self.scale == 1.0 else self.scale * body)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """:math:`J v` for a complex image batch ``v``."""
        h = permute_axes(complex_to_channels(v), self.perm)  # the masks' axis order
        for i, w in enumerate(self.weights):
            h = convolve(self.conv, h, permute_axes(w, self.perm), None, self.padding)
            if i < len(self.masks):
                h = h.mul_(self.masks[i])  # in place: the convolution keeps its input, not its output
        return self._outer(v, h)

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        r""":math:`J^T u` in the real inner product :math:`\mathrm{Re}\langle a, b\rangle` of complex images."""
        g = permute_axes(complex_to_channels(u), self.perm)
        for i in reversed(range(len(self.weights))):
            if i < len(self.masks):
                g = g * self.masks[i]
            g = self.conv_t(g, permute_axes(self.weights[i], self.perm), None, padding=self.padding)
        return self._outer(u, g)


def default_alpha_range(lipschitz: float) -> tuple[float, float]:
    """Step sizes α for which ``x ↦ (1−α)x + αH(x)`` is a contraction when ``Lip(H) ≤ L < 1``."""
    return (0.0, 2.0 / (1.0 + lipschitz)) if lipschitz < 1 else (0.0, 0.0)


__all__ = ["ConvDenoiser", "conv_power_iteration", "conv_operator_norm_bound", "complex_to_channels",
           "channels_to_complex", "default_alpha_range", "ReLUJacobian"]
