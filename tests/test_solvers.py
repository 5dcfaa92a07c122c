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


def test_cg_matches_dense_direct_solve():
    M = random_hpd(12, 3)
    b = torch.randn(3, 12, dtype=torch.complex128)
    x, info = conjugate_gradient(lambda v: (M @ v[..., None])[..., 0], b, max_iter=100, tol=1e-12)
    ref = torch.linalg.solve(M, b)
    torch.testing.assert_close(x, ref, rtol=1e-8, atol=1e-10)
    assert info.all_converged
    assert info.residuals[-1].max() <= 1e-12
    assert info.iterations.max() <= 14  # exact arithmetic: at most n steps; allow rounding


def test_cg_stops_per_batch_element():
    M = random_hpd(16, 2, cond=1.0)  # identity-like: one step
    M[1] = random_hpd(16, 1, cond=1e3, seed=1)[0]
    b = torch.randn(2, 16, dtype=torch.complex128)
    _, info = conjugate_gradient(lambda v: (M @ v[..., None])[..., 0], b, max_iter=100, tol=1e-10)
    assert info.iterations[0] <= 2 < info.iterations[1]
    assert info.all_converged


def test_cg_warm_start_and_zero_rhs():
    M = random_hpd(8, 2)
    b = torch.zeros(2, 8, dtype=torch.complex128)
    b[0] = 1.0
    x, info = conjugate_gradient(lambda v: (M @ v[..., None])[..., 0], b, max_iter=50, tol=1e-10)
    assert torch.equal(x[1], torch.zeros(8, dtype=torch.complex128))
    ref = torch.linalg.solve(M, b)
    x2, info2 = conjugate_gradient(lambda v: (M @ v[..., None])[..., 0], b, x0=ref, max_iter=50, tol=1e-8)
    assert info2.iterations.max() <= 1
    torch.testing.assert_close(x2, ref)


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
