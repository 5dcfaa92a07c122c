"""``molrecon bench fit``: the largest 3D volume on which a training step fits, and how a child's running out of
memory is told apart from a failure."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from molrecon.bench import memory
from molrecon.bench.memory import StepOutOfMemory, measure_step_memory
from molrecon.bench.memory_fit import fit_markdown, run_fit_sweep, summarize_fit
from molrecon.cli import main
from molrecon.errors import InputError, MolreconError


def _card(limits: dict[str, int]):
    """A stand-in for the measurement on a card where ``method`` fits up to ``limits[method]``³."""
    calls = []

    def measure(method, max_iter, shape, **kwargs):
        assert kwargs["penalty_backward"] == "after_data"
        calls.append((method, shape[0], kwargs["model_kwargs"]))
        if shape[0] > limits[method]:
            raise StepOutOfMemory(f"memory benchmark child failed for {method}: CUDA out of memory")
        return {"peak_bytes": shape[0] ** 3 * (40 if method == "modl" else 4) * 2 ** 10, "step_seconds": 0.1}

    return measure, calls


def test_fit_sweep_stops_each_method_at_its_first_out_of_memory():
    measure, calls = _card({"modl": 128, "mol-sn": 224, "mol-lr": 192})
    rows = run_fit_sweep(["modl", "mol-sn", "mol-lr"], [256, 64, 128, 192, 224, 160], {"modl": 10, "mol-sn": 5,
                         "mol-lr": 5}, model_settings={"architecture": "orthogonal"}, measure=measure)
    tried = {m: [r["size"] for r in rows if r["method"] == m] for m in ("modl", "mol-sn", "mol-lr")}
    assert tried == {"modl": [64, 128, 160], "mol-sn": [64, 128, 160, 192, 224, 256],
                     "mol-lr": [64, 128, 160, 192, 224]}
    assert [r["fits"] for r in rows if r["method"] == "modl"] == [True, True, False]
    # MOL runs all its iterations (tol 1e-12) with the given settings; MoDL gets neither
    assert all(kw == {} for m, _, kw in calls if m == "modl")
    assert all(kw == {"architecture": "orthogonal", "tol": 1e-12} for m, _, kw in calls if m != "modl")
    summary = summarize_fit(rows)
    assert summary == {"largest_fit": {"modl": 128, "mol-sn": 224, "mol-lr": 192},
                       "first_failure": {"modl": 160, "mol-sn": 256, "mol-lr": 224}, "modl_out_mol_in": 160}
    text = fit_markdown(rows, summary)
    assert "MoDL no longer fits at 160³, where MOL still trains." in text
    assert "| modl | 10 | 10240 | 81920 | out of memory |" in text


def test_a_recipe_sets_its_methods_model_under_the_given_settings():
    from molrecon.bench.recipes import recipe_settings
    from molrecon.weights.pretrained import pretrained_info

    recipes, backward = recipe_settings(["mol-lr-2d-4x", "mol-sn-3d-4x"], ["modl", "mol-lr", "mol-sn"], "bench")
    assert backward == "after_data" and set(recipes) == {"mol-lr", "mol-sn"}
    shipped = pretrained_info("mol-lr-2d-4x")["training"]["config"]["model"]
    assert recipes["mol-lr"] == {k: v for k, v in shipped.items()
                                 if k not in ("method", "dims", "channels", "layers", "max_iter")}
    assert recipes["mol-sn"]["architecture"] == "orthogonal" and "max_iter" not in recipes["mol-sn"]
    measure, calls = _card({"modl": 64, "mol-sn": 64, "mol-lr": 64})
    run_fit_sweep(["modl", "mol-lr", "mol-sn"], [32], {"modl": 10, "mol-sn": 5, "mol-lr": 5},
                  model_settings={"cg_iter": 7}, method_settings=recipes, measure=measure)
    kwargs = {m: kw for m, _, kw in calls}
    assert kwargs["modl"] == {}
    assert kwargs["mol-lr"] == {**recipes["mol-lr"], "cg_iter": 7, "tol": 1e-12}  # --set over the recipe
    assert kwargs["mol-lr"]["lr_jacobian_steps"] == shipped["lr_jacobian_steps"]
    assert kwargs["mol-sn"] == {**recipes["mol-sn"], "cg_iter": 7, "tol": 1e-12}


@pytest.mark.parametrize("names,methods,message", [
    (["mol-lr-2d-4x"], ["modl", "mol-sn"], "is a mol-lr recipe"),
    (["mol-lr-2d-4x", "mol-lr-3d-4x"], ["mol-lr"], "two --recipe of method mol-lr"),
    (["no-such-model"], ["mol-lr"], "unknown pretrained model"),
])
def test_a_recipe_of_another_method_or_twice_one_method_is_refused(names, methods, message):
    from molrecon.bench.recipes import recipe_settings

    with pytest.raises(InputError, match=message):
        recipe_settings(names, methods, "bench fit")


def test_fit_summary_without_a_crossing():
    measure, _ = _card({"modl": 64, "mol-sn": 32})
    rows = run_fit_sweep(["modl", "mol-sn"], [32, 64, 96], {"modl": 10, "mol-sn": 5}, measure=measure)
    summary = summarize_fit(rows)
    assert summary["modl_out_mol_in"] is None and summary["first_failure"] == {"modl": 96, "mol-sn": 64}
    assert "do not show a size" in fit_markdown(rows, summary)


@pytest.mark.parametrize("bad", [dict(sizes=[]), dict(sizes=[2]), dict(iters={"modl": 10})])
def test_fit_sweep_refuses_bad_settings(bad):
    kwargs = {"methods": ["modl", "mol-sn"], "sizes": [8], "iters": {"modl": 10, "mol-sn": 5}, **bad}
    with pytest.raises(InputError):
        run_fit_sweep(**kwargs)


@pytest.mark.parametrize("returncode,stderr,out_of_memory", [
    (1, "Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.", True),
    (1, "RuntimeError: [enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory", True),
    (-signal.SIGKILL, "", True),
    (1, "Traceback ...\nValueError: shapes do not match", False),
])
def test_a_child_that_runs_out_of_memory_is_told_apart_from_a_failure(monkeypatch, returncode, stderr,
                                                                      out_of_memory):
    monkeypatch.setattr(memory.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, returncode, "",
                                                                                            stderr))
    with pytest.raises(MolreconError) as info:
        measure_step_memory("modl", 2, shape=(8, 8))
    assert isinstance(info.value, StepOutOfMemory) == out_of_memory
    assert "memory benchmark child failed for modl" in str(info.value)


def test_bench_fit_command_writes_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["bench", "fit", "--sizes", "8", "--methods", "modl", "mol-lr", "--modl-k", "2", "--mol-iters",
                 "2", "--coils", "2", "--channels", "4", "--layers", "2", "--out", str(out)]) == 0
    result = json.loads((out / "fit.json").read_text())
    assert result["complete"] and [r["fits"] for r in result["rows"]] == [True, True]
    assert result["rows"][0]["peak_mib"] > 0 and (out / "fit.png").stat().st_size > 0
    assert "| modl | 2 |" in (out / "fit.md").read_text()
    assert main(["bench", "fit", "--modl-k", "0", "--out", str(tmp_path / "refused")]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    assert main(["bench", "fit", "--sizes", "2", "--out", str(tmp_path / "refused")]) == 2
    assert "sizes must be >= 4" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert main(["bench", "fit", "--methods", "modl", "--recipe", "mol-sn-3d-4x", "--out",
                 str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "--recipe mol-sn-3d-4x is a mol-sn recipe" in err and not (tmp_path / "refused").exists()
