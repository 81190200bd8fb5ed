"""Decoding photos as people take them, and atomic writes.

Decoding uses Pillow rather than OpenCV because it applies EXIF orientation, converts CMYK
(including Adobe's inverted JPEGs), palette, 16-bit and alpha images, reads only the first frame
of animated files, and reports the declared size before decoding (decompression-bomb guard).
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Atomic writes live in shmt_cli.atomic; re-exported here for existing callers.
from shmt_cli.atomic import (  # noqa: F401
    TEMP_NAME,
    remove_stale_temp_files,
    temp_prefix,
    write_bytes_atomic,
    write_json_atomic,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

# 12000x8000 photos (96 MP) must decode; a file declaring more than this is refused before decoding.
MAX_PIXELS = 150_000_000
MIN_SIDE = 16
EXIF_ORIENTATION = 0x0112


class InputError(Exception):
    """A problem with one input file, reported as one line and the batch goes on."""


def read_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a photo to (H, W, 3) uint8 RGB, upright (EXIF orientation applied).

    Grayscale, palette, 16-bit, CMYK and alpha images are converted (alpha composited over white).
    Raises InputError with the reason for anything that is not a usable image.
    """
    path = Path(path)
    if path.is_dir():
        try:
            os.scandir(path).close()
        except OSError as exc:
            raise InputError(f"folder could not be searched ({exc.strerror or exc})") from exc
        raise InputError("is a directory, not an image")
    try:
        info = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        # Opening a FIFO would block the whole batch until some writer appears.
        raise InputError(f"not a regular file ({_file_kind(info.st_mode)})")
    if info.st_size == 0:
        raise InputError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP on, below the 96 MP photos we accept; `max_pixels` is the guard.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Pillow warns about damage it works around (corrupt EXIF): noise on stderr naming no file.
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise InputError(
                        f"image too large ({width}x{height} = {width * height / 1e6:.0f} MP, "
                        f"limit {max_pixels / 1e6:.0f} MP)"
                    )
                if min(width, height) < MIN_SIDE:
                    raise InputError(f"image too small ({width}x{height}; at least {MIN_SIDE} px needed)")
                img.seek(0)
                img.load()
                # exif_transpose copies even an upright image: skip it then (a 96 MP copy is ~0.3 GB).
                orientation = img.getexif().get(EXIF_ORIENTATION, 1)
                upright = ImageOps.exif_transpose(img) if orientation in range(2, 9) else img
                return _to_rgb8(upright)
    except InputError:
        raise
    except PermissionError as exc:
        raise InputError("permission denied") from exc
    except UnidentifiedImageError as exc:
        raise InputError("not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large, possible decompression bomb ({_first_line(exc, '')})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if "decompressed data too large" in str(exc).lower():  # a text or ICC chunk inflating to GBs
            raise InputError("metadata too large, possible decompression bomb") from exc
        raise InputError(f"corrupt or truncated image ({_first_line(exc, type(exc).__name__)})") from exc


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


def _first_line(exc: BaseException, default: str) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else default


def _to_rgb8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        gray = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    rgb = img if mode == "RGB" else img.convert("RGB")
    return np.array(rgb, dtype=np.uint8)


def read_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a label-map PNG to (H, W) uint8 without any colour conversion.

    Accepts 1 channel, or 3/4 channels whose colour channels are identical.
    """
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    if data is None or data.size == 0:
        raise InputError(f"{path}: label map missing or empty")
    labels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise InputError(f"{path}: not a readable label image")
    if labels.ndim == 3:
        first = labels[:, :, 0]
        if not all(np.array_equal(first, labels[:, :, c]) for c in range(1, min(3, labels.shape[2]))):
            raise InputError(f"{path}: label map has {labels.shape[2]} channels that differ")
        labels = labels[:, :, 0]
    if labels.dtype != np.uint8:
        raise InputError(f"{path}: label map must be 8-bit, got {labels.dtype}")
    return labels


def encode_image(rgb: np.ndarray, suffix: str = ".png", jpeg_quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB or (H, W) uint8 image to PNG/JPEG/WebP bytes."""
    array = np.ascontiguousarray(rgb)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    params: list[int] = []
    if suffix.lower() in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    ok, encoded = cv2.imencode(suffix, array, params)
    if not ok:
        raise RuntimeError(f"could not encode image as {suffix}")
    return encoded.tobytes()


def write_image_atomic(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Encode by the file's suffix (.png lossless by default) and write atomically."""
    path = Path(path)
    write_bytes_atomic(path, encode_image(rgb, path.suffix or ".png"))
