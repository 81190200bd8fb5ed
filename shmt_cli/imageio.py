"""Decoding photos as people take them, and atomic writes.

Decoding uses Pillow rather than OpenCV because it applies EXIF orientation, converts CMYK
(including Adobe's inverted JPEGs), palette, 16-bit and alpha images, reads only the first frame
of animated files, and reports the declared size before decoding (decompression-bomb guard).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

# `.jfif`/`.jpe` are JPEG; HEIC/HEIF (iPhones) are read through the pillow-heif plugin, AVIF (Android) by
# Pillow itself (>= 11.3) or that plugin. Formats a build cannot read are refused by name (see read_image).
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
    ".heic", ".heif", ".avif",
)  # fmt: skip
HEIF_EXTENSIONS = (".heic", ".heif")


def _register_plugins() -> dict[str, bool]:
    """Register the HEIF opener when pillow-heif is installed; which of HEIF and AVIF can be read."""
    from PIL import features

    heif = False
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        heif = True
    except ImportError:  # optional at run time: such files are refused with a line naming the format
        pass
    avif = bool(features.check("avif")) if "avif" in features.get_supported_modules() else False
    return {"heif": heif, "avif": avif}


READABLE = _register_plugins()


def unreadable_format(path: Path) -> str | None:
    """Why a file of this format cannot be read by this install (None when it can)."""
    suffix = path.suffix.lower()
    if suffix in HEIF_EXTENSIONS and not READABLE["heif"]:
        return f"HEIC/HEIF image ({suffix}) cannot be read: install pillow-heif"
    if suffix == ".avif" and not READABLE["avif"]:
        return "AVIF image cannot be read: this Pillow has no AVIF support (Pillow >= 11.3 has it)"
    return None


# 12000x8000 photos (96 MP) must decode; a file declaring more than this is refused before decoding.
MAX_PIXELS = 150_000_000
MIN_SIDE = 16
EXIF_ORIENTATION = 0x0112


class InputError(Exception):
    """A problem with one input file, reported as one line and the batch goes on."""


@dataclass(frozen=True, eq=False)
class PhotoInfo:
    """What an output keeps of its input photo besides the face: format, colour profile, EXIF, alpha.

    format: Pillow's name ("JPEG", "PNG", ...); icc: the ICC profile bytes; exif: the EXIF block with the
    orientation set to 1 (the pixels are stored upright); alpha: (H, W) uint8 and the colour under it,
    straight (not composited), (H, W, 3) uint8, both upright; None for opaque photos.
    """

    format: str
    icc: bytes | None = None
    exif: bytes | None = None
    alpha: np.ndarray | None = None
    straight_rgb: np.ndarray | None = None


def read_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a photo to (H, W, 3) uint8 RGB, upright (EXIF orientation applied).

    Grayscale, palette, 16-bit, CMYK and alpha images are converted (alpha composited over white).
    Raises InputError with the reason for anything that is not a usable image.
    """
    return _decode(Path(path), max_pixels, keep_info=False)[0]


def read_photo(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, PhotoInfo]:
    """read_image plus what an output of the photo should keep (see PhotoInfo)."""
    rgb, info = _decode(Path(path), max_pixels, keep_info=True)
    assert info is not None
    return rgb, info


def _decode(path: Path, max_pixels: int, keep_info: bool) -> tuple[np.ndarray, PhotoInfo | None]:
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
    refused = unreadable_format(path)
    if refused:
        raise InputError(refused)
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
                rgb = _to_rgb8(upright)
                return rgb, (_photo_info(img, upright) if keep_info else None)
    except InputError:
        raise
    except PermissionError as exc:
        raise InputError("permission denied") from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            unreadable_format(path) or _sniffed_format(path) or "not a recognised image format"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large, possible decompression bomb ({_first_line(exc, '')})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if "decompressed data too large" in str(exc).lower():  # a text or ICC chunk inflating to GBs
            raise InputError("metadata too large, possible decompression bomb") from exc
        raise InputError(f"corrupt or truncated image ({_first_line(exc, type(exc).__name__)})") from exc


