"""The divergence guards of training, in one object with its own state (``docs/conventions.md``).

:class:`HealthMonitor` looks at the numbers of each step (already reduced over the ranks, so every rank reaches
the same verdict) and says why the step counts as diverging, or ``None``:

- the forward fixed-point iteration diverged: final relative residual above ``residual_limit`` (or not finite);
- the Lipschitz estimate stayed above ``lipschitz_limit`` for ``lipschitz_patience`` consecutive steps: only
  for the methods whose monotone constraint is an *estimate* (:data:`molrecon.names.ESTIMATED_LIPSCHITZ_METHODS`;
  MOL-SN is certified, the DEQ unconstrained, so there the constant is only logged);
- no slice converged for ``nonconverged_patience`` consecutive steps (0 switches this guard off).

The consecutive-step counters restart after a rollback (:meth:`HealthMonitor.reset`).
"""

from __future__ import annotations

import math
from typing import Any

from ..names import ESTIMATED_LIPSCHITZ_METHODS


class HealthMonitor:
    """Per-step divergence guards for the training of ``method`` with the ``train`` section ``tcfg``."""

    def __init__(self, method: str, tcfg: dict[str, Any]) -> None:
        self.method = method
        self.residual_limit = tcfg["residual_limit"]
        self.lipschitz_limit = tcfg["lipschitz_limit"]
        self.lipschitz_patience = tcfg["lipschitz_patience"]
        self.nonconverged_patience = tcfg["nonconverged_patience"]
        self.reset()

    @property
    def watches_lipschitz(self) -> bool:
        """Whether this method's monotonicity rests on an estimated Lipschitz constant."""
        return self.method in ESTIMATED_LIPSCHITZ_METHODS

    def reset(self) -> None:
        """Forget the consecutive-step counts (after a rollback the run restarts from a good state)."""
        self.lipschitz_bad = 0
        self.nonconverged_bad = 0

    def check(self, logs: dict[str, float]) -> str | None:
        """Why the step with ``logs`` counts as diverging, or ``None`` when it is healthy."""
        res = logs.get("final_residual")
        if res is not None and (not math.isfinite(res) or res > self.residual_limit):
            return (f"forward fixed-point iteration diverged (final relative residual {res:.3g} > "
                    f"residual_limit {self.residual_limit})")
        lip = logs.get("lipschitz")
        if lip is not None and self.watches_lipschitz:
            bad = not math.isfinite(lip) or lip > self.lipschitz_limit
            self.lipschitz_bad = self.lipschitz_bad + 1 if bad else 0
            if self.lipschitz_bad >= self.lipschitz_patience:
                return (f"Lipschitz estimate {lip:.3g} above lipschitz_limit {self.lipschitz_limit} for "
                        f"{self.lipschitz_bad} consecutive steps (the monotone constraint is lost)")
        if self.nonconverged_patience and "converged_frac" in logs:
            self.nonconverged_bad = self.nonconverged_bad + 1 if logs["converged_frac"] == 0 else 0
            if self.nonconverged_bad >= self.nonconverged_patience:
                return f"no slice converged in the forward solve for {self.nonconverged_bad} consecutive steps"
        return None
