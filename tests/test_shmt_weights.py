"""Checkpoint import: safe reading, layout checks, safetensors split, manifest, verification."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shmt_cli.checkpoint import CheckpointError, UnsafeCheckpointError, read_checkpoint
from shmt_cli.engines.shmt import weights as W
from shmt_cli.engines.shmt.config import config_from_json, config_to_json, variant_config


def _read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


@pytest.fixture(scope="module")
def tiny_state_dicts(random_official_state_dicts: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Official-style tiny state dicts with random values and the EMA shadows (see tests/conftest.py)."""
    return random_official_state_dicts


def _save_lightning(path: Path, sd: dict[str, torch.Tensor], epoch: int = 700) -> Path:
    torch.save({"state_dict": sd, "epoch": epoch, "global_step": 123456, "optimizer_states": []}, path)
    return path


@pytest.fixture(scope="module")
def h4_ckpt(tmp_path_factory, tiny_state_dicts) -> Path:
    return _save_lightning(tmp_path_factory.mktemp("ckpt") / "epoch=000700.ckpt", tiny_state_dicts["h4"])


# --- expected layout ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["h0", "h4"])
def test_expected_full_layout_equals_official_state_dict(golden_dir: Path, variant: str) -> None:
    official = _read_tsv(golden_dir / f"state_dict_{variant}.tsv")
    assert len(official) == 1085
    assert W.expected_shapes(variant, "full") == official


def test_expected_tiny_layout_equals_golden(tiny_official_state_dicts) -> None:
    for variant, sd in tiny_official_state_dicts.items():
        assert W.expected_shapes(variant, "tiny") == {k: tuple(v.shape) for k, v in sd.items()}


def test_ema_key_flattening() -> None:
    assert (
        W.ema_key("input_blocks.1.0.in_layers.2.weight")
        == "model_ema.diffusion_modelinput_blocks10in_layers2weight"
    )


# --- reading --------------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch_zip", "plain_pickle"])
def test_code_carrying_pickle_is_refused_and_never_run(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.zeros(2)}, "callbacks": _RunsCode(marker)}
    if writer == "torch_zip":
        torch.save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt"):
        read_checkpoint(path)
    assert not marker.exists()


def test_read_lightning_bare_and_legacy_format(tmp_path: Path) -> None:
    sd = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    lightning = read_checkpoint(_save_lightning(tmp_path / "l.ckpt", sd, epoch=3))
    assert lightning.epoch == 3 and lightning.global_step == 123456
    assert torch.equal(lightning.state_dict["a"], sd["a"])
    torch.save(sd, tmp_path / "bare.pt")
    assert set(read_checkpoint(tmp_path / "bare.pt").state_dict) == {"a", "b"}
    torch.save({"state_dict": sd}, tmp_path / "old.ckpt", _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(tmp_path / "old.ckpt").state_dict["b"], sd["b"])


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt"):
        read_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(CheckpointError, match="no such"):
        read_checkpoint(tmp_path / "absent.ckpt")
    torch.save({"state_dict": {"x": 1}}, tmp_path / "nontensor.ckpt")
    with pytest.raises(CheckpointError, match="not tensors"):
        read_checkpoint(tmp_path / "nontensor.ckpt")


# --- import ---------------------------------------------------------------------------------


