"""Engines by name: each name maps to its settings class and its factory; `auto` picks shmt when its
weights are installed, else classic.

Callers pass every option they have; each engine's settings class takes the ones it defines (and its
own defaults for those not given), so no option list is restated here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shmt_cli.engines.base import Engine, EngineUnavailable


@dataclass(frozen=True)
class EngineSpec:
    """One engine: its settings dataclass and `create(settings, weights_dir) -> Engine`."""

    name: str
    settings_class: type
    create: Callable[[Any, Path | None], Engine]


def _classic() -> EngineSpec:
    from shmt_cli.engines.classic import ClassicParams
    from shmt_cli.engines.classic_engine import ClassicEngine

    return EngineSpec("classic", ClassicParams, ClassicEngine.create)


def _shmt() -> EngineSpec:
    # Imported on use: the SHMT engine pulls in torch model code the classic path never needs.
    from shmt_cli.engines.shmt.engine import ShmtEngine, ShmtSettings

    return EngineSpec(
        "shmt", ShmtSettings, lambda settings, folder: ShmtEngine.from_weights_dir(folder, settings)
    )


ENGINES: dict[str, Callable[[], EngineSpec]] = {"shmt": _shmt, "classic": _classic}
ENGINE_NAMES = ("auto", *ENGINES)


def shmt_weights_installed(weights_dir: Path | None) -> bool:
    """Whether SHMT weights are installed (a manifest with at least one model and the VQ)."""
    from shmt_cli.engines.shmt.weights import list_weights
    from shmt_cli.engines.shmt.weights import weights_dir as resolve_weights_dir

    try:
        entries = list_weights(resolve_weights_dir(weights_dir))
    except (OSError, ValueError):
        return False
    return {"vq", "shmt"} <= {entry.kind for entry in entries}


def make_settings(name: str, options: Mapping[str, Any]) -> Any:
    """Engine `name`'s settings from `options`: the fields its settings class defines; None = default.

    Raises ValueError (from the settings class) for a bad value.
    """
    settings_class = ENGINES[name]().settings_class
    fields = {f.name for f in dataclasses.fields(settings_class)}
    return settings_class(**{k: v for k, v in options.items() if k in fields and v is not None})


def _check_other_engines(chosen: str, options: Mapping[str, Any]) -> None:
    """ValueError for a bad option value of any engine, not only the one that runs: `auto` may pick one
    engine today and the other tomorrow, and a typo must not wait for the day it matters."""
    # --level is checked only by the engine that runs: its values differ per engine.
    others = {k: v for k, v in options.items() if k != "level"}
    for name in ENGINES:
        if name != chosen:
            make_settings(name, others)


def create_engine(
    name: str, options: Mapping[str, Any], weights_dir: Path | None = None
) -> tuple[Engine, str]:
    """The engine called `name` ("auto", "shmt", "classic") with `options`, and one line saying which
    engine runs and why. Raises ValueError for a bad name or setting, EngineUnavailable when the engine
    cannot run here (e.g. no weights)."""
    if name not in ENGINE_NAMES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINE_NAMES)}")
    chosen, note = name, f"engine: {name}"
    if name == "auto":
        chosen = "shmt" if shmt_weights_installed(weights_dir) else "classic"
        why = "SHMT weights found" if chosen == "shmt" else "no SHMT weights installed"
        note = f"engine: {chosen} ({why}; choose with --engine)"
    try:
        settings = make_settings(chosen, options)
    except ValueError as err:
        if name == "auto" and chosen == "classic":
            raise ValueError(f"{err}; auto chose classic because no SHMT weights are installed") from None
        raise
    _check_other_engines(chosen, options)
    if chosen == "shmt" and not shmt_weights_installed(weights_dir):
        from shmt_cli.engines.shmt.weights import weights_dir as resolve_weights_dir

        raise EngineUnavailable(
            f"no SHMT weights in {resolve_weights_dir(weights_dir)}: import the official checkpoints "
            "with `shmt weights import CKPT... [--vq VQ_CKPT]` (or use --engine classic)"
        )
    return ENGINES[chosen]().create(settings, weights_dir), note
