r"""Robustness and guarantees, measured: worst-case and random k-space perturbations, convergence far past the
training iteration count, uniqueness of the fixed point, distribution shift, and certificates beside reality.

Notation: ``y`` is the (masked) multi-coil k-space of one slice, ``M`` the 0/1 sampling mask, :math:`b = My` the
measured data and :math:`x(b)` a model's reconstruction. All norms are Euclidean over one slice: k-space norms
over ``[C, *spatial]`` (complex), image norms over ``[*spatial]`` (complex) — the norms of the MOL theorem.

Worst-case perturbation (the paper's adversarial experiment)
------------------------------------------------------------
For each radius :math:`\epsilon`,

.. math:: \max_{\delta}\ \|x(b+\delta) - x(b)\|_2^2 \quad\text{s.t.}\quad \delta = M\delta,\quad
          \|\delta\|_2 \le r = \epsilon\,\|b\|_2,

solved by projected, normalised gradient ascent (:func:`worst_case_perturbation`):

.. math:: \delta_{k+1} = P\big(\delta^\star + \eta_k\, r\, g^\star/\|g^\star\|\big),\qquad
          P(\delta) = M\delta\cdot\min\big(1, r/\|M\delta\|\big),

where :math:`\delta^\star` is the best iterate so far and :math:`g^\star` the gradient there (PyTorch's gradient
of a real loss in a complex variable is the steepest-ascent direction). The step :math:`\eta_k` (in units of the
radius) grows by 1.5 after an improvement and halves after a failure (then the next step restarts from
:math:`\delta^\star`): a backtracking ascent that never accepts a worse point. With a large step the update is a
power iteration on :math:`J^H J` (:math:`J = \partial x/\partial b`), so for small :math:`\epsilon` it finds the
top singular direction of the linearised reconstruction. The start is a random Gaussian point of the sphere
(``restarts`` of them; the best is kept). Gradients go through the reconstruction: implicitly through the fixed
point for MOL/DEQ (``model(y, physics)``), by autograd through the unrolled graph for MoDL.

Reported per method and :math:`\epsilon` (after re-solving both :math:`x(b)` and :math:`x(b+\delta^\star)` with a
tight tolerance): the amplification :math:`\|\Delta x\|/\|\delta\|`, the PSNR drop
:math:`\mathrm{PSNR}(x(b)) - \mathrm{PSNR}(x(b+\delta))` against the target, and for MOL the robustness constant
:math:`C` of ``model.certificate(physics)`` (a guarantee for MOL-SN: :math:`\|x^\star(b_1) - x^\star(b_2)\| \le
C\|b_1 - b_2\|`). The certificate speaks of *exact* fixed points; the computed ones carry the a-posteriori bounds
:math:`e_1, e_2` of ``info.extra["error_bound"]`` (:math:`\|x_{out} - x^\star\| \le e`), so the amplification of
the exact fixed points lies in

.. math:: \Big[\frac{\|\Delta x\| - e_1 - e_2}{\|\delta\|},\ \frac{\|\Delta x\| + e_1 + e_2}{\|\delta\|}\Big],

and the certificate is *violated* only if the lower end exceeds :math:`C`; it is *confirmed* when the upper end
does not.

Random perturbations
--------------------
Circular complex Gaussian :math:`\delta` on the sampled locations, rescaled to exactly :math:`\|\delta\| = r`
(the same norms as the attack); mean and maximum amplification over ``random_draws`` draws.

Convergence
-----------
The MOL block :math:`T` (model's own inexact data-consistency step) iterated plainly,
:math:`x_{n+1} = T(x_n)` from the CG-SENSE start, for ``conv_iters`` iterations, far past the training count:
residual :math:`\|x_{n+1} - x_n\|/\|x_n\|` and PSNR of :math:`x_{n+1}` per iteration; and the model's solver
(Anderson by default) with a tiny tolerance, whose residual is the solver's
:math:`\|T(x_n) - x_n\|/\|T(x_n)\|`. MoDL is iterated past its ``K`` the same way (denoiser, then its CG
data consistency) — an unrolled network has no fixed point to converge to.

Uniqueness
----------
The fixed point solved (tight tolerance) from the starts zero, :math:`A^H b`, Gaussian noise of the norm of
:math:`A^H b`, and CG-SENSE. Spread :math:`= \max_{i,j} \|x_i - x_j\| / \|x_{\text{cg-sense}}\|`. For a
contraction (MOL-SN) it is bounded by the a-posteriori bounds; an unconstrained DEQ may land elsewhere.

Distribution shift
------------------
The models (trained at one acceleration) on the same slices under other acceleration factors (fastMRI random
masks) and with extra complex Gaussian k-space noise at given SNRs; CG-SENSE alongside as a reference.

Layout
------
``config`` (examples, :class:`RobustnessConfig`) · ``adapters`` (reconstruct and score any model, load models) ·
``attack`` (perturbations and certificates) · ``studies`` (convergence, uniqueness, distribution shift) ·
``runner`` (:func:`run_robustness`, verdicts, examples) · ``report`` (markdown and JSON) · ``plots`` (PNG).
"""

from ...physics import default_center_fraction
from .adapters import load_models, measured_data, reconstruct
from .attack import (
    AttackResult,
    certificate_of,
    certificate_verdict,
    measure_perturbations,
    project_ball,
    random_perturbation,
    worst_case_perturbation,
)
from .config import PARTS, Example, RobustnessConfig
from .report import markdown_report, summary_rows, write_report
from .runner import load_examples, run_robustness, slice_indices, verdicts
from .studies import convergence_study, evaluate_setting, plain_iteration, remask_examples, uniqueness_study

__all__ = [
    "PARTS", "Example", "RobustnessConfig", "AttackResult", "measured_data", "reconstruct",
    "project_ball", "random_perturbation", "worst_case_perturbation", "measure_perturbations", "certificate_of",
    "certificate_verdict", "plain_iteration", "summary_rows", "markdown_report", "write_report",
    "convergence_study", "uniqueness_study", "evaluate_setting",
    "remask_examples", "default_center_fraction", "run_robustness", "verdicts", "load_models", "load_examples",
    "slice_indices",
]