def test_import_splits_verifies_and_accounts_for_every_key(
    tmp_path: Path, h4_ckpt: Path, tiny_state_dicts
) -> None:
    sd = tiny_state_dicts["h4"]
    out = tmp_path / "weights"
    report = W.import_checkpoint(h4_ckpt, out)
    assert (report.variant, report.size) == ("h4", "tiny")
    assert set(report.written) | set(report.ignored) == set(sd)
    assert not set(report.written) & set(report.ignored)
    assert all("schedule" in reason for reason in report.ignored.values()) and len(report.ignored) == 12

    shmt = load_file(out / "shmt_h4.safetensors")
    vq = load_file(out / W.VQ_FILE)
    assert set(shmt) == {k for k in sd if k.startswith(("model.", "model_ema.", "corr_stage_model."))}
    assert set(vq) == {k.removeprefix(W.VQ_PREFIX) for k in sd if k.startswith(W.VQ_PREFIX)}
    for key, tensor in shmt.items():
        assert torch.equal(tensor, sd[key]), key
    assert torch.equal(vq["quantize.embedding.weight"], sd["first_stage_model.quantize.embedding.weight"])

    manifest = json.loads((out / W.MANIFEST_NAME).read_text())["files"]
    entry = manifest["shmt_h4.safetensors"]
    assert entry["variant"] == "h4" and entry["size"] == "tiny" and entry["kind"] == "shmt"
    assert entry["source"] == "epoch=000700.ckpt" and entry["tensors"] == len(shmt) and entry["ema"] is True
    assert entry["sha256"] == W.sha256_file(out / "shmt_h4.safetensors")
    assert entry["global_step"] == 123456 and entry["epoch"] == 700
    assert manifest[W.VQ_FILE]["variant"] is None and manifest[W.VQ_FILE]["tensors"] == len(vq)
    assert all(r.ok for r in W.verify_weights(out))
    assert [e.file for e in W.list_weights(out)] == ["shmt_h4.safetensors", W.VQ_FILE]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_imported_files_honour_the_umask(tmp_path: Path, h4_ckpt: Path) -> None:
    # Weights in a shared folder must be readable by the machine's other users (umask 022 -> 0644),
    # not private as mkstemp creates them.
    previous = os.umask(0o022)
    try:
        import shmt_cli.atomic as atomic

        saved, atomic._UMASK = atomic._UMASK, 0o022
        try:
            W.import_checkpoint(h4_ckpt, tmp_path / "w")
        finally:
            atomic._UMASK = saved
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "w").iterdir()}
    assert modes == {
        "shmt_h4.safetensors": 0o644,
        "shmt_h4.config.json": 0o644,
        W.VQ_FILE: 0o644,
        W.MANIFEST_NAME: 0o644,
    }


def test_second_variant_shares_the_vq_and_vq_loads(tmp_path: Path, h4_ckpt: Path, tiny_state_dicts) -> None:
    out = tmp_path / "w"
    W.import_checkpoint(h4_ckpt, out)
    vq_sha = W.list_weights(out)[-1].sha256
    h0 = _save_lightning(tmp_path / "h0.ckpt", tiny_state_dicts["h0"], epoch=800)
    report = W.import_checkpoint(h0, out)
    assert report.variant == "h0"
    entries = {e.file: e for e in W.list_weights(out)}
    assert set(entries) == {"shmt_h0.safetensors", "shmt_h4.safetensors", W.VQ_FILE}
    assert entries[W.VQ_FILE].sha256 == vq_sha and entries[W.VQ_FILE].source == "epoch=000700.ckpt"
    first_conv = load_file(out / "shmt_h0.safetensors")[W.FIRST_CONV]
    assert first_conv.shape[1] == 121
    model = W.load_vq_model(out, verify=True)
    assert torch.equal(
        model.quantize.embedding.weight, tiny_state_dicts["h4"]["first_stage_model.quantize.embedding.weight"]
    )


def test_different_vq_is_refused_unless_replaced(tmp_path: Path, h4_ckpt: Path, tiny_state_dicts) -> None:
    out = tmp_path / "w"
    W.import_checkpoint(h4_ckpt, out)
    before = (out / "shmt_h4.safetensors").stat().st_mtime_ns
    other = dict(tiny_state_dicts["h4"])
    other["first_stage_model.quant_conv.bias"] = other["first_stage_model.quant_conv.bias"] + 1
    ckpt = _save_lightning(tmp_path / "other.ckpt", other)
    with pytest.raises(CheckpointError, match="differs"):
        W.import_checkpoint(ckpt, out)
    assert (out / "shmt_h4.safetensors").stat().st_mtime_ns == before
    assert all(r.ok for r in W.verify_weights(out))
    W.import_checkpoint(ckpt, out, replace_vq=True)
    assert torch.equal(
        load_file(out / W.VQ_FILE)["quant_conv.bias"], other["first_stage_model.quant_conv.bias"]
    )
    assert all(r.ok for r in W.verify_weights(out))


