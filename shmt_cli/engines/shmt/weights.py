"""Import, locate and verify SHMT weights: official Lightning checkpoints -> safetensors on disk.

Nothing here downloads anything. An official checkpoint is read with ``torch.load(weights_only=True)``
(a file that would need arbitrary unpickling is refused), every key is checked against the layout
the official configs produce, and the tensors are split into:

* ``shmt_<variant>.safetensors``: ``model.diffusion_model.*`` (raw UNet), ``model_ema.*`` (EMA
  shadows + ``decay`` + ``num_updates``, when the checkpoint has them) and ``corr_stage_model.*``
  (IDA, including the dead ``proj_convs``), all under their official names;
* ``vq_f4.safetensors``: the VQ-f4 autoencoder under the standalone LDM names (no prefix), from the
  checkpoint's ``first_stage_model.*`` or from a separate LDM vq-f4 checkpoint;
* ``manifest.json``: per file the kind, variant, size class, source file name, sha256, tensor count.

The 12 schedule buffers are not written: they are recomputed by the sampler and must equal them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from shmt_cli.atomic import atomic_path, write_json_atomic
from shmt_cli.checkpoint import CheckpointError, read_checkpoint
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt.sampler import ldm_schedule_buffers
from shmt_cli.engines.shmt.unet import ema_key

Variant = Literal["h0", "h4"]
SizeClass = Literal["full", "tiny"]

MANIFEST_NAME = "manifest.json"
VQ_FILE = "vq_f4.safetensors"
MANIFEST_FORMAT = 1

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
EMA_SCALARS = ("model_ema.decay", "model_ema.num_updates")
IDA_PREFIX = "corr_stage_model."
VQ_PREFIX = vqmod.SHMT_PREFIX
FIRST_CONV = UNET_PREFIX + "input_blocks.0.0.weight"

#: UNet input channels -> variant (spec §0): 121 = h0 (16-ch detail), 106 = h4 (1-ch detail).
VARIANT_BY_IN_CHANNELS: dict[int, Variant] = {121: "h0", 106: "h4"}
IN_CHANNELS: dict[Variant, int] = {"h0": 121, "h4": 106}
#: IDA ``in_channels_list`` (sd, source, reference branches, without the 2 coordinate channels).
IDA_IN_CHANNELS: dict[Variant, tuple[int, int, int]] = {"h0": (22, 83, 70), "h4": (22, 68, 70)}
#: UNet / IDA ``model_channels`` -> size class. The golden "tiny" configs use 32 instead of 224.
SIZE_BY_MODEL_CHANNELS: dict[int, SizeClass] = {224: "full", 32: "tiny"}
MODEL_CHANNELS: dict[SizeClass, int] = {"full": 224, "tiny": 32}

WEIGHTS_ENV = "SHMT_WEIGHTS"


# ---------------------------------------------------------------------------------------------
# Expected layout, computed from the official configs


def _linear(shapes: dict, name: str, c_out: int, c_in: int) -> None:
    shapes[f"{name}.weight"] = (c_out, c_in)
    shapes[f"{name}.bias"] = (c_out,)


def _conv(shapes: dict, name: str, c_out: int, c_in: int, k: int) -> None:
    shapes[f"{name}.weight"] = (c_out, c_in, k, k)
    shapes[f"{name}.bias"] = (c_out,)


def _norm(shapes: dict, name: str, c: int) -> None:
    shapes[f"{name}.weight"] = (c,)
    shapes[f"{name}.bias"] = (c,)


def unet_skip_channels(model_channels: int, channel_mult: tuple[int, ...], num_res_blocks: int) -> list[int]:
    """Widths of the UNet's input-block outputs (the skip connections), first conv included."""
    widths = [model_channels]
    for level, mult in enumerate(channel_mult):
        widths += [mult * model_channels] * num_res_blocks
        if level != len(channel_mult) - 1:
            widths.append(mult * model_channels)
    return widths


