"""The rule-based parser's fitted constants: the shipped parsing_rules.json and its loader."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from shmt_cli.face import parsing_rules, parsing_shapes, parsing_skin
from shmt_cli.face.parsing_params import (
    PARAMS_FILE,
    ParamsError,
    ParsingParams,
    format_params,
    shipped_params,
    source_path,
    write_params,
)
from shmt_cli.face.template import TEMPLATE_256

# Which module reads each section (a new section, e.g. the skin region's, gets a line here).
READERS: dict[str, ModuleType] = {
    "shapes": parsing_shapes,
    "nose": parsing_shapes,
    "rules": parsing_rules,
    "skin": parsing_skin,
}


def _kind(value: object) -> str:
    if isinstance(value, float):
        return "number"
    if isinstance(value, tuple) and all(type(v) is int for v in value):
        return "integers"
    if isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(c, float) for c in p) for p in value
    ):
        return "points"
    return f"unexpected {type(value).__name__}"


def test_shipped_file_states_how_it_was_fitted_and_matches_the_modules() -> None:
    params = shipped_params()
    document = params.document
    # The rule: a params file states its objective and data; each section how it was fitted.
    assert document["objective"] and document["data"]
    assert set(document) - {"about", "objective", "data"} == set(READERS)
    assert "tools/parsing_iou.py --fit-nose" in document["nose"]["written_by"]
    for section, module in READERS.items():
        assert document[section]["fitted"]
        for key, raw in params.values(section).items():
            # Every value is read by its module under its own name, same number, the loader's type.
            read = getattr(params, _kind(getattr(module, key)))(section, key)
            assert getattr(module, key) == read, (section, key)
            assert np.array_equal(np.asarray(read, dtype=np.float64), np.asarray(raw, dtype=np.float64))
    assert source_path().name == PARAMS_FILE


@pytest.mark.parametrize(
    ("section", "key", "bad", "expected"),
    [
        ("rules", "EYE_WEIGHT", "0.1", "a number"),
        ("rules", "EYE_WEIGHT", True, "a number"),
        ("nose", "NOSE_ANCHOR_IDS", [27, 28.0], "a list of integers"),
        ("nose", "NOSE_ANCHORS", [[0.0, 0.1, 0.2]], "a list of [number, number] points"),
        ("nose", "NOSE_HALF_WIDTHS", 0.5, "a list of [number, number] points"),
    ],
)
def test_wrong_type_names_the_file_and_key(
    tmp_path: Path, section: str, key: str, bad: object, expected: str
) -> None:
    document = json.loads(json.dumps(shipped_params().document))
    document[section]["values"][key] = bad
    path = tmp_path / PARAMS_FILE
    write_params(document, path)
    params = ParsingParams.from_path(path)
    reader = {"EYE_WEIGHT": params.number, "NOSE_ANCHOR_IDS": params.integers}.get(key, params.points)
    with pytest.raises(ParamsError, match=re.escape(f"{path}: {section}.{key} should be {expected}")):
        reader(section, key)


def test_missing_key_section_or_bad_json_names_the_file(tmp_path: Path) -> None:
    document = json.loads(json.dumps(shipped_params().document))
    del document["shapes"]["values"]["BROW_LIFT"]
    del document["rules"]
    path = tmp_path / PARAMS_FILE
    write_params(document, path)
    params = ParsingParams.from_path(path)
    assert params.number("shapes", "EYE_SCALE_U") == parsing_shapes.EYE_SCALE_U
    with pytest.raises(ParamsError, match=re.escape(f"{path}: section 'shapes' has no key 'BROW_LIFT'")):
        params.number("shapes", "BROW_LIFT")
    with pytest.raises(ParamsError, match=re.escape(f"{path}: no section 'rules'")):
        params.number("rules", "EYE_WEIGHT")
    path.write_text('{"shapes": ', "utf-8")
    with pytest.raises(ParamsError, match=re.escape(f"{path}: not valid JSON")):
        ParsingParams.from_path(path)
    path.write_text("[1, 2]", "utf-8")
    with pytest.raises(ParamsError, match=re.escape(f"{path}: expected a JSON object")):
        ParsingParams.from_path(path)


def test_written_file_reads_back_and_matches_the_shipped_format(tmp_path: Path) -> None:
    shipped = shipped_params()
    # The shipped file is exactly what the writer makes of its contents (a rewrite by
    # tools/parsing_iou.py --fit-nose changes only what it refits).
    assert source_path().read_text("utf-8") == format_params(shipped.document)
    path = tmp_path / "copy.json"
    write_params(shipped.document, path)
    assert ParsingParams.from_path(path).document == shipped.document
    assert '"NOSE_ANCHOR_IDS": [27, 28, 29, 30, 31, 32, 33, 34, 35, 39, 42]' in path.read_text("utf-8")


def test_module_names_are_what_the_shapes_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tools tune a constant by setattr on the module: the functions must read the module-level name.
    frame = parsing_shapes.face_frame(TEMPLATE_256)
    before = parsing_shapes.brow_polygon(TEMPLATE_256[17:22], frame, inner_first=False)
    monkeypatch.setattr(parsing_shapes, "BROW_LIFT", parsing_shapes.BROW_LIFT - 0.1)
    after = parsing_shapes.brow_polygon(TEMPLATE_256[17:22], frame, inner_first=False)
    shift = (after - before) @ frame.v / frame.iod
    assert np.allclose(shift, -0.1)