def test_standalone_vq_checkpoint(tmp_path: Path, tiny_state_dicts) -> None:
    sd = tiny_state_dicts["h4"]
    without_vq = {k: v for k, v in sd.items() if not k.startswith(W.VQ_PREFIX)}
    raw_only = {k: v for k, v in without_vq.items() if not k.startswith(W.EMA_PREFIX)}
    ckpt = _save_lightning(tmp_path / "novq.ckpt", raw_only)
    with pytest.raises(CheckpointError, match="--vq"):
        W.import_checkpoint(ckpt, tmp_path / "w")
    vq_sd = {k.removeprefix(W.VQ_PREFIX): v for k, v in sd.items() if k.startswith(W.VQ_PREFIX)}
    vq_sd["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)
    vq_sd["loss.logvar"] = torch.zeros(())
    vq_ckpt = _save_lightning(tmp_path / "model.ckpt", vq_sd)
    report = W.import_checkpoint(ckpt, tmp_path / "w", vq_ckpt=vq_ckpt)
    assert {k for k in report.ignored if k.startswith("model.ckpt:loss.")} == {
        "model.ckpt:loss.discriminator.main.0.weight",
        "model.ckpt:loss.logvar",
    }
    entries = {e.file: e for e in W.list_weights(tmp_path / "w")}
    assert entries[W.VQ_FILE].source == "model.ckpt" and entries["shmt_h4.safetensors"].ema is False
    assert set(load_file(tmp_path / "w" / W.VQ_FILE)) == {k for k in vq_sd if not k.startswith("loss.")}


@pytest.mark.parametrize("damage", ["unknown", "missing", "shape", "schedule", "width"])
def test_bad_checkpoints_are_refused_before_writing(tmp_path: Path, tiny_state_dicts, damage: str) -> None:
    sd = dict(tiny_state_dicts["h4"])
    if damage == "unknown":
        sd["model.diffusion_model.extra.weight"] = torch.zeros(1)
        match = "unknown"
    elif damage == "missing":
        del sd["corr_stage_model.ref_enc.10.bias"]
        match = "IDA keys missing"
    elif damage == "shape":
        sd["corr_stage_model.ref_enc.10.bias"] = torch.zeros(255)
        match = "unexpected shapes"
    elif damage == "schedule":
        sd["betas"] = sd["betas"] * 1.01
        match = "betas"
    else:
        sd[W.FIRST_CONV] = torch.zeros(48, 106, 3, 3)
        match = "width 48"
    ckpt = _save_lightning(tmp_path / f"{damage}.ckpt", sd)
    with pytest.raises(CheckpointError, match=match):
        W.import_checkpoint(ckpt, tmp_path / "w")
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_dead_proj_convs_may_be_absent(tmp_path: Path, tiny_state_dicts) -> None:
    sd = {k: v for k, v in tiny_state_dicts["h0"].items() if ".proj_convs." not in k}
    report = W.import_checkpoint(_save_lightning(tmp_path / "h0.ckpt", sd), tmp_path / "w")
    assert report.variant == "h0"
    assert set(load_file(tmp_path / "w" / "shmt_h0.safetensors")) == {
        k for k in sd if k.startswith(("model.", "model_ema.", "corr_stage_model."))
    }


def test_variant_is_read_from_the_first_conv(tiny_state_dicts) -> None:
    assert W.detect_variant(tiny_state_dicts["h0"]) == "h0"
    assert W.detect_variant(tiny_state_dicts["h4"]) == "h4"
    with pytest.raises(CheckpointError, match="input channels"):
        W.detect_variant({W.FIRST_CONV: torch.zeros(32, 100, 3, 3)})


# --- verification and location --------------------------------------------------------------


def test_verify_detects_tampering_missing_and_unlisted_files(tmp_path: Path, h4_ckpt: Path) -> None:
    out = tmp_path / "w"
    W.import_checkpoint(h4_ckpt, out)
    target = out / "shmt_h4.safetensors"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the last tensor's data
    target.write_bytes(bytes(data))
    (out / "stray.safetensors").write_bytes(b"")
    results = {r.file: r for r in W.verify_weights(out)}
    assert any("sha256" in p for p in results["shmt_h4.safetensors"].problems)
    assert results[W.VQ_FILE].ok
    assert results["stray.safetensors"].problems == ["not listed in the manifest"]
    with pytest.raises(CheckpointError, match="manifest"):
        W.load_weights(out, "shmt_h4.safetensors", verify=True)
    (out / W.VQ_FILE).unlink()
    results = {r.file: r for r in W.verify_weights(out)}
    assert results[W.VQ_FILE].problems == ["file is missing"]
    # Nothing installed is not a damaged install (the CLI says "no weights installed")...
    assert W.verify_weights(tmp_path / "empty") == []
    # ...but safetensors files without a manifest are.
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "shmt_h4.safetensors").write_bytes(b"")
    assert not W.verify_weights(tmp_path / "orphan")[0].ok