def unet_shapes(
    in_channels: int,
    model_channels: int,
    out_channels: int = 3,
    channel_mult: tuple[int, ...] = (1, 2, 3, 4),
    num_res_blocks: int = 2,
    attention_downsample: tuple[int, ...] = (2, 4, 8),
) -> dict[str, tuple[int, ...]]:
    """Keys (without ``model.diffusion_model.``) and shapes of the LDM ``UNetModel`` SHMT uses."""
    shapes: dict[str, tuple[int, ...]] = {}
    temb = 4 * model_channels

    def resblock(name: str, c_in: int, c_out: int) -> None:
        _norm(shapes, f"{name}.in_layers.0", c_in)
        _conv(shapes, f"{name}.in_layers.2", c_out, c_in, 3)
        _linear(shapes, f"{name}.emb_layers.1", c_out, temb)
        _norm(shapes, f"{name}.out_layers.0", c_out)
        _conv(shapes, f"{name}.out_layers.3", c_out, c_out, 3)
        if c_in != c_out:
            _conv(shapes, f"{name}.skip_connection", c_out, c_in, 1)

    def attention(name: str, c: int) -> None:
        # qkv and proj_out are 1-D convolutions: kernel (out, in, 1).
        _norm(shapes, f"{name}.norm", c)
        shapes[f"{name}.qkv.weight"], shapes[f"{name}.qkv.bias"] = (3 * c, c, 1), (3 * c,)
        shapes[f"{name}.proj_out.weight"], shapes[f"{name}.proj_out.bias"] = (c, c, 1), (c,)

    _linear(shapes, "time_embed.0", temb, model_channels)
    _linear(shapes, "time_embed.2", temb, temb)
    _conv(shapes, "input_blocks.0.0", model_channels, in_channels, 3)
    ch, ds, block = model_channels, 1, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            resblock(f"input_blocks.{block}.0", ch, mult * model_channels)
            ch = mult * model_channels
            if ds in attention_downsample:
                attention(f"input_blocks.{block}.1", ch)
            block += 1
        if level != len(channel_mult) - 1:
            _conv(shapes, f"input_blocks.{block}.0.op", ch, ch, 3)
            block, ds = block + 1, ds * 2

    resblock("middle_block.0", ch, ch)
    attention("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)

    skips = unet_skip_channels(model_channels, channel_mult, num_res_blocks)
    block = 0
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            resblock(f"output_blocks.{block}.0", ch + skips.pop(), mult * model_channels)
            ch = mult * model_channels
            sub = 1
            if ds in attention_downsample:
                attention(f"output_blocks.{block}.1", ch)
                sub = 2
            if level and i == num_res_blocks:
                _conv(shapes, f"output_blocks.{block}.{sub}.conv", ch, ch, 3)
                ds //= 2
            block += 1

    _norm(shapes, "out.0", ch)
    _conv(shapes, "out.2", out_channels, model_channels, 3)
    return shapes


def ida_shapes(
    in_channels_list: tuple[int, int, int],
    model_channels: int,
    channel_mult: tuple[int, ...] = (1, 2, 3, 4),
    num_res_blocks: int = 2,
    ngf: int = 64,
) -> dict[str, tuple[int, ...]]:
    """Keys (without ``corr_stage_model.``) and shapes of the official ``Correspondence`` module.

    Each encoder sees its ``in_channels_list`` entry plus 2 coordinate channels; ``ngf`` is
    hard-coded to 64 officially. One ``proj_convs`` entry per UNet skip width, each reading the
    source features + the 51 warped reference channels.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    _linear(shapes, "proportion_prediction.0", model_channels, model_channels)
    _linear(shapes, "proportion_prediction.2", 1, model_channels)
    for branch, c_in in zip(("sd_enc", "source_enc", "ref_enc"), in_channels_list, strict=True):
        widths = (ngf, 2 * ngf, 4 * ngf)
        # Index layout of each encoder: conv, conv, 2 res, conv(down), 2 res, conv(down), 2 res, 1x1.
        _conv(shapes, f"{branch}.0.model.1", ngf, c_in + 2, 3)
        _conv(shapes, f"{branch}.1.model.1", ngf, ngf, 3)
        index, c = 2, ngf
        for stage, width in enumerate(widths):
            if stage:
                _conv(shapes, f"{branch}.{index}.model.1", width, c, 3)
                index, c = index + 1, width
            for _ in range(2):
                _conv(shapes, f"{branch}.{index}.conv1.model.1", c, c, 3)
                _conv(shapes, f"{branch}.{index}.conv2.model.1", c, c, 3)
                index += 1
        _conv(shapes, f"{branch}.{index}", c, c, 1)
    proj_in = in_channels_list[1] + 51
    for i, width in enumerate(unet_skip_channels(model_channels, channel_mult, num_res_blocks)):
        _conv(shapes, f"proj_convs.{i}", width, proj_in, 1)
    return shapes


def expected_shapes(variant: Variant, size: SizeClass) -> dict[str, tuple[int, ...]]:
    """Every key of an official SHMT ``state_dict`` for ``variant`` and ``size``, with its shape."""
    channels = MODEL_CHANNELS[size]
    unet = unet_shapes(IN_CHANNELS[variant], channels)
    shapes = {UNET_PREFIX + k: s for k, s in unet.items()}
    shapes.update({ema_key(k): s for k, s in unet.items()})
    shapes.update({name: () for name in EMA_SCALARS})
    shapes.update({VQ_PREFIX + k: s for k, s in vqmod.official_vq_shapes(vqmod.VQ_CONFIGS[size]).items()})
    ida = ida_shapes(IDA_IN_CHANNELS[variant], channels)
    shapes.update({IDA_PREFIX + k: s for k, s in ida.items()})
    shapes.update({name: tuple(t.shape) for name, t in ldm_schedule_buffers().items()})
    return shapes


# ---------------------------------------------------------------------------------------------
# Reading checkpoints


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> Variant:
    """h0 / h4 from the input channels of the UNet's first conv (121 / 106)."""
    first = state_dict.get(FIRST_CONV)
    if first is None:
        first = state_dict.get(ema_key(FIRST_CONV[len(UNET_PREFIX) :]))
    if first is None or first.ndim != 4:
        raise CheckpointError(f"no UNet first conv ({FIRST_CONV}); not an SHMT checkpoint")
    in_channels = int(first.shape[1])
    if in_channels not in VARIANT_BY_IN_CHANNELS:
        raise CheckpointError(f"UNet has {in_channels} input channels; expected 121 (h0) or 106 (h4)")
    return VARIANT_BY_IN_CHANNELS[in_channels]


def detect_size(state_dict: Mapping[str, torch.Tensor]) -> SizeClass:
    """full / tiny from the UNet width (224 / 32 ``model_channels``)."""
    first = state_dict.get(FIRST_CONV)
    if first is None:
        first = state_dict.get(ema_key(FIRST_CONV[len(UNET_PREFIX) :]))
    width = int(first.shape[0]) if first is not None else -1
    if width not in SIZE_BY_MODEL_CHANNELS:
        raise CheckpointError(f"UNet width {width} is neither the full (224) nor the tiny (32) config")
    return SIZE_BY_MODEL_CHANNELS[width]


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class WeightsEntry:
    """One manifest row. ``variant`` is None for the VQ file, which both variants share."""

    file: str
    kind: Literal["shmt", "vq"]
    variant: Variant | None
    size: SizeClass
    source: str
    sha256: str
    tensors: int
    bytes: int
    ema: bool | None = None
    epoch: int | None = None
    global_step: int | None = None
    #: [size, mtime in ns] of the file when its sha256 was last computed: loading hashes the file again
    #: only when this changed (see check_weights_file).
    stamp: list[int] | None = None


@dataclass
class ImportReport:
    """What :func:`import_checkpoint` did: files written and the fate of every checkpoint key."""

    variant: Variant
    size: SizeClass
    entries: list[WeightsEntry]
    written: dict[str, str] = field(default_factory=dict)  # source key -> file it went to
    ignored: dict[str, str] = field(default_factory=dict)  # source key -> reason


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no two sharing storage (safetensors refuses aliased tensors)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _write_safetensors(tensors: Mapping[str, torch.Tensor], target: Path, metadata: dict[str, str]) -> str:
    """Write atomically with the usual file permissions (see `shmt_cli.atomic`); return the sha256.

    Byte-reproducible: safetensors orders the header's tensors itself but writes a metadata map of
    several keys in hash-map order, which differs from run to run; the metadata is therefore one key
    (``shmt``) holding sorted JSON, so the same tensors always give the same file and the same sha256.
    """
    metadata = {"shmt": json.dumps(metadata, sort_keys=True, separators=(",", ":"))}
    with atomic_path(target) as tmp:
        save_file(_unshared(tensors), str(tmp), metadata=metadata)
        digest = sha256_file(tmp)
    return digest


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, WeightsEntry]:
    """Manifest rows by file name; empty when the folder has no manifest yet."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: WeightsEntry(**row) for name, row in data["files"].items()}
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable manifest ({err})") from err


def _write_manifest(directory: Path, entries: Mapping[str, WeightsEntry]) -> None:
    data = {"format": MANIFEST_FORMAT, "files": {name: asdict(e) for name, e in sorted(entries.items())}}
    write_json_atomic(directory / MANIFEST_NAME, data, sort_keys=True)


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
    variant, size = detect_variant(sd), detect_size(sd)
    expected = expected_shapes(variant, size)

    unknown = sorted(k for k in sd if k not in expected)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} keys unknown to SHMT-{variant}, e.g. {unknown[:5]}")
    _check_shapes(source, sd, expected)

    unet_keys = [k for k in expected if k.startswith(UNET_PREFIX)]
    ema_keys = [k for k in expected if k.startswith(EMA_PREFIX)]
    ida_keys = [k for k in expected if k.startswith(IDA_PREFIX)]
    vq_keys = [k for k in expected if k.startswith(VQ_PREFIX)]
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
    vq_tensors = {k.removeprefix(VQ_PREFIX): vq_input[k] for k in conversion.loaded}
    vq_size = next((n for n, c in vqmod.VQ_CONFIGS.items() if c == conversion.config), None)
    if vq_size is None:
        raise CheckpointError(f"{vq_ckpt or source}: VQ of unknown size {conversion.config}")

    directory = Path(weights_dir)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory)
    previous_vq = manifest.get(VQ_FILE)

    shmt_file = f"shmt_{variant}.safetensors"
    shmt_tensors = {k: sd[k] for k in unet_keys + ida_keys + (ema_keys if has_ema else []) if k in sd}
    candidate = directory / f".{VQ_FILE}.candidate"
    vq_digest = _write_safetensors(vq_tensors, candidate, {"kind": "vq"})
    try:
        vq_differs = previous_vq is not None and previous_vq.sha256 != vq_digest
        if vq_differs and (directory / VQ_FILE).is_file() and not replace_vq:
            raise CheckpointError(
                f"{vq_ckpt or source}: its VQ-f4 differs from the one already in {directory / VQ_FILE} "
                f"(imported from {previous_vq.source}); both SHMT variants share one VQ"
            )
        digest = _write_safetensors(shmt_tensors, directory / shmt_file, {"kind": "shmt", "variant": variant})
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
    _write_manifest(directory, manifest)

    report.entries = [shmt_entry, vq_entry]
    report.written = dict.fromkeys(shmt_tensors, shmt_file)
    vq_label = "" if vq_ckpt is None else f"{vq_name}:"
    report.written.update({f"{vq_label}{k}": VQ_FILE for k in conversion.loaded})
    return report


# ---------------------------------------------------------------------------------------------
# Locating, listing, verifying, loading


def weights_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where weights live: ``explicit`` > ``$SHMT_WEIGHTS`` > ``<repo>/weights`` > ``<cwd>/weights``.

    ``<repo>`` is the source checkout this package runs from (editable install), if any.
    """
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file() and (checkout / "shmt_cli").is_dir():
        return checkout / "weights"
    return Path.cwd() / "weights"


