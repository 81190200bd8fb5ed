"""A weights folder: its manifest, the architecture JSON beside each model, integrity checks, loading.

    WEIGHTS/
        shmt_<variant>.safetensors     UNet (raw + EMA) and IDA tensors under their official names
        shmt_<variant>.config.json     the model's architecture (`engines/shmt/config.py`), as diffusers'
                                       config.json; folders imported before it existed have none and
                                       are read with the config of their manifest size class
        vq_f4.safetensors              the VQ-f4 both variants share (standalone LDM names)
        manifest.json                  per file: kind, variant, size class, source, sha256, tensor count

`shmt weights import` (`importer.py`) and training checkpoints write folders through the writers here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from shmt_cli.atomic import atomic_path, write_json_atomic
from shmt_cli.checkpoint import CheckpointError
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt.config import (
    VARIANT_LEVELS,
    VariantConfig,
    config_from_json,
    config_to_json,
    variant_config,
)
from shmt_cli.engines.shmt.weights.layout import SizeClass, Variant

MANIFEST_NAME = "manifest.json"
VQ_FILE = "vq_f4.safetensors"
MANIFEST_FORMAT = 1
WEIGHTS_ENV = "SHMT_WEIGHTS"
CONFIG_SUFFIX = ".config.json"


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


def model_file(variant: str) -> str:
    """File name of an SHMT model in a weights folder."""
    return f"shmt_{variant}.safetensors"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_stamp(path: Path) -> list[int]:
    """[size, mtime in ns] of a file."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


# ---------------------------------------------------------------------------------------------
# Writing


def unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def write_safetensors(tensors: Mapping[str, torch.Tensor], target: Path, metadata: dict[str, str]) -> str:
    """Write atomically with the usual file permissions (see `shmt_cli.atomic`); return the sha256.

    Byte-reproducible: safetensors orders the header's tensors itself but writes a metadata map of
    several keys in hash-map order, which differs from run to run; the metadata is therefore one key
    (``shmt``) holding sorted JSON, so the same tensors always give the same file and the same sha256.
    """
    metadata = {"shmt": json.dumps(metadata, sort_keys=True, separators=(",", ":"))}
    with atomic_path(target) as tmp:
        save_file(unshared(tensors), str(tmp), metadata=metadata)
        digest = sha256_file(tmp)
    return digest


def write_manifest(directory: Path, entries: Mapping[str, WeightsEntry]) -> None:
    """Replace ``directory/manifest.json`` (atomically) with `entries`, sorted by file name."""
    data = {"format": MANIFEST_FORMAT, "files": {name: asdict(e) for name, e in sorted(entries.items())}}
    write_json_atomic(directory / MANIFEST_NAME, data, sort_keys=True)


def config_path(directory: Path, file: str) -> Path:
    """The architecture JSON beside model file `file`: ``shmt_h4.safetensors`` -> ``shmt_h4.config.json``."""
    return directory / (Path(file).stem + CONFIG_SUFFIX)


def write_model_config(directory: Path, file: str, config: VariantConfig) -> None:
    """Write the architecture of model file `file` as JSON beside it (atomically)."""
    write_json_atomic(config_path(directory, file), config_to_json(config), sort_keys=True)


def model_config(directory: str | os.PathLike[str], entry: WeightsEntry) -> VariantConfig:
    """The architecture of the model of manifest row `entry`: its JSON when present, else (folders
    imported before the JSON existed) the config of the row's variant and size class."""
    if entry.variant is None:
        raise ValueError(f"{entry.file} is not an SHMT model")
    path = config_path(Path(directory), entry.file)
    if not path.is_file():
        return variant_config(VARIANT_LEVELS[entry.variant], entry.size)
    try:
        config = config_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable model config ({err}); re-import the model") from None
    if config.level != VARIANT_LEVELS[entry.variant]:
        raise CheckpointError(f"{path}: describes SHMT-h{config.level}, the manifest says {entry.variant}")
    return config


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
    checkout = Path(__file__).resolve().parents[4]
    if (checkout / "pyproject.toml").is_file() and (checkout / "shmt_cli").is_dir():
        return checkout / "weights"
    return Path.cwd() / "weights"


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


def list_weights(directory: str | os.PathLike[str]) -> list[WeightsEntry]:
    """Manifest rows of ``directory``, sorted by file name (no hashing; see :func:`verify_weights`)."""
    return [entry for _, entry in sorted(read_manifest(directory).items())]


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _tensor_count_problem(path: Path, entry: WeightsEntry) -> str | None:
    """Why the safetensors header of `path` does not match `entry` (unreadable, other count), or None."""
    try:
        with safe_open(str(path), "pt") as handle:
            count = len(list(handle.keys()))
    except Exception as err:  # safetensors raises its own error types for a damaged header
        return f"not a readable safetensors file ({_first_line(err)})"
    if count != entry.tensors:
        return f"holds {count} tensors, the manifest says {entry.tensors}"
    return None


@dataclass
class VerifyResult:
    """Outcome for one file: ``ok`` or the list of ``problems`` found."""

    file: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_weights(directory: str | os.PathLike[str]) -> list[VerifyResult]:
    """Check every manifest file exists with the recorded sha256 and tensor count, and that each model's
    architecture JSON (when present) is readable and matches its variant.

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
            problem = _tensor_count_problem(path, entry)
            if problem:
                result.problems.append(problem)
            if sha256_file(path) != entry.sha256:
                result.problems.append("sha256 differs from the manifest (file changed or corrupted)")
            if entry.kind == "shmt":
                try:
                    model_config(directory, entry)
                except (CheckpointError, ValueError) as err:
                    result.problems.append(str(err))
        results.append(result)
    for path in sorted(directory.glob("*.safetensors")):
        if path.name not in manifest:
            results.append(VerifyResult(path.name, ["not listed in the manifest"]))
    return results


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
    problem = _tensor_count_problem(path, entry)
    if problem:
        raise CheckpointError(f"{path}: {problem}; re-import it")
    if (full or entry.stamp != stamp) and sha256_file(path) != entry.sha256:
        raise CheckpointError(
            f"{path}: sha256 differs from the one the manifest recorded at import (changed or corrupted)"
        )


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
