"""A demanding user's QA pass over `decompose` and `transfer`: each test is a bug that was found and fixed.

Inputs are the astronaut photo and small generated files; every run goes through the real command line
(typer's CliRunner) and checks the exit code and that each failure is one line naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import manifest_records, run_shmt
from hostile import LONGEST_NAME
from PIL import Image


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: np.ndarray) -> Path:
    """`src/a.png` (the astronaut), `ref/r.jpg` (mirrored) and `aligned/a.png` + sidecar."""
    root = tmp_path_factory.mktemp("qa")
    (root / "src").mkdir()
    (root / "ref").mkdir()
    Image.fromarray(astronaut_rgb).save(root / "src" / "a.png", compress_level=1)
    Image.fromarray(np.ascontiguousarray(astronaut_rgb[:, ::-1])).save(root / "ref" / "r.jpg", quality=92)
    code, output = run_shmt("align", root / "src", "-o", root / "aligned", "-q")
    assert code == 0, output
    return root


def test_classic_refuses_an_unknown_level(photos: Path, tmp_path: Path) -> None:
    # Was: `--level h9` (or shmt's `mix` when auto fell back to classic) silently ran at h2, exit 0.
    for extra in (["--engine", "classic", "--level", "h9"], ["--level", "mix"]):
        code, output = run_shmt("transfer", photos / "src", photos / "ref", "-o", tmp_path / "out", *extra)
        assert code == 2, output
        assert "is not a classic level" in output
    assert not (tmp_path / "out").exists()
    code, output = run_shmt(
        "transfer",
        photos / "src",
        photos / "ref",
        "-o",
        tmp_path / "ok",
        "--engine",
        "classic",
        "--level",
        "h1",
    )
    assert code == 0, output
    assert [r["status"] for r in manifest_records(tmp_path / "ok").values()] == ["ok"]


def test_a_255_byte_photo_name_is_a_photo_not_a_failure(photos: Path, tmp_path: Path) -> None:
    # Was: `decompose` failed it with "File name too long: ....json" (stat of the would-be sidecar).
    folder = tmp_path / "long"
    folder.mkdir()
    shutil.copy(photos / "src" / "a.png", folder / LONGEST_NAME.replace(".jpg", ".png"))
    code, output = run_shmt("decompose", folder, "-o", tmp_path / "dec", "--no-contact-sheet")
    assert code == 0, output
    assert len(list((tmp_path / "dec").glob("*.safetensors"))) == 1


def test_pairs_csv_bad_rows_fail_alone(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: a row naming a folder raised KeyError (traceback); a missing file stopped the whole run.
    monkeypatch.chdir(tmp_path)  # paths in the CSV are relative to the CSV's folder, wherever we are
    table = photos / "pairs.csv"
    table.write_text(
        "source,reference,output\nsrc/a.png,ref/r.jpg,\nsrc/missing.png,ref/r.jpg,\nsrc,ref/r.jpg,\n"
        "./src/a.png,ref/../ref/r.jpg,again\n"
    )
    out = tmp_path / "out"
    code, output = run_shmt("transfer", "-o", out, "--pairs", table, "--engine", "classic")
    assert code == 1, output
    failed = {k: r["reason"] for k, r in manifest_records(out).items() if r["status"] == "failed"}
    assert len(failed) == 2
    assert any(
        "src/missing.png" in k and "src/missing.png" in v and "No such file" in v for k, v in failed.items()
    )
    assert any(v.startswith("source ") and "src: is a directory" in v for v in failed.values())
    assert all("\n" not in v for v in failed.values())
    assert (out / "a__r.png").is_file() and (out / "again.png").is_file()

    table.write_text("src/a.png,\n")
    code, output = run_shmt("transfer", "-o", tmp_path / "empty", "--pairs", table, "--engine", "classic")
    assert code == 2 and "line 1" in output and "empty" in output


def test_external_maps_name_the_file_and_refuse_non_square(photos: Path, tmp_path: Path) -> None:
    # Was: a corrupt render failed with "not a recognised image format" (which file?), and a non-square
    # parsing map was stretched onto the face without a word.
    faces, parsing, renders = tmp_path / "faces", tmp_path / "parsing", tmp_path / "renders"
    for folder in (faces, parsing, renders):
        folder.mkdir()
    for name in ("good", "bad"):
        shutil.copy(photos / "aligned" / "a.png", faces / f"{name}.png")
        shutil.copy(photos / "aligned" / "a.json", faces / f"{name}.json")
    labels = np.zeros((512, 512), np.uint8)
    labels[100:400, 100:400] = 1
    Image.fromarray(labels).save(parsing / "good.png")
    Image.fromarray(labels[:300, :200]).save(parsing / "bad.png")
    Image.fromarray(np.full((256, 256, 3), 90, np.uint8)).save(renders / "good_3d.jpg")
    corrupt = b"\xff\xd8 not really a jpeg"
    (renders / "bad_3d.jpg").write_bytes(corrupt)

    code, output = run_shmt(
        "decompose", faces, "-o", tmp_path / "p", "--parsing", parsing, "--no-contact-sheet"
    )
    assert code == 1, output
    reason = manifest_records(tmp_path / "p")[f"{faces}/bad.png"]["reason"]
    assert "bad.png is 200x300, not square" in reason
    assert manifest_records(tmp_path / "p")[f"{faces}/good.png"]["status"] == "ok"

    code, output = run_shmt(
        "decompose", faces, "-o", tmp_path / "r", "--render3d", renders, "--no-contact-sheet"
    )
    assert code == 1, output
    reason = manifest_records(tmp_path / "r")[f"{faces}/bad.png"]["reason"]
    assert reason.startswith(f"3D render {renders}/bad_3d.jpg: ")
    assert manifest_records(tmp_path / "r")[f"{faces}/good.png"]["status"] == "ok"
    assert (renders / "bad_3d.jpg").read_bytes() == corrupt  # inputs untouched


def test_evaluate_a_run_made_with_a_relative_output_folder(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was: transfer recorded `out/faces/...` for `-o out`, evaluate read `out/out/faces/...`, found no
    # pair and said only "no finished pairs to evaluate" (exit 1), hiding every reason.
    monkeypatch.chdir(tmp_path)
    code, output = run_shmt("transfer", photos / "src", photos / "ref", "-o", "out", "--engine", "classic")
    assert code == 0, output
    (record,) = manifest_records(tmp_path / "out").values()
    assert (tmp_path / "out" / record["source_parts"]).is_file()
    code, output = run_shmt("evaluate", "out", "--json", "-q")
    assert code == 0, output
    assert json.loads(output.splitlines()[-1])["folders"][0]["summary"]["fidelity_de00"]["n"] == 1

    # A deleted result: every pair fails, and each failure is still reported with its reason.
    (tmp_path / "out" / record["outputs"][0]).unlink()
    code, output = run_shmt("evaluate", "out", "-q")
    assert code == 1
    assert "failed " in output and record["outputs"][0] in output
    assert "no finished pairs to evaluate" in output


def test_evaluate_report_paths_and_folders_without_shared_pairs(
    photos: Path, tmp_path: Path, astronaut_rgb: np.ndarray
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.ascontiguousarray(astronaut_rgb[:, ::-1])).save(other / "b.png", compress_level=1)
    folders = {}
    for name, source in (("one", photos / "src"), ("two", other)):
        folders[name] = tmp_path / name
        code, output = run_shmt(
            "transfer", source, photos / "ref", "-o", folders[name], "--engine", "classic"
        )
        assert code == 0, output

    # Was: a traceback after all metrics were computed (exit 1). Now refused up front, one line, exit 2.
    (tmp_path / "a_file").write_text("x")
    for option, target, why in (
        ("--plot", tmp_path, "must end in .png"),
        ("--plot", tmp_path / "plot.txt", "must end in .png"),
        ("--plot", tmp_path / "a_file" / "p.png", "cannot write in"),
        ("--csv", tmp_path, "is a folder"),
    ):
        code, output = run_shmt("evaluate", folders["one"], option, target, "-q")
        assert code == 2, output
        assert output.strip().count("\n") == 0 and why in output and str(target) in output
    code, output = run_shmt("evaluate", folders["one"], "--plot", tmp_path / "new" / "p.png", "-q")
    assert code == 0, output
    assert (tmp_path / "new" / "p.png").stat().st_size > 0

    # Was: empty tables and exit 0 when the folders share no pair.
    code, output = run_shmt("evaluate", folders["one"], folders["two"], "-q")
    assert code == 1
    assert "no finished pair is in every folder" in output


def test_output_folder_that_is_an_input_folder_is_refused(photos: Path, tmp_path: Path) -> None:
    # Was: `-o photos photos` took the previous run's outputs as inputs on every re-run
    # (transfer wrote a__r__r.png, decompose decomposed its own previews).
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photos / "src" / "a.png", folder / "a.png")
    runs = (
        ("transfer", folder, photos / "ref", "-o", f"{folder}/", "--engine", "classic"),
        ("transfer", photos / "src", folder, "-o", folder, "--engine", "classic"),
        ("decompose", folder, "-o", folder / "." / ""),
    )
    for args in runs:
        code, output = run_shmt(*args)
        assert code == 2, output
        assert "is also an input folder" in output
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


def test_empty_region_list_is_a_usage_error(photos: Path, tmp_path: Path) -> None:
    # Was: `--regions ""` (or ",") ran, wrote unchanged copies of the sources and exited 0.
    for regions in ("", " , "):
        out = tmp_path / f"out{len(regions)}"
        code, output = run_shmt(
            "transfer", photos / "src", photos / "ref", "-o", out, "--engine", "classic", "--regions", regions
        )
        assert code == 2, output
        assert "--regions names no region" in output and not out.exists()