def list_weights(directory: str | os.PathLike[str]) -> list[WeightsEntry]:
    """Manifest rows of ``directory``, sorted by file name (no hashing; see :func:`verify_weights`)."""
    return [entry for _, entry in sorted(read_manifest(directory).items())]


@dataclass
class VerifyResult:
    """Outcome for one file: ``ok`` or the list of ``problems`` found."""

    file: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_weights(directory: str | os.PathLike[str]) -> list[VerifyResult]:
    """Check every manifest file exists with the recorded sha256 and tensor count.

    Also reports ``*.safetensors`` files the manifest does not list, and a missing manifest.
    """
    directory = Path(directory)
    if not (directory / MANIFEST_NAME).is_file():
        if not any(directory.glob("*.safetensors")):
            return []  # nothing installed: the caller says so
        return [VerifyResult(MANIFEST_NAME, [f"no manifest in {directory}; run `shmt weights import`"])]
    manifest = read_manifest(directory)
    results = []
    for name, entry in sorted(manifest.items()):
        result = VerifyResult(name)
        path = directory / name
        if not path.is_file():
            result.problems.append("file is missing")
        else:
            try:
                with safe_open(str(path), "pt") as handle:
                    count = len(list(handle.keys()))
                if count != entry.tensors:
                    result.problems.append(f"holds {count} tensors, manifest says {entry.tensors}")
            except Exception as err:  # a damaged header
                result.problems.append(f"not a readable safetensors file ({err})")
            if sha256_file(path) != entry.sha256:
                result.problems.append("sha256 differs from the manifest (file changed or corrupted)")
        results.append(result)
    for path in sorted(directory.glob("*.safetensors")):
        if path.name not in manifest:
            results.append(VerifyResult(path.name, ["not listed in the manifest"]))
    return results


