"""Shell pipelines (stdin lists, pairs tables), runs without inputs, phone formats, and outputs that keep
the photo (format, ICC, EXIF, alpha, stable names). Photos are generated from the astronaut at test time."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_shmt
from PIL import Image, ImageCms

from shmt_cli.imageio import READABLE, InputError, read_image

CLASSIC = ("--engine", "classic")


def _summary(output: str) -> dict:
    """The --json summary line (the human summary on stderr may come after it)."""
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: np.ndarray) -> Path:
    """`src/a.png`, `src/b.jpg` (mirrored astronauts) and `ref/r.png` (a reddened astronaut)."""
    root = tmp_path_factory.mktemp("pipes")
    (root / "src").mkdir()
    (root / "ref").mkdir()
    Image.fromarray(astronaut_rgb).save(root / "src" / "a.png")
    Image.fromarray(np.ascontiguousarray(astronaut_rgb[:, ::-1])).save(root / "src" / "b.jpg", quality=92)
    reddened = astronaut_rgb.copy()
    reddened[..., 0] = np.clip(reddened[..., 0].astype(int) + 50, 0, 255)
    Image.fromarray(reddened).save(root / "ref" / "r.png")
    return root


def test_files_from_stdin_with_references_as_the_one_argument(photos: Path, tmp_path: Path) -> None:
    listed = f"{photos / 'src' / 'a.png'}\n{photos / 'src' / 'b.jpg'}\n"
    out = tmp_path / "out"
    code, output = run_shmt(
        "transfer", "--files-from", "-", photos / "ref", "-o", out, *CLASSIC, stdin=listed
    )
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir() if p.is_file() and p.suffix != ".jsonl") == [
        "a__r.png",
        "b__r.jpg",
    ]
    # A listed file that is missing fails as one item; the others are done.
    code, output = run_shmt(
        "transfer", "--files-from", "-", photos / "ref", "-o", tmp_path / "two", *CLASSIC,
        stdin=f"{photos / 'src' / 'a.png'}\n{photos / 'src' / 'gone.png'}\n",
    )  # fmt: skip
    assert code == 1 and "gone.png" in output
    code, output = run_shmt("transfer", "--files-from", "-", photos / "ref", "-o", tmp_path / "e", stdin="\n")
    assert code == 2 and "lists no source photo" in output


def test_pairs_on_stdin_and_tables_relative_to_their_folder(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(photos)
    code, output = run_shmt(
        "transfer", "--pairs", "-", "-o", tmp_path / "stdin", *CLASSIC, stdin="src/a.png,ref/r.png\n"
    )
    assert code == 0, output
    assert (tmp_path / "stdin" / "a__r.png").is_file()

    # A table beside its photos works from any current folder: its paths start at its own folder.
    table = photos / "nightly-2026-01-01.csv"
    table.write_text("source,reference\nsrc/b.jpg,ref/r.png\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "nightly"
    code, output = run_shmt("transfer", "--pairs", table, "-o", out, *CLASSIC)
    assert code == 0, output
    assert (out / "b__r.jpg").is_file()
    # The next night's copy of the same table resumes into the same folder (the name is not hashed).
    renamed = photos / "nightly-2026-01-02.csv"
    renamed.write_text(table.read_text())
    code, output = run_shmt("transfer", "--pairs", renamed, "-o", out, *CLASSIC, "--json")
    assert code == 0, output
    assert _summary(output)["skipped"] == 1
    # Neither is a seed the classic engine does not use.
    code, output = run_shmt("transfer", "--pairs", renamed, "-o", out, *CLASSIC, "--seed", "7", "--json")
    assert code == 0 and _summary(output)["skipped"] == 1, output
    # A different table is different work.
    renamed.write_text("src/a.png,ref/r.png\n")
    code, output = run_shmt("transfer", "--pairs", renamed, "-o", out, *CLASSIC)
    assert code == 2 and "other parameters" in output


def test_a_run_without_inputs_is_one_line_and_fails(photos: Path, tmp_path: Path) -> None:
    empty, odd = tmp_path / "empty", tmp_path / "odd"
    empty.mkdir()
    odd.mkdir()
    (odd / "notes.txt").write_text("x")
    (odd / "raw.cr2").write_bytes(b"x")
    for folder, words in ((empty, "empty or not mounted"), (odd, "1 .cr2, 1 .txt")):
        for args in (
            ("align", folder, "-o", tmp_path / "a"),
            ("decompose", folder, "-o", tmp_path / "d"),
            ("transfer", folder, photos / "ref", "-o", tmp_path / "t", *CLASSIC),
        ):
            code, output = run_shmt(*args)
            assert code == 2, (args, output)
            assert "no input images found" in output and words in output
            assert len([line for line in output.splitlines() if "error" in line]) == 1


def test_empty_output_folder_and_unwritable_log_are_refused(photos: Path, tmp_path: Path) -> None:
    code, output = run_shmt("align", photos / "src", "-o", "")
    assert code == 2 and "output folder is empty" in output
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, output = run_shmt("align", photos / "src", "-o", tmp_path / "o", "--log", blocker / "run.log")
    assert code == 2 and "--log" in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_phone_formats_are_read_or_refused_by_name(astronaut_rgb: np.ndarray, tmp_path: Path) -> None:
    jfif = tmp_path / "photo.jfif"
    Image.fromarray(astronaut_rgb).save(jfif, format="JPEG")
    assert read_image(jfif).shape == astronaut_rgb.shape
    avif = tmp_path / "photo.avif"
    if READABLE["avif"]:
        Image.fromarray(astronaut_rgb).save(avif, format="AVIF", quality=90)
        decoded = read_image(avif)
        assert decoded.shape == astronaut_rgb.shape
        assert np.abs(decoded.astype(int) - astronaut_rgb).mean() < 6
    heic = tmp_path / "photo.heic"
    if READABLE["heif"]:
        import pillow_heif

        pillow_heif.from_bytes(mode="RGB", size=(512, 512), data=astronaut_rgb.tobytes()).save(
            heic, quality=90
        )
        decoded = read_image(heic)
        assert decoded.shape == astronaut_rgb.shape
        assert np.abs(decoded.astype(int) - astronaut_rgb).mean() < 6
    # An install without the HEIF plugin (or without AVIF in Pillow) names the format and the fix.
    from shmt_cli import imageio

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(imageio.READABLE, "heif", False)
        patch.setitem(imageio.READABLE, "avif", False)
        for name, words in (("x.heic", "install pillow-heif"), ("x.avif", "no AVIF support")):
            (tmp_path / name).write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40)
            with pytest.raises(InputError, match=words):
                read_image(tmp_path / name)
    # HEIC data this install cannot read (here: a HEIF brand header with nothing after it) is named.
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40)
    with pytest.raises(InputError) as info:
        read_image(fake)
    assert "HEIC" in str(info.value) or "corrupt" in str(info.value)


_PROFILE: list[bytes] = []


def _profile() -> bytes:
    """One sRGB profile for the whole module (a new one carries a new creation time)."""
    if not _PROFILE:
        _PROFILE.append(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    return _PROFILE[0]


def test_outputs_keep_format_icc_exif_and_alpha(
    astronaut_rgb: np.ndarray, photos: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # A camera JPEG: stored sideways with orientation 6, an ICC profile and a maker tag.
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"
    stored = np.ascontiguousarray(np.rot90(astronaut_rgb, 1))
    Image.fromarray(stored).save(src / "cam.jpg", quality=90, exif=exif.tobytes(), icc_profile=_profile())
    # A cut-out PNG with a transparent border.
    rgba = np.dstack([astronaut_rgb, np.full(astronaut_rgb.shape[:2], 255, np.uint8)])
    rgba[:40, :, 3] = 0
    rgba[:40, :, :3] = (10, 200, 30)  # colour under the transparent part: kept as it was
    Image.fromarray(rgba, "RGBA").save(src / "cut.png")
    out = tmp_path / "out"
    code, output = run_shmt("transfer", src, photos / "ref", "-o", out, *CLASSIC)
    assert code == 0, output

    with Image.open(out / "cam__r.jpg") as made:
        assert made.format == "JPEG"
        assert made.info.get("icc_profile") == _profile()
        assert made.getexif().get(0x010F) == "TestCam"
        assert made.getexif().get(0x0112, 1) == 1  # the pixels are stored upright now
        assert made.size == (512, 512)
    assert (out / "cam__r.jpg").stat().st_size < 3 * (src / "cam.jpg").stat().st_size

    with Image.open(out / "cut__r.png") as made:
        assert made.mode == "RGBA"
        kept = np.asarray(made)
    assert np.array_equal(kept[..., 3], rgba[..., 3])
    assert np.array_equal(kept[:40, :, :3], rgba[:40, :, :3])

    code, output = run_shmt(
        "transfer",
        src / "cam.jpg",
        photos / "ref",
        "-o",
        tmp_path / "w",
        *CLASSIC,
        "--format",
        "webp",
        "--quality",
        "70",
    )
    assert code == 0, output
    with Image.open(tmp_path / "w" / "cam__r.webp") as made:
        assert made.format == "WEBP" and made.info.get("icc_profile") == _profile()
    code, output = run_shmt(
        "transfer", src, photos / "ref", "-o", tmp_path / "x", *CLASSIC, "--format", "tiff"
    )
    assert code == 2 and "--format" in output


def test_output_names_do_not_change_when_a_new_input_appears(photos: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "p.jpg").write_bytes((photos / "src" / "b.jpg").read_bytes())
    out = tmp_path / "out"
    code, output = run_shmt("transfer", src, photos / "ref", "-o", out, *CLASSIC)
    assert code == 0, output
    first = (out / "p__r.jpg").read_bytes()
    (src / "p.png").write_bytes((photos / "src" / "a.png").read_bytes())
    code, output = run_shmt("transfer", src, photos / "ref", "-o", out, *CLASSIC, "--json")
    assert code == 0, output
    summary = _summary(output)
    assert summary["done"] == 1 and summary["skipped"] == 1  # the old item is not redone
    assert (out / "p__r.jpg").read_bytes() == first
    assert (out / "p_png__r.png").is_file()


def test_background_psnr_is_a_number_or_null_in_json(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = run_shmt("transfer", photos / "src" / "a.png", photos / "ref", "-o", out, *CLASSIC)
    assert code == 0, output
    code, output = run_shmt("evaluate", out, "--json", "-q")
    assert code == 0, output
    line = next(line for line in output.splitlines() if line.startswith("{"))
    assert '"inf"' not in line and "Infinity" not in line
    code, output = run_shmt("evaluate", tmp_path / "missing")
    assert code == 2 and "no such results folder" in output


def test_small_option_checks(photos: Path, tmp_path: Path) -> None:
    code, output = run_shmt("align", photos / "src", "-o", tmp_path / "o", "--wait-lock", "-5")
    assert code == 2 and "--wait-lock" in output
    code, output = run_shmt("align", photos / "src", "-o", tmp_path / "o", "--shard", "1/0")
    assert code == 2 and "at least 1" in output
    (tmp_path / "m").mkdir()
    code, output = run_shmt("manifest-merge", tmp_path / "m", "--expect", "-1")
    assert code == 2 and "--expect" in output
    # SHMT options are checked when auto picks the classic engine (no weights here), and back.
    empty = tmp_path / "no-weights"
    empty.mkdir()
    base = ("transfer", photos / "src", photos / "ref", "-o", tmp_path / "t", "--weights-dir", empty)
    code, output = run_shmt(*base, "--dtype", "fp17")
    assert code == 2 and "--dtype" in output
    code, output = run_shmt(*base, "--ida", "relased")
    assert code == 2 and "--ida" in output
    code, output = run_shmt(*base, "--engine", "shmt", "--regions", "lipz")
    assert code == 2 and "unknown region" in output
    assert not (tmp_path / "t").exists()


def test_manifest_merge_names_a_shard_that_still_holds_its_lock(tmp_path: Path) -> None:
    import socket

    folder = tmp_path / "out"
    folder.mkdir()
    lock = folder / ".shmt.shard-2-of-4.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": "align"}))
    _, output = run_shmt("manifest-merge", folder)
    assert ".shmt.shard-2-of-4.lock" in output and "still going" in output
    lock.unlink()
    _, output = run_shmt("manifest-merge", folder)
    assert "still going" not in output


def test_read_image_of_bytes_in_memory_is_unchanged(astronaut_rgb: np.ndarray, tmp_path: Path) -> None:
    # The PhotoInfo path must not change what read_image returns.
    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(buffer, format="PNG")
    (tmp_path / "x.png").write_bytes(buffer.getvalue())
    assert np.array_equal(read_image(tmp_path / "x.png"), astronaut_rgb)


def test_classic_cold_start_imports_no_diffusers_and_prints_no_torch_warning(
    photos: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    probe = (
        "import sys, warnings\n"
        "from shmt_cli.engines.registry import create_engine\n"
        f"create_engine('auto', {{}}, __import__('pathlib').Path({str(tmp_path)!r}))\n"
        "import shmt_cli.pipelines.transfer\n"
        "print('diffusers' in sys.modules)\n"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
    run = subprocess.run(
        [sys.executable, "-m", "shmt_cli.cli", "transfer", str(photos / "src" / "a.png"), str(photos / "ref"),
         "-o", str(tmp_path / "out"), "--engine", "classic", "-q"],
        capture_output=True, text=True, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr and run.stderr.strip() == ""


def test_face_cache_is_compact_or_off(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = run_shmt("transfer", photos / "src" / "a.png", photos / "ref", "-o", out, *CLASSIC)
    assert code == 0, output
    cached = sorted((out / "faces").rglob("*.safetensors"))
    assert len(cached) == 2  # the source and the reference
    assert all(path.stat().st_size < 600_000 for path in cached)  # was 4.2 MB per face
    code, output = run_shmt(
        "transfer", photos / "src" / "a.png", photos / "ref", "-o", tmp_path / "n", *CLASSIC, "--no-cache"
    )
    assert code == 0, output
    assert not (tmp_path / "n" / "faces").exists()


def test_quiet_prints_each_failure_once(photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.jpg").write_text("not an image")
    (folder / "a.png").write_bytes((photos / "src" / "a.png").read_bytes())
    code, output = run_shmt("align", folder, "-o", tmp_path / "out", "--quiet")
    assert code == 1
    assert output.count("broken.jpg") == 1, output


def test_contact_sheet_names_its_columns() -> None:
    from shmt_cli.previews import contact_sheet

    tiles = [[np.full((8, 8, 3), 255, np.uint8)] * 3]
    plain = contact_sheet(tiles, cell=64)
    labelled = contact_sheet(tiles, cell=64, labels=("photo", "parsing", "3D render"))
    header = labelled.shape[0] - plain.shape[0]
    assert header > 0
    band = labelled[:header]
    for column in range(3):
        x0 = 2 + column * 66
        assert (band[:, x0 : x0 + 64] < 128).any(), column  # text in every column's header
