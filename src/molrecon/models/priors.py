r"""Parametrisations of MOL's network ``H`` that can represent near-identity maps while ``Lip(H) < 1``.

A plain ReLU CNN ``H`` (:class:`~molrecon.models.cnn.ConvDenoiser`) starts near the zero map, far from the
near-identity maps a good prior needs (a denoiser of a decent image is close to the identity); under a Lipschitz
constraint it has to grow towards them against the constraint. The residual and SLL forms start at ``H ≈ L·I``:

``"residual"`` (:class:`ResidualDenoiser`, for MOL-LR and the DEQ)
    :math:`H(x) = s\,(x + N(x))` with :math:`N` a plain CNN and :math:`s < 1` (``residual_scale``), the MOL analogue
    of MoDL's ``x + CNN(x)``. Certified bound: :math:`\operatorname{Lip}(H) \le s\,(1 + \prod_l \|K_l\|)`, which is
    loose (usually > 1); MOL-LR keeps the *estimated* ``Lip(H)`` below its threshold by the penalty.

``"sll"`` (:class:`SLLDenoiser`, for MOL-SN)
    :math:`H = L\cdot P\circ B_n\circ\dots\circ B_1\circ E` with SDP-based Lipschitz layers (SLL; Araujo, Havens,
    Delattre, Allauzen & Hu, ICLR 2023)

    .. math:: B(z) = z - 2\,K^T\,T^{-1}\,\operatorname{ReLU}(K z + b),\qquad
              T = \operatorname{diag}(t),\ t_i = \sum_j \sum_{\text{shifts}} |(K K^T)_{ij}|\,\frac{q_j}{q_i},

    where ``K`` is a zero-padded convolution from the ``state_channels`` state to ``channels`` hidden channels.
    ``T ⪰ K Kᵀ`` by the weighted Gershgorin (Schur) test, so every ``B`` is 1-Lipschitz (Araujo et al., Thm. 3);
    ``E`` (zero channels appended) is an isometry and ``P`` (the first two channels) a projection, so
    ``Lip(H) ≤ L`` for *every* value of the weights: the certificate is a proof, computed from the weights
    through ``t``. ``B ≡ I`` at ``K = 0``, so ``H`` can be ``L·I`` exactly. Proof details: ``docs/theory.md``.

``"orthogonal"`` (:class:`OrthogonalDenoiser`, for MOL-SN and MOL-LR)
    :math:`H = L\cdot P\circ G_n\circ\dots\circ G_1\circ E` with
    :math:`G(z) = Q_2\,\operatorname{MaxMin}(Q_1 z + b_1) + b_2`, ``Q`` orthogonal convolutions
    (:mod:`molrecon.models.orthogonal`; an isometry from the state to the hidden channels and a co-isometry back).
    MaxMin (GroupSort of pairs) is a permutation at every point, so each ``G`` is 1-Lipschitz, and the kernels'
    norms are bounded from the weights. It starts at a random orthogonal map, not near ``L·I``; trained 450 steps
    it reached 1.8 dB (validation) and 1.4 dB (test) above the SLL network of the same width
    (``benchmarks/README.md``, "Orthogonal convolutions for MOL-SN"). Under MOL-LR its scale ``L`` may exceed 1
    (a bound that then proves nothing): the penalty keeps the estimate below 1 where ``H`` acts, and the network
    may use gain where it does not ("An orthogonal H under the penalty").

orthogonium (MIT) ships a 2D SLL convolution that reparametrises its kernel through AOL; MOL needs the same
layer in 2D, 3D and 2D+t with one certificate, so the layer is written once for ``conv2d`` and ``conv3d`` here;
likewise the orthogonal convolutions (orthogonium's AOC layers are 2D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..names import ARCHITECTURES
from .cnn import (
    DIMS,
    ConvDenoiser,
    ReLUJacobian,
    channels_to_complex,
    complex_to_channels,
    conv_axes,
    conv_functions,
    permute_axes,
)
from .orthogonal import (
    conv_norm_bound,
    max_min,
    orthogonal_block,
    orthogonal_block_jacobian,
    orthogonal_kernels,
    pair_order,
    swap_pairs,
)


class ResidualDenoiser(ConvDenoiser):
    r"""``H(x) = s·(x + N(x))``: a plain :class:`ConvDenoiser` ``N`` around a scaled identity (``s`` < 1).

    Parameters are those of :class:`ConvDenoiser` (without spectral normalisation) and ``residual_scale`` ``s``.

    Example
    -------
    >>> h = ResidualDenoiser(dims="2d", channels=8, layers=3, residual_scale=0.9)
    >>> x = torch.randn(1, 16, 16, dtype=torch.complex64)
    >>> w = h.effective_weights((16, 16))
    >>> bool(torch.allclose(h.apply(x, w), 0.9 * (x + h.apply_body(x, w))))
    True
    """

    def __init__(self, dims: str = "2d", channels: int = 64, layers: int = 5, kernel_size: int = 3,
                 bias: bool = True, residual_scale: float = 0.9, residual_init_gain: float = 0.0) -> None:
        super().__init__(dims=dims, channels=channels, layers=layers, kernel_size=kernel_size, bias=bias)
        if not (0 < residual_scale < 1):
            raise InputError(f"ResidualDenoiser: residual_scale must be in (0, 1), got {residual_scale}")
        if not (residual_init_gain >= 0):
            raise InputError(f"ResidualDenoiser: residual_init_gain must be >= 0, got {residual_init_gain}")
        self.residual_scale, self.residual_init_gain = float(residual_scale), float(residual_init_gain)
        # gain 0: N starts at zero and H at s·I, a contraction that the forward solves in a few iterations (a
        # random N can make Lip(H) > 1 at step 0); the last layer still gets gradients at the first step
        with torch.no_grad():
            self.convs[-1].weight.mul_(self.residual_init_gain)
            if self.convs[-1].bias is not None:
                self.convs[-1].bias.mul_(self.residual_init_gain)

    def config(self) -> dict:
        return {**super().config(), "residual_scale": self.residual_scale,
                "residual_init_gain": self.residual_init_gain}

    def apply_body(self, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """``N(x)``, the plain CNN inside the residual."""
        return super().apply(x, weights)

    def apply(self, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        return self.residual_scale * (x + self.apply_body(x, weights))

    def jacobian_at(self, x: torch.Tensor, weights: list[torch.Tensor]) -> ReLUJacobian:
        """``s·(I + J_N)`` at ``x`` (:class:`~molrecon.models.cnn.ReLUJacobian`)."""
        body = super().jacobian_at(x, weights)
        return ReLUJacobian(body.weights, body.masks, self.nd, body.padding, self.residual_scale, identity=True,
                            perm=body.perm)

    @torch.no_grad()
    def certified_lipschitz(self, spatial: tuple[int, ...], weights: list[torch.Tensor] | None = None) -> float:
        """``s·(1 + Π‖K_l‖)``: a proven but loose upper bound (MOL-LR does not claim a certificate)."""
        return self.residual_scale * (1.0 + super().certified_lipschitz(spatial, weights))

    def rescale_to(self, estimate: float, limit: float) -> float:
        r"""Scale the conv weights so that an estimated ``Lip(H)`` of ``estimate`` drops to about ``limit``.

        ``Lip(H) ≤ s(1 + Lip(N))`` and scaling every layer of ``N`` by ``r`` scales ``N``'s bound by
        :math:`r^{layers}`: ``r`` is chosen so that ``Lip(N)``'s share ``estimate/s − 1`` becomes ``limit/s − 1``.
        Returns ``r`` (1.0 when nothing is needed or possible).
        """
        excess, allowed = estimate / self.residual_scale - 1.0, limit / self.residual_scale - 1.0
        if estimate <= limit or excess <= 0 or allowed <= 0:
            return 1.0
        r = (allowed / excess) ** (1.0 / len(self.convs))
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.mul_(r)
        return float(r)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, residual_scale={self.residual_scale}"


def sll_scaling(weight: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    r"""``t`` of an SLL layer with kernel ``weight`` ``[hidden, state, *k]``: :math:`T = \operatorname{diag}(t) ⪰ KK^T`.

    ``(K Kᵀ)_{ij}`` is the cross-correlation of the kernels of hidden channels ``i`` and ``j`` (summed over the
    state channels), a kernel of size ``2k − 1``; ``t_i = Σ_j Σ_shifts |(KKᵀ)_{ij}| q_j / q_i``. For the
    zero-padded convolution on a finite grid ``K_N K_Nᵀ`` is a compression of the infinite operator, whose
    weighted row sums bound it, so the same ``t`` serves every grid size.
    """
    nd = weight.ndim - 2
    conv, _ = conv_functions(nd)
    k = weight.shape[2:]
    gram = conv(weight, weight, padding=tuple(s - 1 for s in k))  # [hidden, hidden, *(2k-1)]
    a = gram.abs().flatten(2).sum(-1)  # [hidden, hidden]
    q = log_q.exp()
    return (a * q[None, :]).sum(1) / q


class _CertifiedStateNetwork(nn.Module):
    """What the certified networks share: ``H = L·P∘(layers)∘E`` on a state of ``state_channels`` channels (the
    image's real and imaginary parts, then channels that start at zero), their settings, checks and config."""

    def __init__(self, dims: str, channels: int, layers: int, kernel_size: int, state_channels: int,
                 lipschitz_target: float) -> None:
        super().__init__()
        name = type(self).__name__
        if dims not in DIMS:
            raise InputError(f"{name}: dims must be one of {DIMS}, got {dims!r}")
        if layers < 1 or channels < 1 or state_channels < 2:
            raise InputError(f"{name}: need layers >= 1, channels >= 1, state_channels >= 2; got {layers}, "
                             f"{channels}, {state_channels}")
        if kernel_size % 2 != 1:
            raise InputError(f"{name}: kernel_size must be odd, got {kernel_size}")
        if not lipschitz_target > 0:  # a bound >= 1 proves no monotonicity: MOL-SN refuses it, MOL-LR may use it
            raise InputError(f"{name}: lipschitz_target must be > 0, got {lipschitz_target}")
        self.dims, self.channels, self.layers = dims, int(channels), int(layers)
        self.kernel_size, self.state_channels = int(kernel_size), int(state_channels)
        self.lipschitz_target = float(lipschitz_target)
        self.nd = 2 if dims == "2d" else 3

    def config(self) -> dict:
        return {"dims": self.dims, "channels": self.channels, "layers": self.layers,
                "kernel_size": self.kernel_size, "state_channels": self.state_channels,
                "lipschitz_target": self.lipschitz_target}

    def check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or not x.is_complex():
            raise InputError(f"{name}: input must be a complex tensor, got {getattr(x, 'dtype', type(x))}")
        if x.ndim != self.nd + 1:
            raise InputError(f"{name}({self.dims!r}): expected [B, {self.nd} spatial axes], got shape "
                             f"{tuple(x.shape)}")

    def effective_weights(self, spatial: tuple[int, ...]) -> list[torch.Tensor]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.apply(x, self.effective_weights(tuple(x.shape[1:])))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (f"dims={self.dims!r}, channels={self.channels}, layers={self.layers}, "
                f"state_channels={self.state_channels}, L={self.lipschitz_target}")


class SLLDenoiser(_CertifiedStateNetwork):
    r"""Certified ``H = L·P∘B_n∘…∘B_1∘E`` with SDP-based Lipschitz residual layers (see the module docstring).

    Parameters
    ----------
    dims: ``"2d"``, ``"3d"`` or ``"2d+t"`` (3D convolutions over (D,H,W) or (T,H,W)).
    channels: hidden channels of each layer. layers: number of SLL layers. kernel_size: odd kernel size.
    state_channels: channels of the state the layers act on (≥ 2; the image's real and imaginary parts plus
        ``state_channels − 2`` channels that start at zero). lipschitz_target: ``L`` (< 1 for MOL).

    Example
    -------
    >>> h = SLLDenoiser(dims="2d", channels=8, layers=2, state_channels=4, lipschitz_target=0.9)
    >>> h(torch.randn(1, 16, 16, dtype=torch.complex64)).shape
    torch.Size([1, 16, 16])
    >>> h.certified_lipschitz((16, 16))
    0.9
    """

    def __init__(self, dims: str = "2d", channels: int = 32, layers: int = 5, kernel_size: int = 3,
                 state_channels: int = 16, lipschitz_target: float = 0.95) -> None:
        super().__init__(dims, channels, layers, kernel_size, state_channels, lipschitz_target)
        shape = (self.channels, self.state_channels) + (self.kernel_size,) * self.nd
        fan_in = self.state_channels * self.kernel_size ** self.nd
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.log_q = nn.ParameterList()
        for _ in range(self.layers):
            w = torch.empty(shape)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.empty(self.channels).uniform_(-1, 1) / math.sqrt(fan_in)))
            self.log_q.append(nn.Parameter(torch.zeros(self.channels)))

    def effective_weights(self, spatial: tuple[int, ...]) -> list[torch.Tensor]:
        """``[K_1, 1/t_1, K_2, 1/t_2, …]``: computed once per reconstruction, so that every application of
        ``H`` in a fixed-point solve is the same map (the grid size does not enter ``t``)."""
        out = []
        for w, lq in zip(self.weights, self.log_q):
            out += [w, 1.0 / sll_scaling(w, lq).clamp_min(1e-12)]
        return out

    def apply(self, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """``H(x)`` with the given effective weights."""
        conv, convt = conv_functions(self.nd)
        pad = self.kernel_size // 2
        view = (-1,) + (1,) * (self.nd + 1)
        z = complex_to_channels(x)
        perm = conv_axes(z)
        z = permute_axes(F.pad(z, (0, 0) * self.nd + (0, self.state_channels - 2)), perm)  # E: zero channels
        for i in range(self.layers):
            w, inv_t = permute_axes(weights[2 * i], perm), weights[2 * i + 1]
            # relu(a)/t = relu(a/t) for t > 0: scaling the kernel and bias instead of the activations keeps one
            # hidden activation per layer for backward instead of two (the ReLU's output and the product)
            # (in place: the convolution's output is needed by nothing else, and a 5-8 % faster H)
            h = F.relu(conv(z, w * inv_t.view(view), self.biases[i] * inv_t, padding=pad), inplace=True)
            z = torch.add(z, convt(h, w, padding=pad), alpha=-2.0)  # z − 2·Kᵀh without a temporary for 2·Kᵀh
        return self.lipschitz_target * channels_to_complex(permute_axes(z[:, :2], perm, inverse=True))  # P

    def certified_lipschitz(self, spatial: tuple[int, ...], weights: list[torch.Tensor] | None = None) -> float:
        """``L``: every SLL layer is 1-Lipschitz for any weights (``t`` is computed from them), ``E`` is an
        isometry and ``P`` a projection."""
        return self.lipschitz_target


#: scale of the orthogonal prior's initial parameters (entries ~0.1·c^-1/2): in one-epoch probes a scale of 1.0
#: trained 1.8 dB below 0.1, and 0.03 0.5 dB below (benchmarks/README.md, "Orthogonal convolutions for MOL-SN")
ORTHOGONAL_INIT_SCALE = 0.1


#: run the orthogonal network's 2D convolutions on channels-last tensors on CPU: oneDNN's 16 → 32-channel 3×3
#: convolution takes 0.7 instead of 2.2 ms at 128² there (one thread), and MaxMin's halves stay cheap to write
CHANNELS_LAST_2D_CPU = True


class OrthogonalDenoiser(_CertifiedStateNetwork):
    r"""Certified ``H = L·P∘G_n∘…∘G_1∘E`` with ``G(z) = Q_2\,\mathrm{MaxMin}(Q_1 z + b_1) + b_2`` (module docstring).

    ``Q_1`` (state → hidden) and ``Q_2`` (hidden → state) are orthogonal convolutions
    (:func:`~molrecon.models.orthogonal.orthogonal_kernels`), MaxMin sorts channel pairs. Every ``G`` is
    1-Lipschitz, so ``Lip(H) ≤ L``; :meth:`certified_lipschitz` proves it from the kernels
    (:func:`~molrecon.models.orthogonal.conv_norm_bound`, about ``1 + 1e-6`` per kernel from rounding).

    Parameters are those of :class:`SLLDenoiser`; ``channels`` (hidden) must be even.

    Example
    -------
    >>> h = OrthogonalDenoiser(dims="2d", channels=8, layers=2, state_channels=4, lipschitz_target=0.9)
    >>> h(torch.randn(1, 16, 16, dtype=torch.complex64)).shape
    torch.Size([1, 16, 16])
    >>> 0.9 <= h.certified_lipschitz((16, 16)) < 0.90001
    True
    """

    def __init__(self, dims: str = "2d", channels: int = 32, layers: int = 5, kernel_size: int = 3,
                 state_channels: int = 16, lipschitz_target: float = 0.99) -> None:
        super().__init__(dims, channels, layers, kernel_size, state_channels, lipschitz_target)
        if channels % 2:
            raise InputError(f"OrthogonalDenoiser: channels must be even (MaxMin sorts pairs), got {channels}")
        c = max(self.channels, self.state_channels)
        c += c % 2  # the projectors have rank c/2
        blocks = (self.kernel_size - 1) * self.nd
        self.rotations, self.frames, self.biases = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for _ in range(self.layers):
            for fan_in, width in ((self.state_channels, self.channels), (self.channels, self.state_channels)):
                # uniformly distributed orthonormal matrices (QR factors of Gaussian ones), scaled down: the kernel
                # depends on their directions only, so this scale sets how far an optimiser's step turns them
                self.rotations.append(nn.Parameter(ORTHOGONAL_INIT_SCALE * torch.linalg.qr(torch.randn(c, c))[0]))
                self.frames.append(nn.Parameter(ORTHOGONAL_INIT_SCALE
                                                * torch.linalg.qr(torch.randn(blocks, c, c // 2))[0]))
                bound = 1.0 / math.sqrt(fan_in * self.kernel_size ** self.nd)
                self.biases.append(nn.Parameter(torch.empty(width).uniform_(-bound, bound)))

    def effective_weights(self, spatial: tuple[int, ...]) -> list[torch.Tensor]:
        """``[Q_1 of layer 1, Q_2 of layer 1, …]``, the orthogonal kernels, computed once per reconstruction.

        ``E`` and ``P`` are folded into the first and last kernel: ``E`` appends channels that are zero, so the
        first convolution reads only the image's two input channels; ``P`` keeps two channels, so the last one
        computes only those. Two of the network's ``2·layers`` convolutions then cost ``2/state_channels`` of
        the others, and the map is the same."""
        widths = [(self.channels, self.state_channels), (self.state_channels, self.channels)] * self.layers
        widths[0], widths[-1] = (self.channels, 2), (2, self.channels)
        return orthogonal_kernels(torch.stack(list(self.rotations)), torch.stack(list(self.frames)), self.nd,
                                  self.kernel_size, widths)

    def apply(self, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        """``H(x)`` with the given kernels."""
        pad = self.kernel_size // 2
        z, perm = self._embed(x)
        for i in range(self.layers):
            z = orthogonal_block(z, permute_axes(weights[2 * i], perm), self.biases[2 * i],
                                 permute_axes(weights[2 * i + 1], perm), self._output_bias(i), pad)
        return self._project(z, perm)

    def _output_bias(self, i: int) -> torch.Tensor:
        """``b_2`` of layer ``i``; the last layer's restricted, as its kernel is, to the two channels ``P`` keeps."""
        bias = self.biases[2 * i + 1]
        return bias[:2] if i == self.layers - 1 else bias

    def jacobian_at(self, x: torch.Tensor, weights: list[torch.Tensor]) -> OrthogonalJacobian:
        """The Jacobian of :meth:`apply` at ``x`` as a linear operator (:class:`OrthogonalJacobian`): the same
        convolutions without bias, with MaxMin's pair order at ``x`` in between."""
        pad = self.kernel_size // 2
        conv, _ = conv_functions(self.nd)
        z, perm = self._embed(x)
        orders: list[torch.Tensor] = []
        with torch.no_grad():
            for i in range(self.layers):
                u = conv(z, permute_axes(weights[2 * i], perm), self.biases[2 * i], padding=pad)
                orders.append(pair_order(u))
                z = conv(max_min(u), permute_axes(weights[2 * i + 1], perm), self._output_bias(i), padding=pad)
        return OrthogonalJacobian(self, weights, orders, perm)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
        """``(x as channels, axis order)``: the complex image as real and imaginary channels, in the convolutions'
        axis order (returned for :meth:`_project`) and memory format. ``E``'s zero channels are not materialised:
        the first kernel reads these two (:meth:`effective_weights`)."""
        z = complex_to_channels(x)
        perm = conv_axes(z)
        z = permute_axes(z, perm)
        if self.nd == 2 and z.device.type == "cpu" and CHANNELS_LAST_2D_CPU:
            z = z.contiguous(memory_format=torch.channels_last)
        return z, perm

    def _project(self, z: torch.Tensor, perm: tuple[int, ...] | None) -> torch.Tensor:
        """``L·z``, the last layer's two channels (``P`` folded into its kernel), as a complex image."""
        return self.lipschitz_target * channels_to_complex(permute_axes(z, perm, inverse=True))

    @torch.no_grad()
    def certified_lipschitz(self, spatial: tuple[int, ...], weights: list[torch.Tensor] | None = None) -> float:
        """``L·Π‖Q‖``, each ``‖Q‖`` bounded from its kernel (``weights``, else the parameters' own; the first
        is ``Q_1 E`` and the last ``P Q_2``, sub-blocks of orthogonal convolutions), MaxMin and the biases do not
        add to a Lipschitz constant. Valid on every grid."""
        kernels = weights if weights is not None else self.effective_weights(spatial)
        return self.lipschitz_target * math.prod(conv_norm_bound(k) for k in kernels)


class OrthogonalJacobian:
    r"""The Jacobian :math:`J = L\,P\,Q_{2,n} S_n Q_{1,n} \cdots Q_{2,1} S_1 Q_{1,1}\,E` of an
    :class:`OrthogonalDenoiser` at a point, ``S_l`` MaxMin's derivative there: the swap of the channel pairs that
    it reordered, a permutation (the derivative at a tie is taken as the identity, as autograd's).

    Exact (the biases only choose the ``S_l``), and lighter than autograd, as
    :class:`~molrecon.models.cnn.ReLUJacobian` is for a ReLU CNN: :meth:`jvp` is one pass of the convolutions
    without bias, differentiable w.r.t. the kernels, whose graph keeps each block's input tangent and one boolean
    per pair (:func:`~molrecon.models.orthogonal.orthogonal_block_jacobian`); :meth:`vjp`, the adjoint, is one
    pass of transposed convolutions, :math:`S_l` being its own transpose.
    """

    def __init__(self, net: OrthogonalDenoiser, weights: list[torch.Tensor], orders: list[torch.Tensor],
                 perm: tuple[int, ...] | None) -> None:
        self.net, self.weights, self.orders, self.perm = net, weights, orders, perm
        self.padding = net.kernel_size // 2
        _, self.conv_t = conv_functions(net.nd)

    def _kernel(self, i: int) -> torch.Tensor:
        return permute_axes(self.weights[i], self.perm)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """:math:`J v` for a complex image batch ``v``."""
        t, _ = self.net._embed(v)
        for i, order in enumerate(self.orders):
            t = orthogonal_block_jacobian(order, t, self._kernel(2 * i), self._kernel(2 * i + 1), self.padding)
        return self.net._project(t, self.perm)

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        r""":math:`J^T u` in the real inner product :math:`\mathrm{Re}\langle a, b\rangle` of complex images:
        the kernels hold ``E`` and ``P`` (:meth:`OrthogonalDenoiser.effective_weights`), so ``u``'s two channels go
        straight into the last kernel's transpose."""
        g, _ = self.net._embed(u)
        for i in reversed(range(len(self.orders))):
            g = self.conv_t(g, self._kernel(2 * i + 1), None, padding=self.padding)
            g = swap_pairs(self.orders[i], g)
            g = self.conv_t(g, self._kernel(2 * i), None, padding=self.padding)
        return self.net._project(g, self.perm)


def build_prior(architecture: str, constraint: str, dims: str, channels: int, layers: int, kernel_size: int,
                lipschitz_target: float | None, residual_scale: float, state_channels: int,
                residual_init_gain: float = 0.0) -> nn.Module:
    """The network ``H`` of a MOL model with this ``architecture`` and ``constraint`` (``lipschitz_target``:
    the certified constraint's ``L``, ``None`` for the others)."""
    check_architecture(architecture, constraint)
    if architecture == "residual":
        return ResidualDenoiser(dims=dims, channels=channels, layers=layers, kernel_size=kernel_size,
                                residual_scale=residual_scale, residual_init_gain=residual_init_gain)
    if architecture == "orthogonal":
        if lipschitz_target is None:
            raise InputError("MOL: the orthogonal architecture needs lipschitz_target, the scale L of H (its proven "
                             "bound; under mol-lr it may exceed 1, e.g. 1.05)")
        return OrthogonalDenoiser(dims=dims, channels=channels, layers=layers, kernel_size=kernel_size,
                                  state_channels=state_channels, lipschitz_target=lipschitz_target)
    if architecture == "sll":
        return SLLDenoiser(dims=dims, channels=channels, layers=layers, kernel_size=kernel_size,
                           state_channels=state_channels, lipschitz_target=lipschitz_target)
    certified = {"spectral_norm": True, "lipschitz_target": lipschitz_target} if constraint == "sn" else {}
    return ConvDenoiser(dims=dims, channels=channels, layers=layers, kernel_size=kernel_size, **certified)


def check_architecture(architecture: str, constraint: str) -> None:
    """Refuse an unknown architecture, or one that does not serve ``constraint``."""
    if architecture not in ARCHITECTURES:
        raise InputError(f"MOL: architecture must be one of {tuple(ARCHITECTURES)}, got "
                         f"{architecture!r}")
    if constraint not in ARCHITECTURES[architecture]:
        raise InputError(f"MOL: architecture {architecture!r} does not serve constraint {constraint!r} (it "
                         f"serves {', '.join(ARCHITECTURES[architecture])})")


__all__ = ["ResidualDenoiser", "SLLDenoiser", "OrthogonalDenoiser", "OrthogonalJacobian", "sll_scaling", "build_prior",
           "check_architecture"]
