import pytest
import torch

from molrecon.physics import MultiCoilMRI, RandomMask, simulate_coil_maps
from molrecon.solvers import conjugate_gradient, dc_solve


def random_hpd(n, batch, cond=50.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mats = []
    for _ in range(batch):
        q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.complex128, generator=g))
        eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
        mats.append(q @ torch.diag(eig).to(q.dtype) @ q.conj().T)
    return torch.stack(mats)


CG_PATHS = pytest.mark.parametrize("grad", [True, False], ids=["differentiable", "in-place"])


@CG_PATHS
def test_cg_matches_dense_direct_solve(grad):
    M = random_hpd(12, 3)
    b = torch.randn(3, 12, dtype=torch.complex128)
    with torch.set_grad_enabled(grad):
        x, info = conjugate_gradient(lambda v: (M @ v[..., None])[..., 0], b, max_iter=100, tol=1e-12)
    ref = torch.linalg.solve(M, b)
    torch.testing.assert_close(x, ref, rtol=1e-8, atol=1e-10)
    assert info.all_converged
    assert info.residuals[-1].max() <= 1e-12
    assert info.iterations.max() <= 14  # exact arithmetic: at most n steps; allow rounding


@CG_PATHS
def test_cg_stops_per_batch_element(grad):
    M = random_hpd(16, 2, cond=1.0)  # identity-like: one step
    M[1] = random_hpd(16, 1, cond=1e3, seed=1)[0]
    b = torch.randn(2, 16, dtype=torch.complex128)
    with torch.set_grad_enabled(grad):
        _, info = conjugate_gradient(lambda v: (M @ v[..., None])[..., 0], b, max_iter=100, tol=1e-10)
    assert info.iterations[0] <= 2 < info.iterations[1]
    assert info.all_converged


@CG_PATHS
def test_cg_warm_start_and_zero_rhs(grad):
    M = random_hpd(8, 2)
    b = torch.zeros(2, 8, dtype=torch.complex128)
    b[0] = 1.0
    with torch.set_grad_enabled(grad):
        x, info = conjugate_gradient(lambda v: (M @ v[..., None])[..., 0], b, max_iter=50, tol=1e-10)
        assert torch.equal(x[1], torch.zeros(8, dtype=torch.complex128))
        ref = torch.linalg.solve(M, b)
        x2, info2 = conjugate_gradient(lambda v: (M @ v[..., None])[..., 0], b, x0=ref, max_iter=50, tol=1e-8)
    assert info2.iterations.max() <= 1
    torch.testing.assert_close(x2, ref)


def test_in_place_cg_is_the_differentiable_one_and_leaves_its_inputs_alone():
    """Under no_grad the CG updates its vectors in place and keeps the step lengths on the host: the same
    recurrences, so the iterates agree (to the bit for one element), per-element stopping included, and
    neither the right-hand side nor the warm start is touched."""
    physics = MultiCoilMRI(simulate_coil_maps((24, 20), 4)[None], RandomMask(0.1, 4.0)((24, 20), seed=0))
    rhs = torch.randn(3, 24, 20, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    rhs[2] = 0  # an element that is solved from the start
    x0 = 0.5 * rhs.flip(0)
    rhs_copy, x0_copy = rhs.clone(), x0.clone()

    def op(v):
        return v + 30.0 * physics.normal(v)

    for batch in (slice(0, 1), slice(0, 3)):
        for start in (None, x0[batch]):
            ref, ref_info = conjugate_gradient(op, rhs[batch], start, max_iter=40, tol=1e-5)
            with torch.no_grad():
                x, info = conjugate_gradient(op, rhs[batch], start, max_iter=40, tol=1e-5)
            if batch.stop == 1:
                assert torch.equal(x, ref)
            torch.testing.assert_close(x, ref, rtol=1e-6, atol=1e-6)
            assert torch.equal(info.iterations, ref_info.iterations)
            assert torch.equal(info.converged, ref_info.converged)
            torch.testing.assert_close(info.residual_history(), ref_info.residual_history())
            assert start is None or x.data_ptr() != start.data_ptr()
    assert torch.equal(rhs, rhs_copy) and torch.equal(x0, x0_copy)
    assert ref_info.iterations[2] == 0 and ref_info.iterations[0] != ref_info.iterations[1]


@CG_PATHS
def test_cg_forcing_stops_at_a_fraction_of_the_starting_residual(grad):
    """With ``forcing`` an element stops once its residual is that fraction of its start's (or at ``tol``), on
    both paths alike; a start that solves the system costs no step, as without forcing."""
    M = random_hpd(40, 2, cond=1e3)
    b = torch.randn(2, 40, dtype=torch.complex128)
    ref = torch.linalg.solve(M, b)
    start = ref.clone()
    start[0] += 1e-3 * torch.randn(40, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))

    def op(v):
        return (M @ v[..., None])[..., 0]

    with torch.set_grad_enabled(grad):
        _, full = conjugate_gradient(op, b, x0=start, max_iter=100, tol=1e-12)
        x, forced = conjugate_gradient(op, b, x0=start, max_iter=100, tol=1e-12, forcing=0.1)
        _, none = conjugate_gradient(op, b, x0=start, max_iter=100, tol=1e-12, forcing=0)
    assert torch.equal(none.iterations, full.iterations)  # 0: no forcing
    r0 = (b - op(start)).abs().pow(2).sum(-1).sqrt()
    r = (b - op(x)).abs().pow(2).sum(-1).sqrt()
    assert float(r[0]) <= 0.1 * float(r0[0]) and forced.all_converged
    assert 0 < int(forced.iterations[0]) < int(full.iterations[0])
    assert int(forced.iterations[1]) == 0 == int(full.iterations[1])
    with pytest.raises(ValueError, match="forcing"):
        conjugate_gradient(op, b, forcing=1.0)


