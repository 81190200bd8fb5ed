"""Import an official SHMT Lightning checkpoint into a weights folder (see `store.py` for the layout).

Nothing here downloads anything. An official checkpoint is read with ``torch.load(weights_only=True)``
(a file that would need arbitrary unpickling is refused), every key is checked against the layout
our modules give (`layout.py`), and the tensors are split into:

* ``shmt_<variant>.safetensors``: ``model.diffusion_model.*`` (raw UNet), ``model_ema.*`` (EMA
  shadows + ``decay`` + ``num_updates``, when the checkpoint has them) and ``corr_stage_model.*``
  (IDA, including the dead ``proj_convs``), all under their official names, with its architecture
  in ``shmt_<variant>.config.json``;
* ``vq_f4.safetensors``: the VQ-f4 autoencoder under the standalone LDM names (no prefix), from the
  checkpoint's ``first_stage_model.*`` or from a separate LDM vq-f4 checkpoint;
* ``manifest.json``: per file the kind, variant, size class, source file name, sha256, tensor count.

The 12 schedule buffers are not written: they are recomputed by the sampler and must equal them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from shmt_cli.checkpoint import CheckpointError, read_checkpoint
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt.config import EMA_PREFIX, IDA_PREFIX, UNET_PREFIX, VARIANT_LEVELS, variant_config
from shmt_cli.engines.shmt.sampler import ldm_schedule_buffers
from shmt_cli.engines.shmt.weights import layout
from shmt_cli.engines.shmt.weights.store import (
    VQ_FILE,
    WeightsEntry,
    file_stamp,
    model_file,
    read_manifest,
    write_manifest,
    write_model_config,
    write_safetensors,
)


@dataclass
class ImportReport:
    """What :func:`import_checkpoint` did: files written and the fate of every checkpoint key."""

    variant: layout.Variant
    size: layout.SizeClass
    entries: list[WeightsEntry]
    written: dict[str, str] = field(default_factory=dict)  # source key -> file it went to
    ignored: dict[str, str] = field(default_factory=dict)  # source key -> reason


def _check_shapes(
    source: Path, tensors: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> None:
    wrong = [
        f"{k} {tuple(t.shape)} (expected {expected[k]})"
        for k, t in tensors.items()
        if tuple(t.shape) != expected[k]
    ]
    if wrong:
        raise CheckpointError(f"{source}: {len(wrong)} tensors have unexpected shapes: {wrong[:5]}")


def _require_all(source: Path, present: Iterable[str], wanted: Iterable[str], what: str) -> None:
    missing = sorted(set(wanted) - set(present))
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} {what} keys missing, e.g. {missing[:5]}")


def import_checkpoint(
    ckpt: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str],
    vq_ckpt: str | os.PathLike[str] | None = None,
    *,
    replace_vq: bool = False,
) -> ImportReport:
    """Split an official SHMT checkpoint into verified safetensors files under ``weights_dir``.

    ``vq_ckpt`` (a standalone LDM vq-f4 Lightning checkpoint) supplies the autoencoder when the SHMT
    checkpoint has no ``first_stage_model.*``, and takes precedence when both exist. Both variants
    share ``vq_f4.safetensors``; a VQ that differs from the one already imported is refused unless
    ``replace_vq``. Every checkpoint key is written or listed in ``ImportReport.ignored``;
    unknown keys, missing keys and wrong shapes raise ``CheckpointError`` before anything is written.
    """
    checkpoint = read_checkpoint(ckpt, "SHMT")
    sd = checkpoint.state_dict
    source = checkpoint.path
    variant, size = layout.detect_variant(sd), layout.detect_size(sd)
    config = variant_config(VARIANT_LEVELS[variant], size)
    expected = layout.checkpoint_shapes(config, size)

    unknown = sorted(k for k in sd if k not in expected)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} keys unknown to SHMT-{variant}, e.g. {unknown[:5]}")
    _check_shapes(source, sd, expected)

    unet_keys = [k for k in expected if k.startswith(UNET_PREFIX)]
    ema_keys = [k for k in expected if k.startswith(EMA_PREFIX)]
    ida_keys = [k for k in expected if k.startswith(IDA_PREFIX)]
    vq_keys = [k for k in expected if k.startswith(layout.VQ_PREFIX)]
    _require_all(source, sd, unet_keys, "UNet")
    # proj_convs never reach the UNet (spec §2.5): tolerate checkpoints that dropped them.
    _require_all(source, sd, [k for k in ida_keys if ".proj_convs." not in k], "IDA")
    has_ema = any(k in sd for k in ema_keys)
    if has_ema:
        _require_all(source, sd, ema_keys, "EMA")
    has_vq = any(k in sd for k in vq_keys)
    if has_vq:
        _require_all(source, sd, vq_keys, "first-stage (VQ)")
    elif vq_ckpt is None:
        raise CheckpointError(
            f"{source}: the checkpoint has no first_stage_model.* weights; "
            "pass the LDM vq-f4 checkpoint (--vq)"
        )

    report = ImportReport(variant=variant, size=size, entries=[])
    schedule = ldm_schedule_buffers()
    for name, reference in schedule.items():
        if name in sd:
            if not torch.allclose(sd[name].float(), reference, rtol=1e-5, atol=0):
                raise CheckpointError(
                    f"{source}: schedule buffer {name} differs from the LDM linear schedule"
                )
            report.ignored[name] = "schedule buffer; recomputed by the sampler (verified equal)"

    # VQ first: it may be refused, and then nothing is written.
    if vq_ckpt is not None:
        vq_source = read_checkpoint(vq_ckpt, "VQ-f4")
        vq_input: Mapping[str, torch.Tensor] = vq_source.state_dict
        vq_name = vq_source.path.name
        for key in vq_keys:
            if key in sd:
                report.ignored[key] = f"superseded by the VQ checkpoint {vq_name}"
    else:
        vq_input, vq_name = {k: sd[k] for k in vq_keys}, source.name
    try:
        conversion = vqmod.convert_vq_state_dict(vq_input)
    except ValueError as err:
        raise CheckpointError(f"{vq_ckpt or source}: {err}") from err
    if vq_ckpt is not None:
        report.ignored.update({f"{Path(vq_ckpt).name}:{k}": r for k, r in conversion.ignored.items()})
    vq_tensors = {k.removeprefix(layout.VQ_PREFIX): vq_input[k] for k in conversion.loaded}
    vq_size = next((n for n, c in vqmod.VQ_CONFIGS.items() if c == conversion.config), None)
    if vq_size is None:
        raise CheckpointError(f"{vq_ckpt or source}: VQ of unknown size {conversion.config}")

    directory = Path(weights_dir)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory)
    previous_vq = manifest.get(VQ_FILE)

    shmt_file = model_file(variant)
    shmt_tensors = {k: sd[k] for k in unet_keys + ida_keys + (ema_keys if has_ema else []) if k in sd}
    candidate = directory / f".{VQ_FILE}.candidate"
    vq_digest = write_safetensors(vq_tensors, candidate, {"kind": "vq"})
    try:
        vq_differs = previous_vq is not None and previous_vq.sha256 != vq_digest
        if vq_differs and (directory / VQ_FILE).is_file() and not replace_vq:
            raise CheckpointError(
                f"{vq_ckpt or source}: its VQ-f4 differs from the one already in {directory / VQ_FILE} "
                f"(imported from {previous_vq.source}); both SHMT variants share one VQ"
            )
        digest = write_safetensors(shmt_tensors, directory / shmt_file, {"kind": "shmt", "variant": variant})
        os.replace(candidate, directory / VQ_FILE)
    finally:
        candidate.unlink(missing_ok=True)

    shmt_entry = WeightsEntry(
        file=shmt_file,
        kind="shmt",
        variant=variant,
        size=size,
        source=source.name,
        sha256=digest,
        tensors=len(shmt_tensors),
        bytes=(directory / shmt_file).stat().st_size,
        stamp=file_stamp(directory / shmt_file),
        ema=has_ema,
        epoch=checkpoint.epoch,
        global_step=checkpoint.global_step,
    )
    vq_entry = WeightsEntry(
        file=VQ_FILE,
        kind="vq",
        variant=None,
        size=vq_size,
        source=vq_name,
        sha256=vq_digest,
        tensors=len(vq_tensors),
        bytes=(directory / VQ_FILE).stat().st_size,
        stamp=file_stamp(directory / VQ_FILE),
    )
    if previous_vq is not None and previous_vq.sha256 == vq_digest:
        # Same tensors: keep the original provenance (the file was rewritten: a new stamp).
        vq_entry = replace(previous_vq, stamp=vq_entry.stamp)
    manifest[shmt_file] = shmt_entry
    manifest[VQ_FILE] = vq_entry
    write_model_config(directory, shmt_file, config)
    write_manifest(directory, manifest)

    report.entries = [shmt_entry, vq_entry]
    report.written = dict.fromkeys(shmt_tensors, shmt_file)
    vq_label = "" if vq_ckpt is None else f"{vq_name}:"
    report.written.update({f"{vq_label}{k}": VQ_FILE for k in conversion.loaded})
    return report
