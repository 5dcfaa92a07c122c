"""The weights layer: shipped pretrained models (safetensors + JSON sidecar), export from a checkpoint, safe loading."""


import json

import pytest
import torch

from _tiny_models import TINY_MODL, TINY_MOL_SN, tiny_model, write_checkpoint
from molrecon.cli import main
from molrecon.errors import CheckpointError, InputError
from molrecon.physics import MultiCoilMRI, RandomMask, simulate_coil_maps


def test_unknown_pretrained_name_lists_available(tmp_path, capsys):
    from molrecon.weights.pretrained import load_pretrained, save_pretrained

    save_pretrained(tiny_model(), dict(TINY_MODL), "modl-2d-4x", root=tmp_path)
    with pytest.raises(InputError, match=r"unknown pretrained model 'mol-lr-2d-8x' \(available: modl-2d-4x"):
        load_pretrained("mol-lr-2d-8x", root=tmp_path)
    with pytest.raises(InputError, match="unknown pretrained model 'nope'"):
        import molrecon

        molrecon.load_pretrained("nope")
    rc = main(["evaluate", "--pretrained", "nope", "--out", str(tmp_path / "r")])
    assert rc == 2 and "unknown pretrained model 'nope'" in capsys.readouterr().err


def test_bad_pretrained_names_refused(tmp_path):
    from molrecon.weights.pretrained import parse_name, save_pretrained

    assert parse_name("mol-lr-2dt-8x") == {"method": "mol-lr", "dims": "2d+t", "acceleration": 8.0}
    for bad in ("mol-lr-4x", "MOL-LR-2d-4x", "mol-lr-2d-4", "../evil-2d-4x"):
        with pytest.raises(InputError):
            save_pretrained(tiny_model(), dict(TINY_MODL), bad, root=tmp_path)


def test_export_load_round_trip_without_pickle(tmp_path, monkeypatch):
    from molrecon.weights.pretrained import export_pretrained, list_pretrained, load_pretrained

    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # weights that differ from a fresh init
    ckpt = write_checkpoint(tmp_path / "ckpt.pt", model)
    meta = {"validation": {"psnr": 30.1, "ssim": 0.9}, "training": {"device": "2 CPU cores"}}
    weights = export_pretrained(ckpt, "modl-2d-4x", meta, root=tmp_path / "shipped")
    assert weights.name == "modl-2d-4x.safetensors" and weights.with_suffix(".json").exists()

    def no_pickle(*args, **kwargs):
        raise AssertionError("load_pretrained must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_pretrained("modl-2d-4x", root=tmp_path / "shipped")
    monkeypatch.undo()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not loaded.training and loaded.method_name == "modl"
    side = loaded.pretrained_meta
    assert {k: side["model_config"][k] for k in TINY_MODL} == TINY_MODL and side["training"]["step"] == 7
    assert side["training"]["config"]["model"] == TINY_MODL  # the exact training config is kept
    assert side["training"]["command"] == "molrecon train tiny.yaml" and side["validation"]["psnr"] == 30.1
    assert side["training"]["device"] == "2 CPU cores"
    assert [m["name"] for m in list_pretrained(tmp_path / "shipped")] == ["modl-2d-4x"]
    # same reconstruction from the shipped model as from the trained one
    maps = simulate_coil_maps((32, 32), 4)[None]
    physics = MultiCoilMRI(maps, RandomMask(0.08, 4)((32, 32), seed=1))
    y = physics.A(torch.randn(1, 32, 32, dtype=torch.complex64))
    with torch.no_grad():
        assert torch.equal(model.eval()(y, physics), loaded(y, physics))


def _assert_same_fixed_point(model, loaded) -> None:
    """Other solver settings, the same reconstruction (to the solve's tolerance)."""
    maps = simulate_coil_maps((32, 32), 4)[None]
    physics = MultiCoilMRI(maps, RandomMask(0.08, 4)((32, 32), seed=1))
    y = physics.A(torch.randn(1, 32, 32, dtype=torch.complex64))
    with torch.no_grad():
        x_trained, x_shipped = model.eval()(y, physics), loaded(y, physics)
    assert float((x_trained - x_shipped).norm() / x_trained.norm()) < 1e-4


def test_export_with_solver_overrides_keeps_the_fixed_point(tmp_path):
    from molrecon.weights.pretrained import export_pretrained, load_pretrained

    config = {**TINY_MOL_SN, "max_iter": 400, "tol": 1e-6, "cg_iter": 3}
    model = tiny_model(config)
    ckpt = write_checkpoint(tmp_path / "ckpt.pt", model, config)
    with pytest.raises(InputError, match="not solver settings"):
        export_pretrained(ckpt, "mol-sn-2d-4x", root=tmp_path / "shipped", solver_overrides={"lam": 1.0})
    export_pretrained(ckpt, "mol-sn-2d-4x", root=tmp_path / "shipped", solver_overrides={"cg_iter": 12})
    loaded = load_pretrained("mol-sn-2d-4x", root=tmp_path / "shipped")
    assert loaded.cg_iter == 12 and loaded.pretrained_meta["model_config"]["cg_iter"] == 12
    assert loaded.pretrained_meta["inference_overrides"] == {"cg_iter": {"trained": 3, "shipped": 12}}
    assert loaded.pretrained_meta["training"]["config"]["model"]["cg_iter"] == 3
    _assert_same_fixed_point(model, loaded)


def test_retune_changes_only_the_solver_settings_and_keeps_the_trained_values(tmp_path):
    from molrecon.weights.pretrained import export_pretrained, load_pretrained, retune_pretrained

    config = {**TINY_MOL_SN, "max_iter": 400, "tol": 1e-6, "cg_iter": 3}
    model = tiny_model(config)
    ckpt = write_checkpoint(tmp_path / "ckpt.pt", model, config)
    root = tmp_path / "shipped"
    weights = export_pretrained(ckpt, "mol-sn-2d-4x", root=root, solver_overrides={"cg_iter": 12})
    raw = weights.read_bytes()
    with pytest.raises(InputError, match="not solver settings"):
        retune_pretrained("mol-sn-2d-4x", {"lam": 2.0}, "measured", root=root)
    with pytest.raises(InputError, match="no such pretrained model"):
        retune_pretrained("mol-lr-2d-4x", {"cg_iter": 8}, "measured", root=root)
    retune_pretrained("mol-sn-2d-4x", {"cg_iter": 8, "init_cg_iter": 10}, "same PSNR, 10 % faster", root=root)
    loaded = load_pretrained("mol-sn-2d-4x", root=root)
    assert (loaded.cg_iter, loaded.init_cg_iter) == (8, 10) and weights.read_bytes() == raw
    assert loaded.pretrained_meta["inference_overrides"] == {"cg_iter": {"trained": 3, "shipped": 8},
                                                             "init_cg_iter": {"trained": 50, "shipped": 10}}
    assert loaded.pretrained_meta["retuned"][-1]["note"] == "same PSNR, 10 % faster"
    _assert_same_fixed_point(model, loaded)
    # a setting added after a model was stored (its config lacks the key) can still be set
    sidecar = root / "mol-sn-2d-4x.json"
    meta = json.loads(sidecar.read_text())
    del meta["model_config"]["cg_forcing"]
    sidecar.write_text(json.dumps(meta))
    retune_pretrained("mol-sn-2d-4x", {"cg_forcing": 0.2}, "same answers, fewer CG steps", root=root)
    loaded = load_pretrained("mol-sn-2d-4x", root=root)
    assert loaded.cg_forcing == 0.2
    assert loaded.pretrained_meta["inference_overrides"]["cg_forcing"] == {"trained": None, "shipped": 0.2}
    _assert_same_fixed_point(model, loaded)


def test_corrupted_pretrained_weights_refused(tmp_path):
    from molrecon.weights.pretrained import load_pretrained, save_pretrained

    weights = save_pretrained(tiny_model(), dict(TINY_MODL), "modl-2d-4x", root=tmp_path)
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_pretrained("modl-2d-4x", root=tmp_path)
    weights.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError):
        load_pretrained("modl-2d-4x", root=tmp_path, verify=False)


