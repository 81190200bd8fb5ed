"""Decoding photos as people take them: orientation, modes, broken files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hostile import stored_for_orientation
from PIL import Image

from shmt_cli.atomic import write_json_atomic
from shmt_cli.imageio import InputError, read_image, read_label_png, write_image_atomic


def _gradient(height: int = 40, width: int = 60) -> np.ndarray:
    """An asymmetric RGB test card: red grows to the right, green grows downwards."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = (x * 255 // (width - 1)).astype(np.uint8)
    rgb[..., 1] = (y * 255 // (height - 1)).astype(np.uint8)
    rgb[..., 2] = 90
    return rgb


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    upright = _gradient()
    stored = stored_for_orientation(upright, orientation)  # as a camera stores it, with the undoing tag
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=98, exif=exif.tobytes())
    decoded = read_image(path)
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - upright.astype(int)).mean() < 4


def test_modes_are_converted(tmp_path: Path) -> None:
    rgb = _gradient()
    gray = Image.fromarray(rgb[..., 1])
    gray.save(tmp_path / "gray.png")
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (40, 60, 3) and np.array_equal(out[..., 0], rgb[..., 1])

    sixteen = (rgb[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = read_image(tmp_path / "deep.png")
    assert np.abs(out[..., 0].astype(int) - rgb[..., 0].astype(int)).max() <= 1

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    out = read_image(tmp_path / "alpha.png")
    assert (out[:10, :10] == 255).all() and np.array_equal(out[20:, 20:], rgb[20:, 20:])

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    out = read_image(tmp_path / "cmyk.jpg")
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 6

    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "pal.png")
    out = read_image(tmp_path / "pal.png")
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 12


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"hello, I am not a picture\n", "not a recognised image"),
        ("bomb.png", _png_declaring(100_000, 100_000), "too large"),
        ("tiny.png", None, "too small"),
        ("truncated.jpg", None, "corrupt or truncated"),
    ],
)
def test_bad_files_give_one_clear_reason(
    tmp_path: Path, name: str, content: bytes | None, reason: str
) -> None:
    path = tmp_path / name
    if name == "tiny.png":
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(path)
    elif name == "truncated.jpg":
        Image.fromarray(_gradient(200, 200)).save(path, quality=90)
        path.write_bytes(path.read_bytes()[:600])
    else:
        path.write_bytes(content or b"")
    with pytest.raises(InputError, match=reason) as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_directory_named_like_an_image(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(InputError, match="directory"):
        read_image(tmp_path / "folder.png")


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    write_image_atomic(tmp_path / "a" / "x.png", _gradient())
    write_json_atomic(tmp_path / "a" / "x.json", {"k": [1, 2]})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "x.png"]
    assert np.array_equal(read_image(tmp_path / "a" / "x.png"), _gradient())


def test_label_png_channels(tmp_path: Path) -> None:
    labels = (np.arange(64 * 64).reshape(64, 64) % 19).astype(np.uint8)
    Image.fromarray(labels).save(tmp_path / "one.png")
    Image.fromarray(np.dstack([labels] * 3)).save(tmp_path / "three.png")
    assert np.array_equal(read_label_png(tmp_path / "one.png"), labels)
    assert np.array_equal(read_label_png(tmp_path / "three.png"), labels)
    different = np.dstack([labels, labels, (labels + 1) % 19])
    Image.fromarray(different).save(tmp_path / "bad.png")
    with pytest.raises(InputError, match="differ"):
        read_label_png(tmp_path / "bad.png")


def test_outputs_get_the_usual_permissions(tmp_path: Path) -> None:
    import os
    import stat

    write_image_atomic(tmp_path / "x.png", _gradient())
    mode = stat.S_IMODE(os.stat(tmp_path / "x.png").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
