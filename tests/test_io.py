"""molrecon.io: the strict JSON writer."""

import numpy as np


def test_report_json_has_no_infinities(tmp_path):
    """A DEQ's certificate can hold inf (no monotonicity): the JSON writer turns it into null."""
    import json

    import torch

    from molrecon.io import write_json_atomic

    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": [1.0, float("inf")], "b": {"c": float("nan")}, "d": "x",
                             "t": torch.tensor([2.0, float("-inf")]), "n": np.float64("nan"), "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": [1.0, None], "b": {"c": None}, "d": "x", "t": [2.0, None],
                                            "n": None, "p": str(tmp_path)}