def test_models_command_shows_the_recorded_lipschitz_constant_at_test(tmp_path, monkeypatch, capsys):
    from molrecon.weights.pretrained import record_lipschitz_at_test, save_pretrained

    for name in ("mol-sn-2d-4x", "mol-sn-3d-4x", "mol-sn-2dt-4x"):
        save_pretrained(tiny_model(dict(TINY_MOL_SN)), dict(TINY_MOL_SN), name, root=tmp_path)
    save_pretrained(tiny_model(), dict(TINY_MODL), "modl-2d-4x", root=tmp_path)
    record = {"max_L": 1.52678, "items": 2, "not_monotone": 1, "certified": False, "kind": "3d",
              "command": "python tools/lipschitz_at_test.py mol-sn-3d-4x --kind 3d --record"}
    record_lipschitz_at_test("mol-sn-3d-4x", record, root=tmp_path)
    record_lipschitz_at_test("mol-sn-2d-4x", {**record, "max_L": 0.995021, "not_monotone": 0, "certified": True},
                             root=tmp_path)
    with pytest.raises(InputError, match="lacks"):
        record_lipschitz_at_test("mol-sn-2d-4x", {"max_L": 0.9}, root=tmp_path)
    with pytest.raises(InputError, match="no such pretrained model"):
        record_lipschitz_at_test("mol-lr-2d-4x", record, root=tmp_path)
    monkeypatch.setenv("MOLRECON_PRETRAINED_DIR", str(tmp_path))
    assert main(["models"]) == 0
    lines = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()
             if line.startswith("|")]
    column = lines[0].index("Lip(H) at test")
    cell = {cells[0]: cells[column] for cells in lines[2:]}
    assert cell == {"mol-sn-2d-4x": "<= 0.9951 (proof)", "mol-sn-3d-4x": "1.5268 (estimate, >= 1 at 1 of 2)",
                    "mol-sn-2dt-4x": "not measured", "modl-2d-4x": "-"}


def test_every_shipped_mol_model_records_lip_h_at_test_measured_after_its_export():
    from molrecon.weights.pretrained import LIPSCHITZ_RECORD_KEYS, list_pretrained

    mol = [m for m in list_pretrained() if m["method"] in ("mol-sn", "mol-lr")]
    assert mol
    for meta in mol:
        record = meta.get("lipschitz_at_test")
        assert isinstance(record, dict), f"{meta['name']}: run tools/lipschitz_at_test.py {meta['name']} --record"
        assert set(LIPSCHITZ_RECORD_KEYS) <= set(record)
        # a re-export replaces the weights: the record must be of these weights, so measured after the export
        assert record["date"] >= meta["exported"], meta["name"]
        assert record["certified"] == (meta["method"] == "mol-sn")
        if record["certified"]:
            assert record["max_L"] <= meta["model_config"]["lipschitz_target"] * (1 + 1e-3)


def test_models_command_lists_shipped(tmp_path, monkeypatch, capsys):
    from molrecon.weights import pretrained

    pretrained.save_pretrained(tiny_model(), dict(TINY_MODL), "modl-2d-4x", root=tmp_path,
                               meta={"validation": {"psnr": 31.25, "ssim": 0.912}})
    monkeypatch.setenv("MOLRECON_PRETRAINED_DIR", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "modl-2d-4x" in out and "31.25" in out and "0.9120" in out