def test_cg_differentiable_by_autograd():
    M = random_hpd(6, 1)
    b = torch.randn(1, 6, dtype=torch.complex128, requires_grad=True)
    x, _ = conjugate_gradient(lambda v: (M @ v[..., None])[..., 0], b, max_iter=30, tol=1e-14)
    x.abs().pow(2).sum().backward()
    ref_b = b.detach().clone().requires_grad_(True)
    torch.linalg.solve(M, ref_b).abs().pow(2).sum().backward()
    torch.testing.assert_close(b.grad, ref_b.grad, rtol=1e-6, atol=1e-8)


def test_dc_solve_backward_equals_autograd_through_cg():
    physics = MultiCoilMRI(simulate_coil_maps((16, 16), 3)[None], RandomMask(0.08, 3.0)((16, 16), seed=0))
    g = torch.Generator().manual_seed(3)
    r = torch.randn((1, 16, 16), generator=g, dtype=torch.complex64)
    w = torch.randn((1, 16, 16), generator=g, dtype=torch.complex64)
    grads = []
    for implicit in (True, False):
        rr = r.clone().requires_grad_(True)
        mu = torch.tensor(7.0, requires_grad=True)
        if implicit:
            u = dc_solve(rr, mu, physics.normal, max_iter=200, tol=1e-7)
        else:
            u, _ = conjugate_gradient(lambda v, mu=mu: v + mu * physics.normal(v), rr, max_iter=200, tol=1e-7)
        loss = (u.conj() * w).real.sum() + u.abs().pow(2).sum()
        grads.append(torch.autograd.grad(loss, [rr, mu]))
    for a, b in zip(*grads):
        assert float((a - b).norm() / b.norm()) < 1e-4


def _reference_anderson(T, x0, m, tol, max_iter, reg=1e-4, beta=1.0):
    """Anderson type II for one element, with the Gram matrix recomputed from the whole history each step."""
    x, X, Fs, best, best_res = x0.clone(), [], [], None, float("inf")
    for k in range(max_iter):
        fx = T(x)
        res = float((fx - x).norm() / fx.norm())
        if res < best_res:
            best, best_res = fx.clone(), res
        if res < tol:
            return best, k + 1
        X, Fs = (X + [x.reshape(-1)])[-m:], (Fs + [fx.reshape(-1)])[-m:]
        if len(X) < 2:
            x = fx
            continue
        G = torch.stack(Fs) - torch.stack(X)
        GG = G @ G.T
        h = len(X)
        A = torch.zeros(h + 1, h + 1, dtype=G.dtype)
        A[0, 1:], A[1:, 0] = 1, 1
        A[1:, 1:] = GG + reg * GG.diagonal().max() * torch.eye(h, dtype=G.dtype)
        rhs = torch.zeros(h + 1, dtype=G.dtype)
        rhs[0] = 1
        gamma = torch.linalg.solve(A, rhs)[1:]
        x = (beta * gamma @ torch.stack(Fs) + (1 - beta) * gamma @ torch.stack(X)).reshape(x.shape)
    return best, max_iter


def test_anderson_matches_a_reference_with_the_gram_matrix_recomputed():
    # three independent linear contractions of different rates: each element stops at its own iteration, so the
    # batched solver's incremental Gram matrix, history wrap-around and sub-batch updates are all exercised
    from molrecon.solvers import fixed_point_solve

    g = torch.Generator().manual_seed(3)
    n = 12
    mats = []
    for c in (0.5, 0.9, 0.97):  # symmetric, spectrum in [-c/2, c]
        q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))[0]
        mats.append(q @ torch.diag(torch.linspace(-c / 2, c, n, dtype=torch.float64)) @ q.T)
    shifts = torch.randn(3, n, dtype=torch.float64, generator=g)

    def f(xs, idx):
        return torch.stack([mats[i] @ x + shifts[i] for x, i in zip(xs, idx.tolist())])

    for beta in (1.0, 0.7):
        x, info = fixed_point_solve(f, torch.zeros(3, n, dtype=torch.float64), solver="anderson", m=3,
                                    tol=1e-10, max_iter=200, beta=beta)
        assert bool(info.converged.all())
        for i in range(3):
            ref, iters = _reference_anderson(lambda v, i=i: mats[i] @ v + shifts[i],
                                             torch.zeros(n, dtype=torch.float64), m=3, tol=1e-10, max_iter=200,
                                             beta=beta)
            assert int(info.iterations[i]) == iters
            torch.testing.assert_close(x[i], ref, rtol=1e-9, atol=1e-12)
        assert len(set(info.iterations.tolist())) == 3  # the elements did stop at different iterations


def test_fixed_point_keeps_the_input_and_by_product_of_the_best_iterate():
    from molrecon.solvers import fixed_point_solve

    g = torch.Generator().manual_seed(4)
    A = 0.8 * torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=g))[0]
    b = torch.randn(2, 6, dtype=torch.float64, generator=g)

    def f(xs, idx):
        fx = xs @ A.T + b[idx]
        return fx, 3 * xs  # a by-product of evaluating T at xs

    for solver in ("plain", "anderson"):
        x, info = fixed_point_solve(f, torch.zeros(2, 6, dtype=torch.float64), solver=solver, tol=1e-8,
                                    max_iter=300)
        assert bool(info.converged.all())
        x_k = info.extra["best_input"]
        torch.testing.assert_close(info.extra["best_aux"], 3 * x_k)
        torch.testing.assert_close(x, x_k @ A.T + b)  # the returned value is T at that input
        assert not torch.equal(x_k, torch.zeros_like(x_k))