def file_stamp(path: Path) -> list[int]:
    """[size, mtime in ns] of a file."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def check_weights_file(directory: str | os.PathLike[str], file: str, *, full: bool = False) -> None:
    """What loading can afford to check before trusting an imported file; CheckpointError on a problem.

    Always (cost: one stat and reading the JSON header, well under 10 ms): the file is listed in the
    manifest, has the recorded size, a readable safetensors header and the recorded tensor count. The
    full sha256 (about 4-5 s per GB on this CPU) only when ``full`` or when the file's [size, mtime]
    differs from the stamp recorded when its hash was last computed: an edited, truncated or replaced
    file is caught at load; silent bit rot that keeps the mtime is left to `shmt weights verify`.
    """
    directory = Path(directory)
    path = directory / file
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; import the official checkpoint with `shmt weights import`")
    entry = read_manifest(directory).get(file)
    if entry is None:
        raise CheckpointError(f"{path}: not listed in {directory / MANIFEST_NAME}; re-import it")
    stamp = file_stamp(path)
    if stamp[0] != entry.bytes:
        raise CheckpointError(
            f"{path}: {stamp[0]} bytes, {entry.bytes} expected (truncated or replaced); re-import it"
        )
    try:
        with safe_open(str(path), "pt") as handle:
            count = len(list(handle.keys()))
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_first_line(err)}); re-import it"
        ) from None
    if count != entry.tensors:
        raise CheckpointError(
            f"{path}: holds {count} tensors, the manifest says {entry.tensors}; re-import it"
        )
    if (full or entry.stamp != stamp) and sha256_file(path) != entry.sha256:
        raise CheckpointError(
            f"{path}: sha256 differs from the one the manifest recorded at import (changed or corrupted)"
        )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def load_weights(
    directory: str | os.PathLike[str], file: str, *, verify: bool = False
) -> dict[str, torch.Tensor]:
    """The tensors of one imported file (official names), on CPU, after check_weights_file (``verify``:
    with the full sha256)."""
    directory = Path(directory)
    check_weights_file(directory, file, full=verify)
    return load_file(str(directory / file))


def load_vq_model(directory: str | os.PathLike[str], *, verify: bool = False):
    """The diffusers ``VQModel`` built from ``vq_f4.safetensors`` (float32, CPU, eval mode)."""
    return vqmod.load_vq(load_weights(directory, VQ_FILE, verify=verify))
