"""Fitted constants of the rule-based face parser, read from ``parsing_rules.json`` beside this module.

The file has one section per module that reads it ("shapes" and "nose" for parsing_shapes.py, "rules"
for parsing_rules.py, "skin" for parsing_skin.py), each with a statement of how its values were fitted
and a "values" object whose keys are the module-level names the module assigns them to (so a tool that
tunes a constant by ``setattr(module, name, value)`` finds it under the same name). The file's top level
states the objective and the data.

What lives in the file and what stays in code: a value chosen by measuring the parse against the dev
photos' reference maps (a search over IoU, a shape learned from the maps) is data; a value set by
construction or for cost (colour-model floors, clip bounds, blur widths, speck sizes, which landmarks
anchor a shape, iteration counts picked for time even when a measurement confirmed them) stays in
code with its reason beside it. The nose's anchor landmark ids are kept in the file with the anchors
they index, since the fitted coordinates mean nothing without them.

A module reads its values once at import (``EYE_SCALE_U = _PARAMS.number("shapes", "EYE_SCALE_U")``
with ``_PARAMS = shipped_params()``); a missing section or key, or a value of the wrong type, raises
ParamsError naming the file. Another section is one more object with "fitted" and "values", read the
same way, and one more line in tests/test_parsing_params.py's READERS.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from shmt_cli.atomic import write_bytes_atomic

PARAMS_FILE = "parsing_rules.json"


class ParamsError(ValueError):
    """The parameters file lacks a section or key, or holds a value of the wrong type."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ParsingParams:
    """A parsed parameters document and the name of the file it came from (for error messages)."""

    def __init__(self, document: Any, source: str) -> None:
        if not isinstance(document, dict):
            raise ParamsError(f"{source}: expected a JSON object at the top level")
        self.document = document
        self.source = source

    @classmethod
    def from_text(cls, text: str, source: str) -> ParsingParams:
        """Parse a parameters document; ParamsError naming `source` when it is not valid JSON."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ParamsError(f"{source}: not valid JSON ({error})") from error
        return cls(document, source)

    @classmethod
    def from_path(cls, path: str | Path) -> ParsingParams:
        """Read a parameters file (UTF-8 JSON)."""
        return cls.from_text(Path(path).read_text("utf-8"), str(path))

    def values(self, section: str) -> dict[str, Any]:
        """The "values" object of one section."""
        block = self.document.get(section)
        if not isinstance(block, dict) or not isinstance(block.get("values"), dict):
            raise ParamsError(f"{self.source}: no section {section!r} with a 'values' object")
        return block["values"]

    def _value(self, section: str, key: str) -> Any:
        values = self.values(section)
        if key not in values:
            raise ParamsError(f"{self.source}: section {section!r} has no key {key!r}")
        return values[key]

    def _wrong(self, section: str, key: str, expected: str) -> ParamsError:
        value = self._value(section, key)
        return ParamsError(f"{self.source}: {section}.{key} should be {expected}, got {value!r}")

    def number(self, section: str, key: str) -> float:
        """A real number (a JSON integer is taken as a float)."""
        value = self._value(section, key)
        if not _is_number(value):
            raise self._wrong(section, key, "a number")
        return float(value)

    def integers(self, section: str, key: str) -> tuple[int, ...]:
        """A list of integers, as a tuple."""
        value = self._value(section, key)
        if not isinstance(value, list) or not all(type(v) is int for v in value):  # bool is no integer here
            raise self._wrong(section, key, "a list of integers")
        return tuple(value)

    def points(self, section: str, key: str) -> list[list[float]]:
        """A list of 2-D points [[a, b], ...] of numbers (a fresh copy: callers may modify it)."""
        value = self._value(section, key)
        if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_number(c) for c in p) for p in value
        ):
            raise self._wrong(section, key, "a list of [number, number] points")
        return [[float(a), float(b)] for a, b in value]


@lru_cache(maxsize=1)
def shipped_params() -> ParsingParams:
    """The parameters file shipped with the package (read once)."""
    resource = resources.files("shmt_cli.face").joinpath(PARAMS_FILE)
    return ParsingParams.from_text(resource.read_text("utf-8"), str(resource))


def source_path() -> Path:
    """Where the package's parameters file is on disk (for the tools that rewrite it)."""
    return Path(__file__).with_name(PARAMS_FILE)


# A list of numbers only (a point, a list of ids) on one line: json.dumps(indent=2) would give each
# number its own. Only lists spanning lines are touched (JSON strings hold no raw newline).
_NUMBER_LIST = re.compile(r"\[(\s*-?[0-9][0-9.eE+-]*(?:,\s*-?[0-9][0-9.eE+-]*)*\s*)\]")


def _one_line(match: re.Match[str]) -> str:
    inside = match.group(1)
    if "\n" not in inside:
        return match.group(0)
    return "[" + ", ".join(item.strip() for item in inside.split(",")) + "]"


def format_params(document: dict[str, Any]) -> str:
    """The document as the file holds it: indented JSON, number lists one to a line, newline-ended."""
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    return _NUMBER_LIST.sub(_one_line, text) + "\n"


def write_params(document: dict[str, Any], path: str | Path | None = None) -> None:
    """Write a parameters document atomically (to the package's own file when path is None)."""
    write_bytes_atomic(source_path() if path is None else path, format_params(document).encode("utf-8"))