def test_weights_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(W.WEIGHTS_ENV, str(tmp_path / "env"))
    assert W.weights_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert W.weights_dir() == tmp_path / "env"
    monkeypatch.delenv(W.WEIGHTS_ENV)
    repo = Path(__file__).resolve().parents[1]
    assert W.weights_dir() == repo / "weights"
    assert os.fspath(W.weights_dir("~/w")).startswith(os.path.expanduser("~"))


# --- architecture JSON ------------------------------------------------------------------------


def test_import_writes_the_architecture_and_loading_reads_it(tmp_path: Path, h4_ckpt: Path) -> None:
    out = tmp_path / "w"
    W.import_checkpoint(h4_ckpt, out)
    entry = W.read_manifest(out)["shmt_h4.safetensors"]
    path = W.config_path(out, entry.file)
    assert path.name == "shmt_h4.config.json"
    data = json.loads(path.read_text())
    assert data["level"] == 4 and data["unet"]["model_channels"] == 32 and data["unet"]["in_channels"] == 106
    assert W.model_config(out, entry) == variant_config(4, "tiny")
    # What the JSON says wins over the size class: it is the record of the imported architecture.
    data["unet"]["num_head_channels"] = 16
    path.write_text(json.dumps(data))
    assert W.model_config(out, entry).unet.num_head_channels == 16
    # A JSON for another variant or a damaged one is refused with the file named.
    data["level"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"shmt_h4\.config\.json.*SHMT-h0"):
        W.model_config(out, entry)
    path.write_text("{")
    with pytest.raises(CheckpointError, match=r"shmt_h4\.config\.json: unreadable"):
        W.model_config(out, entry)
    problems = {r.file: r.problems for r in W.verify_weights(out)}["shmt_h4.safetensors"]
    assert len(problems) == 1 and "unreadable model config" in problems[0]


def test_folders_imported_before_the_json_use_their_size_class(tmp_path: Path, h4_ckpt: Path) -> None:
    out = tmp_path / "w"
    W.import_checkpoint(h4_ckpt, out)
    W.config_path(out, "shmt_h4.safetensors").unlink()
    entry = W.read_manifest(out)["shmt_h4.safetensors"]
    assert W.model_config(out, entry) == variant_config(4, "tiny")
    assert all(r.ok for r in W.verify_weights(out))


@pytest.mark.parametrize(("level", "size"), [(0, "full"), (4, "full"), (0, "tiny"), (4, "tiny")])
def test_config_json_round_trip(level: int, size: str) -> None:
    config = variant_config(level, size)  # type: ignore[arg-type]
    assert config_from_json(json.loads(json.dumps(config_to_json(config)))) == config


def test_dead_proj_convs_follow_the_unet_skip_widths() -> None:
    # One 1x1 conv per UNet input block, as wide as its output, reading source features + warped reference.
    _, ida = W.model_shapes(variant_config(4, "tiny"))
    widths = [ida[f"proj_convs.{i}.weight"] for i in range(12)]
    assert widths == [(w, 68 + 51, 1, 1) for w in [32] * 4 + [64] * 3 + [96] * 3 + [128] * 2]
    assert "proj_convs.12.weight" not in ida
