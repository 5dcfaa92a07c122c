r"""Orthogonal convolutions in 2D and 3D, and a bound on a convolution's norm computed from its kernel.

**Block-convolution orthogonal parametrisation** (BCOP; Li, Haghifam, Holtz & Jacobsen, NeurIPS 2019; orthogonium's
AOC layers build on it in 2D). A 2-tap convolution along one axis with taps ``P`` and ``I − P``, ``P`` an orthogonal
projector, is orthogonal: its frequency response ``P + e^{-iω}(I − P)`` is unitary at every frequency. An orthogonal
1×1 convolution followed by ``k − 1`` such blocks along each axis is an orthogonal convolution with a ``k^d``
kernel (:func:`orthogonal_kernel`). Its first ``c_out`` output and ``c_in`` input channels form a convolution of
norm ≤ 1: an isometry when ``c_out ≥ c_in`` (the input is embedded), a co-isometry otherwise (the output is
projected). The construction is written once for ``conv2d`` and ``conv3d``.

**The bound** (:func:`conv_norm_bound`) does not rely on the construction: it is computed from the kernel, so it
is a proof for any kernel. With ``G_s`` the Gram kernel of ``K Kᵀ`` (a ``2k − 1`` kernel of ``c × c`` matrices,
``c`` the smaller channel count), the frequency response of ``K Kᵀ`` is ``Σ_s G_s e^{iωs}`` and

.. math:: \|K\|^2 \le \lambda_{\max}(G_0) + \sum_{s \ne 0} \|G_s\|_2 .

A zero-padded convolution on a finite grid is a compression of the convolution on the infinite grid, so the bound
holds on every grid. For an orthogonal kernel ``G_0 = I`` and ``G_{s≠0} = 0``: the bound is 1 up to rounding.
Proofs: ``docs/theory.md`` (the repository's copy).

Example
-------
>>> g = torch.Generator().manual_seed(0)
>>> rotation, frames = torch.randn(8, 8, generator=g), torch.randn(4, 8, 4, generator=g)
>>> k = orthogonal_kernel(rotation, frames, nd=2, kernel_size=3, out_channels=8, in_channels=4)
>>> k.shape
torch.Size([8, 4, 3, 3])
>>> abs(conv_norm_bound(k) - 1.0) < 1e-5
True
"""

from __future__ import annotations

import math

import torch
from torch.autograd import forward_ad

from ..solvers.implicit import state_gradients_only
from .cnn import conv_functions


def orthonormal(a: torch.Tensor, iterations: int = 15) -> torch.Tensor:
    """The orthonormal columns closest to ``a``'s (``[..., n, r]``, ``r ≤ n``): the polar factor ``U Vᵀ`` of
    ``a = U Σ Vᵀ``, by Björck's iteration ``Q ← Q(3I − QᵀQ)/2`` (differentiable, and the same map for every
    rotation of the columns, unlike a QR factor). ``a`` is first divided by a Gershgorin bound on its largest
    singular value, so a near-orthonormal ``a`` starts converged; a nearly rank-deficient one converges slowly,
    which no certificate relies on (:func:`conv_norm_bound` reads the kernel)."""
    gram = a.transpose(-1, -2) @ a
    scale = gram.abs().sum(-1).amax(-1).clamp_min(1e-30).sqrt()[..., None, None]
    q = a / scale
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        q = q @ (1.5 * eye - 0.5 * (q.transpose(-1, -2) @ q))
    return q


def _conv(nd: int):
    """The convolution of ``nd`` spatial dimensions."""
    return conv_functions(nd)[0]