_SIGNATURES = {
    b"ftypheic": "HEIC",
    b"ftypheix": "HEIC",
    b"ftypmif1": "HEIF",
    b"ftypmsf1": "HEIF",
    b"ftypavif": "AVIF",
    b"ftypavis": "AVIF",
}


def _sniffed_format(path: Path) -> str | None:
    """'HEIC image cannot be read: ...' for a HEIF/AVIF file whatever its suffix, when this install cannot
    read it (phones and converters write `.jpg` names on HEIC data)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    kind = _SIGNATURES.get(head[4:12])
    if kind is None:
        return None
    hint = "install pillow-heif" if kind != "AVIF" else "this Pillow has no AVIF support"
    return f"{kind} image cannot be read ({hint})"


def _photo_info(original: Image.Image, upright: Image.Image) -> PhotoInfo:
    exif = original.getexif()
    exif_bytes = None
    if len(exif):
        if EXIF_ORIENTATION in exif:
            exif[EXIF_ORIENTATION] = 1
        exif_bytes = exif.tobytes()
    alpha = straight = None
    if upright.mode in ("RGBA", "LA", "PA", "RGBa", "La", "P") and (
        upright.mode != "P" or "transparency" in upright.info
    ):
        rgba = upright.convert("RGBA")
        array = np.asarray(rgba, dtype=np.uint8)
        if (array[..., 3] < 255).any():
            alpha, straight = array[..., 3].copy(), array[..., :3].copy()
    return PhotoInfo(
        format=original.format or "PNG",
        icc=original.info.get("icc_profile") or None,
        exif=exif_bytes,
        alpha=alpha,
        straight_rgb=straight,
    )


# Output formats: the input's by default (a JPEG stays a JPEG); formats few programs write (HEIC, AVIF,
# TIFF, BMP, GIF) become JPEG (lossy photos) or PNG (lossless).
OUTPUT_FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}
_SAME_FORMAT = {
    ".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".jfif": "jpg", ".heic": "jpg", ".heif": "jpg",
    ".avif": "jpg", ".webp": "webp",
}  # fmt: skip
DEFAULT_QUALITY = {"jpg": 92, "webp": 90}


def output_format(input_path: str | os.PathLike[str], requested: str = "same") -> str:
    """'png', 'jpg' or 'webp' for an output of `input_path` (by its suffix when `requested` is 'same')."""
    if requested != "same":
        if requested not in OUTPUT_FORMATS:
            raise ValueError(f"--format must be same, {', '.join(OUTPUT_FORMATS)}; got {requested!r}")
        return requested
    return _SAME_FORMAT.get(Path(input_path).suffix.lower(), "png")


def encode_photo(
    rgb: np.ndarray, fmt: str, info: PhotoInfo | None = None, quality: int | None = None
) -> bytes:
    """Encode an (H, W, 3) uint8 RGB photo as 'png', 'jpg' or 'webp', keeping `info`'s ICC profile,
    EXIF and (PNG/WebP) alpha. quality: 1..100 for jpg/webp (default 92/90); PNG is lossless."""
    pillow_format, _ = OUTPUT_FORMATS[fmt]
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if info is not None and info.alpha is not None and fmt != "jpg":
        image.putalpha(Image.fromarray(info.alpha, "L"))
    options: dict[str, Any] = {}
    if info is not None and info.icc:
        options["icc_profile"] = info.icc
    if info is not None and info.exif:
        options["exif"] = info.exif
    if fmt == "png":
        options["compress_level"] = 3  # ~3x faster than Pillow's default 6 for a few % more bytes
    else:
        options["quality"] = quality or DEFAULT_QUALITY[fmt]
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, **options)
    return buffer.getvalue()


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
