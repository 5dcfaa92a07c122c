"""Load a learned model for reconstruction from a training checkpoint or a shipped pretrained name.

Every model family goes through one weights check (:func:`check_state_dict`): the tensors must be exactly the
model's (names and shapes, each mismatch named) and finite, so a diverged or foreign file is refused with the
tensor that is wrong instead of producing an all-NaN image.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, InputError

# torch.save writes a zip archive (PK\x03\x04); the legacy format is a raw pickle (protocol 2+: \x80)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def check_state_dict(model: torch.nn.Module, state: Mapping[str, Any], where: str | Path) -> None:
    """Refuse weights that do not fit ``model`` exactly or hold NaN/Inf; the error names the tensors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {', '.join(unexpected[:4])}"
                        f"{' ...' if len(unexpected) > 4 else ''}")
    for k, v in state.items():
        if k in expected and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(expected[k].shape):
            problems.append(f"tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}")
    if problems:
        raise CheckpointError(f"{where}: weights do not fit the {getattr(model, 'method_name', 'model')} model: "
                              f"{'; '.join(problems[:3])}")
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{where}: weights contain NaN/Inf in {', '.join(bad[:4])}"
                              f"{' ...' if len(bad) > 4 else ''} (a diverged or corrupted model)")


def _check_checkpoint_file(path: Path) -> None:
    """A file that is not a torch archive at all is named as such (not as an unsafe pickle)."""
    if not path.is_file():
        return  # load_checkpoint names a missing file or a folder
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head and not any(head.startswith(m) for m in _TORCH_MAGIC):
        raise CheckpointError(f"{path}: not a torch checkpoint (the file does not start like a torch.save "
                              f"archive; wrong file or corrupted)")


def load_learned_model(method: str | None = None, checkpoint: str | Path | None = None,
                       pretrained: str | None = None, map_location: str = "cpu") -> torch.nn.Module:
    """Return an eval-mode model from ``checkpoint`` or ``pretrained``; check it is ``method`` when given."""
    if (checkpoint is None) == (pretrained is None):
        raise InputError("give exactly one of a checkpoint or a pretrained model name")
    if pretrained is not None:
        from .pretrained import load_pretrained

        model = load_pretrained(pretrained)
    else:
        from ..train.checkpoint import load_checkpoint, model_from_state
        from .factory import build_model

        path = Path(checkpoint)
        _check_checkpoint_file(path)
        state = load_checkpoint(path, map_location=map_location)
        try:
            probe = build_model(dict(state["model_config"]))
        except Exception as exc:  # noqa: BLE001 - an unknown/incompatible config is the checkpoint's problem
            raise CheckpointError(f"{path}: cannot rebuild the model from its config ({exc})") from None
        model_state = state["model_state"]
        if not isinstance(model_state, Mapping):
            raise CheckpointError(f"{path}: 'model_state' is not a mapping of tensors")
        check_state_dict(probe, model_state, path)
        model = model_from_state(state, path).to(map_location)
    name = getattr(model, "method_name", None)
    if method is not None and name != method:
        raise InputError(f"{checkpoint or pretrained} holds a {name!r} model, not {method!r}")
    return model.eval()