def compose_kernels(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The kernel of ``x ↦ outer ⋆ (inner ⋆ x)`` (cross-correlations, as ``conv2d``/``conv3d`` compute):
    ``C[o, i, u] = Σ_m Σ_t outer[o, m, t] inner[m, i, u − t]``, of size ``k_outer + k_inner − 1`` per axis."""
    nd = outer.ndim - 2
    spatial = tuple(range(2, 2 + nd))
    padding = tuple(s - 1 for s in outer.shape[2:])
    return _conv(nd)(inner.transpose(0, 1), outer.flip(spatial), padding=padding).transpose(0, 1)


def orthogonal_kernel(rotation: torch.Tensor, frames: torch.Tensor, nd: int, kernel_size: int,
                      out_channels: int, in_channels: int) -> torch.Tensor:
    """An orthogonal ``kernel_size^nd`` convolution kernel ``[out_channels, in_channels, *k]`` (module docstring).

    ``rotation`` ``[c, c]`` gives the orthogonal 1×1 convolution, ``frames`` ``[(k − 1)·nd, c, r]`` the projectors
    ``V Vᵀ`` of the 2-tap blocks (block ``j`` runs along axis ``j mod nd``); ``c ≥ max(out_channels, in_channels)``.
    Unconstrained parameters: both are orthonormalised here (:func:`orthonormal`, their polar factors).
    """
    return orthogonal_kernels(rotation[None], frames[None], nd, kernel_size, [(out_channels, in_channels)])[0]


def orthogonal_kernels(rotations: torch.Tensor, frames: torch.Tensor, nd: int, kernel_size: int,
                       widths: list[tuple[int, int]]) -> list[torch.Tensor]:
    """:func:`orthogonal_kernel` of each ``(rotations[n], frames[n])`` with ``(out, in)`` channels ``widths[n]``.

    The parameters of all kernels are orthonormalised in one batch: Björck's iteration on the separate small
    matrices of a network took 6× as long, in its launches more than its arithmetic.
    """
    n, c = rotations.shape[0], rotations.shape[-1]
    if frames.shape[:3] != (n, (kernel_size - 1) * nd, c) or len(widths) != n:
        raise ValueError(f"orthogonal_kernels: need rotations [n, {c}, {c}], frames [n, {(kernel_size - 1) * nd}, "
                         f"{c}, r] and n widths; got {tuple(rotations.shape)}, {tuple(frames.shape)}, "
                         f"{len(widths)}")
    q = orthonormal(rotations)
    v = orthonormal(frames)
    projectors = v @ v.transpose(-1, -2)
    eye = torch.eye(c, dtype=rotations.dtype, device=rotations.device)
    out = []
    for rotation, blocks, (out_channels, in_channels) in zip(q, projectors, widths):
        kernel = rotation.reshape(c, c, *(1,) * nd)
        for j, p in enumerate(blocks):
            shape = [c, c] + [1] * nd
            shape[2 + j % nd] = 2
            block = torch.stack([p, eye - p], dim=-1).reshape(shape)
            kernel = compose_kernels(block, kernel)
        # a sliced kernel sent convolutions down a slow path
        out.append(kernel[:out_channels, :in_channels].contiguous())
    return out


def conv_norm_bound(kernel: torch.Tensor) -> float:
    r"""An upper bound on the operator norm of the convolution with ``kernel`` ``[c_out, c_in, *k]`` on any grid,
    zero-padded or not: :math:`\sqrt{\lambda_{\max}(G_0) + \sum_{s\ne0}\|G_s\|_2}` (module docstring), in float64."""
    k = kernel.detach().double()
    nd = k.ndim - 2
    if k.shape[0] > k.shape[1]:
        k = k.transpose(0, 1).flip(tuple(range(2, 2 + nd)))  # Kᵀ: the Gram of the side with fewer channels
    gram = _conv(nd)(k, k, padding=tuple(s - 1 for s in k.shape[2:]))  # [c, c, *(2k − 1)]
    blocks = gram.flatten(2).permute(2, 0, 1)
    centre = blocks.shape[0] // 2
    norms = torch.linalg.matrix_norm(blocks, ord=2)
    top = torch.linalg.eigvalsh(blocks[centre]).max()
    return math.sqrt(float(top + norms.sum() - norms[centre]))


def _into_halves(z: torch.Tensor, top_fn, bottom_fn) -> torch.Tensor:
    """One output ``[top_fn(out=…), bottom_fn(out=…)]`` over the channel halves (strided views, in ``z``'s memory
    format), without half-size temporaries and a concatenation (at the peak of a training step they were a second
    copy)."""
    out = torch.empty_like(z)
    top, bottom = out.chunk(2, dim=1)
    top_fn(out=top)
    bottom_fn(out=bottom)
    return out


def pair_order(z: torch.Tensor) -> torch.Tensor:
    """One boolean per channel pair ``(i, i + C/2)`` of ``z``: True where MaxMin leaves the pair in order
    (``a >= b``), False where it swaps it."""
    a, b = z.chunk(2, dim=1)
    return a >= b


def _sorted_pairs(z: torch.Tensor) -> torch.Tensor:
    a, b = z.chunk(2, dim=1)
    return _into_halves(z, lambda **o: torch.maximum(a, b, **o), lambda **o: torch.minimum(a, b, **o))


class _MaxMin(torch.autograd.Function):
    """MaxMin that keeps one boolean per channel pair for its derivatives instead of both float inputs."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        first = pair_order(z)
        ctx.save_for_backward(first)
        ctx.save_for_forward(first)
        return _sorted_pairs(z)

    @staticmethod
    def _route(first: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``t``'s channel pairs swapped where ``first`` is False: the derivative at the point, which is its own
        transpose. ``lerp`` by the mask as a float, ~6× faster on CPU than ``torch.where``."""
        u, v = t.chunk(2, dim=1)
        weight = first.to(t.dtype)
        if torch.is_grad_enabled() and t.requires_grad:  # a derivative of the derivative (double backward)
            return torch.cat([torch.lerp(v, u, weight), torch.lerp(u, v, weight)], dim=1)
        return _into_halves(t, lambda **o: torch.lerp(v, u, weight, **o), lambda **o: torch.lerp(u, v, weight, **o))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (first,) = ctx.saved_tensors
        return _MaxMin._route(first, grad)

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:
        (first,) = ctx.saved_tensors
        return _MaxMin._route(first, tangent)


def swap_pairs(first: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MaxMin's derivative where it left the channel pairs of ``first`` (``a >= b``) in order and swapped the
    others, applied to ``t``: a permutation, its own transpose; differentiable in ``t``."""
    return _MaxMin._route(first, t)


def max_min(z: torch.Tensor) -> torch.Tensor:
    """MaxMin (GroupSort of size 2) over the channel axis: channel pairs ``(i, i + C/2)`` become their maximum and
    minimum. A permutation at every point, so 1-Lipschitz and norm-preserving. For backward it keeps one boolean
    per pair (its derivative is the same swap), not the float input; without any derivative to take it keeps
    nothing."""
    if (torch.is_grad_enabled() and z.requires_grad) or forward_ad.unpack_dual(z).tangent is not None:
        return _MaxMin.apply(z)
    return _sorted_pairs(z)


def _conv_backward(grad: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, padding: int,
                   mask: tuple[bool, bool, bool]) -> tuple:
    """``(grad_input, grad_weight, grad_bias)`` of a stride-1 convolution, each only where ``mask`` asks for it."""
    nd = weight.ndim - 2
    return torch.ops.aten.convolution_backward(grad, inputs, weight, [weight.shape[0]], [1] * nd, [padding] * nd,
                                               [1] * nd, False, [0] * nd, 1, list(mask))


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """``t``'s layout: channels-last (2D or 3D) where it is laid out so, else contiguous."""
    last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.ndim)
    if last is not None and not t.is_contiguous() and t.is_contiguous(memory_format=last):
        return last
    return torch.contiguous_format


class _OrthogonalBlock(torch.autograd.Function):
    """``Q_2 MaxMin(Q_1 z + b_1) + b_2`` keeping the input ``z`` and one boolean per pair for backward: the
    MaxMin output, which ``Q_2``'s kernel gradient needs, is recomputed from them when that gradient is wanted.
    With a given pair ``order`` (and no biases) it is the block's Jacobian ``Q_2 S Q_1`` at the point where MaxMin
    ordered the pairs so."""

    @staticmethod
    def forward(ctx, z, q1, b1, q2, b2, padding: int, order):
        conv = _conv(q1.ndim - 2)
        u = conv(z, q1, b1, padding=padding)
        if order is None:
            first = pair_order(u)
            out = conv(_sorted_pairs(u), q2, b2, padding=padding)
        else:
            first = order
            out = conv(_MaxMin._route(first, u), q2, b2, padding=padding)
        ctx.padding, ctx.fixed_order = padding, order is not None
        ctx.save_for_backward(z, q1, b1, q2, first)
        return out

    @staticmethod
    def backward(ctx, grad):
        z, q1, b1, q2, first = ctx.saved_tensors
        pad = ctx.padding
        wants = ctx.needs_input_grad
        state_only = state_gradients_only()
        kernel_1, bias_1, kernel_2, bias_2 = (w and not state_only for w in wants[1:5])
        # the input gradient needs the hidden input's shape and layout only: an uninitialised one (an expanded
        # placeholder is copied into that layout first, 3x slower on CPU; a transposed convolution 1.4x)
        hidden = torch.empty((grad.shape[0], q2.shape[1], *grad.shape[2:]), dtype=grad.dtype, device=grad.device,
                             memory_format=_memory_format(z))
        (grad_h, _, _) = _conv_backward(grad, hidden, q2, pad, (True, False, False))
        del hidden
        grad_u = _MaxMin._route(first, grad_h)
        del grad_h
        grad_z, grad_q1, grad_b1 = _conv_backward(grad_u, z, q1, pad, (wants[0], kernel_1, bias_1))
        grad_q2 = grad_b2 = None
        if kernel_2 or bias_2:
            u = _conv(q1.ndim - 2)(z, q1, b1, padding=pad).detach()
            h = _MaxMin._route(first, u) if ctx.fixed_order else _sorted_pairs(u)
            del u
            _, grad_q2, grad_b2 = _conv_backward(grad, h, q2, pad, (False, kernel_2, bias_2))
        return grad_z, grad_q1, grad_b1, grad_q2, grad_b2, None, None


def _plain_block(z, q1, b1, q2, b2, padding: int, order) -> torch.Tensor:
    conv = _conv(q1.ndim - 2)
    u = conv(z, q1, b1, padding=padding)
    return conv(max_min(u) if order is None else swap_pairs(order, u), q2, b2, padding=padding)


def _block(z, q1, b1, q2, b2, padding: int, order) -> torch.Tensor:
    tensors = [t for t in (z, q1, b1, q2, b2) if t is not None]
    tracked = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if tracked and all(forward_ad.unpack_dual(t).tangent is None for t in tensors):
        return _OrthogonalBlock.apply(z, q1, b1, q2, b2, padding, order)
    return _plain_block(z, q1, b1, q2, b2, padding, order)


def orthogonal_block(z: torch.Tensor, q1: torch.Tensor, b1: torch.Tensor, q2: torch.Tensor, b2: torch.Tensor,
                     padding: int) -> torch.Tensor:
    """``Q_2 MaxMin(Q_1 z + b_1) + b_2`` with stride-1 convolutions (2D or 3D by the kernels' rank).

    Under autograd it keeps ``z`` and one boolean per channel pair, not the float MaxMin output: that is
    recomputed (one convolution) when the kernels' gradients are taken, and not at all inside an adjoint solve,
    which wants gradients with respect to the state only (:func:`molrecon.solvers.implicit.state_gradients_only`).
    Forward-mode derivatives and a call without any derivative take the plain composition.
    """
    return _block(z, q1, b1, q2, b2, padding, None)


def orthogonal_block_jacobian(order: torch.Tensor, t: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor,
                              padding: int) -> torch.Tensor:
    """``Q_2 S Q_1 t``: the Jacobian of :func:`orthogonal_block` applied to ``t`` at a point where MaxMin left the
    pairs of ``order`` (``a >= b``, one boolean per pair) in order, differentiable in ``t`` and the kernels.
    Under autograd it keeps, as the block does, ``t`` and the booleans, not the swapped hidden tangent."""
    return _block(t, q1, None, q2, None, padding, order)


__all__ = ["orthonormal", "compose_kernels", "orthogonal_kernel", "orthogonal_kernels", "conv_norm_bound", "max_min",
           "pair_order", "swap_pairs", "orthogonal_block", "orthogonal_block_jacobian"]
