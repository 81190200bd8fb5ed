"""A corpus of hostile inputs for bulk jobs, generated at test time (no binary file is committed).

`build_corpus(root, face)` writes every input below `root` and returns their names (paths relative to
`root`, as `str`; the non-UTF-8 name carries surrogate escapes like `os.fsdecode` gives). Real faces
come from the astronaut photo (`astronaut_rgb` fixture, (512, 512, 3) uint8 RGB, one face with its
box near x 179..266, y 83..170).
"""

from __future__ import annotations

import io
import os
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112
NON_UTF8_NAME = os.fsdecode(b"caf\xe9 \xff.jpg")
LONG_NAME = "long_" + "x" * 195 + ".jpg"  # a 200-byte stem: the longest kept whole
LONGEST_NAME = "y" * 251 + ".jpg"  # 255 bytes: `<stem>.json` would be 256 unless the stem is cut
HUGE_SIZE = (12000, 8000)  # (width, height), 96 MP


def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores with EXIF `orientation` (1-8) so that viewers show `upright`."""
    stored = {
        1: upright,
        2: upright[:, ::-1],
        3: upright[::-1, ::-1],
        4: upright[::-1],
        5: np.transpose(upright, (1, 0, 2)),
        6: np.rot90(upright, 1),
        7: np.rot90(upright, 2).transpose(1, 0, 2),
        8: np.rot90(upright, -1),
    }[orientation]
    return np.ascontiguousarray(stored)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` x `height` RGB pixels (a decompression bomb's shape)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = (
        png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")
    )
    return b"\x89PNG\r\n\x1a\n" + body


def encoded(rgb: np.ndarray, fmt: str, **kwargs: object) -> bytes:
    """`rgb` encoded by Pillow in format `fmt` (JPEG, PNG, WEBP, ...)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def face_tile(face: np.ndarray) -> np.ndarray:
    """The astronaut's head with some margin, (220, 210, 3) uint8."""
    return np.ascontiguousarray(face[20:240, 120:330])


def five_faces(face: np.ndarray) -> np.ndarray:
    """Five head tiles side by side (alternately mirrored, slightly recoloured), (220, 1050, 3) uint8."""
    tile = face_tile(face).astype(np.int16)
    tiles = []
    for k in range(5):
        shifted = np.clip(tile + (k - 2) * 12, 0, 255).astype(np.uint8)
        tiles.append(shifted[:, ::-1] if k % 2 else shifted)
    return np.ascontiguousarray(np.hstack(tiles))


def cartoon_face(size: int = 400) -> np.ndarray:
    """A drawn smiley (flat circles and ellipses), (size, size, 3) uint8."""
    canvas = np.full((size, size, 3), 235, np.uint8)
    centre = (size // 2, size // 2)
    cv2.circle(canvas, centre, size // 3, (250, 210, 60), -1, cv2.LINE_AA)
    cv2.circle(canvas, centre, size // 3, (40, 30, 20), 3, cv2.LINE_AA)
    for dx in (-1, 1):
        eye = (centre[0] + dx * size // 8, centre[1] - size // 12)
        cv2.ellipse(canvas, eye, (size // 24, size // 16), 0, 0, 360, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(canvas, eye, size // 50, (20, 20, 20), -1, cv2.LINE_AA)
    mouth = (centre[0], centre[1] + size // 10)
    cv2.ellipse(canvas, mouth, (size // 7, size // 14), 0, 0, 180, (150, 20, 40), 4, cv2.LINE_AA)
    return canvas


def profile_like(face: np.ndarray) -> np.ndarray:
    """The astronaut squeezed to 30% of its width: the face seen nearly edge-on, (512, 154, 3) uint8."""
    height, width = face.shape[:2]
    return cv2.resize(face, (round(width * 0.3), height), interpolation=cv2.INTER_AREA)


def huge_photo(face: np.ndarray) -> Image.Image:
    """A 12000x8000 flat photo with the astronaut enlarged 8x pasted in (cheap to make and to compress)."""
    canvas = Image.new("RGB", HUGE_SIZE, (128, 120, 110))
    big = Image.fromarray(face).resize((4096, 4096), Image.Resampling.BILINEAR)
    canvas.paste(big, (5000, 2000))
    return canvas


def _write(root: Path, name: str, data: bytes) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_corpus(root: Path, face: np.ndarray) -> list[str]:
    """Write the hostile corpus below `root`; returns every name created (files, links, FIFO, folders)."""
    root.mkdir(parents=True, exist_ok=True)
    jpeg = encoded(face, "JPEG", quality=92)
    png = encoded(face, "PNG", compress_level=1)
    names: list[str] = []

    def add(name: str, data: bytes) -> None:
        _write(root, name, data)
        names.append(name)

    def special(name: str, make: Callable[[Path], None]) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
        names.append(name)

    add("plain.png", png)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        stored = stored_for_orientation(face, orientation)
        add(f"exif/orientation_{orientation}.jpg", encoded(stored, "JPEG", quality=92, exif=exif.tobytes()))

    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 9  # no such orientation: ignored
    add("exif/orientation_9_invalid.jpg", encoded(face, "JPEG", quality=92, exif=exif.tobytes()))
    noise_bytes = np.random.default_rng(5).integers(0, 256, 200, dtype=np.uint8).tobytes()
    garbage = b"Exif\x00\x00MM\x00\x2a" + noise_bytes
    add("exif/garbage_exif.jpg", encoded(face, "JPEG", quality=92, exif=garbage))

    buffer = io.BytesIO()
    Image.fromarray(face).convert("CMYK").save(buffer, format="JPEG", quality=92)
    add("modes/cmyk.jpg", buffer.getvalue())
    gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    add("modes/gray.jpg", encoded(gray, "JPEG", quality=92))
    add("modes/deep16_gray.png", encoded(gray.astype(np.uint16) * 257, "PNG"))
    ok, deep_rgb = cv2.imencode(".png", cv2.cvtColor(face, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    assert ok
    add("modes/deep16_rgb.png", deep_rgb.tobytes())
    buffer = io.BytesIO()
    Image.fromarray(face).convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, format="PNG")
    add("modes/palette.png", buffer.getvalue())
    alpha = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    alpha[:, :60, 3] = 0  # a transparent band far from the face
    alpha[300:, :, 3] = 128
    add("modes/alpha.png", encoded(alpha, "PNG"))
    add("modes/jpeg_named.png", jpeg)  # the content decides, not the suffix
    add("modes/webp_named.jpg", encoded(face, "WEBP", quality=90))

    # Animated files: the first frame is the face, the later ones are noise (must read frame 0).
    noise = np.random.default_rng(3).integers(0, 256, face.shape, dtype=np.uint8)
    for name, fmt in (("animated/anim.gif", "GIF"), ("animated/anim.webp", "WEBP")):
        buffer = io.BytesIO()
        frames = [Image.fromarray(face), Image.fromarray(noise), Image.fromarray(noise[::-1])]
        frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        add(name, buffer.getvalue())
    buffer = io.BytesIO()
    Image.fromarray(face).save(buffer, format="TIFF", save_all=True, append_images=[Image.fromarray(noise)])
    add("animated/multipage.tif", buffer.getvalue())

    add("broken/zero.jpg", b"")
    add("broken/truncated.jpg", jpeg[: len(jpeg) // 3])
    add("broken/truncated.png", png[: len(png) // 2])
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside the IHDR checksum
    add("broken/bad_crc.png", bytes(bad_crc))
    add("broken/text.jpg", b"this is a shopping list, not a photo\n")
    add("broken/text\nwith newline.jpg", b"a newline in a name must not split the report\n")
    add("broken/bomb.png", png_declaring(100_000, 100_000))
    # Metadata bombs: chunks that inflate far past Pillow's 1 MB limit for text and ICC profiles.
    text_bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 8_000_000, 9))
    add("broken/text_chunk_bomb.png", png[:33] + text_bomb + png[33:])
    icc_bomb = png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * 8_000_000, 9))
    add("broken/icc_chunk_bomb.png", png[:33] + icc_bomb + png[33:])
    add("broken/over_limit.png", png_declaring(13_000, 12_000))  # 156 MP: our limit, below Pillow's

    add("sizes/one_pixel.png", encoded(np.full((1, 1, 3), 200, np.uint8), "PNG"))
    add("sizes/extreme_aspect.png", encoded(np.full((60000, 20, 3), 128, np.uint8), "PNG"))
    add("sizes/tiny_32.png", encoded(cv2.resize(face, (32, 32), interpolation=cv2.INTER_AREA), "PNG"))
    huge = io.BytesIO()
    huge_photo(face).save(huge, format="JPEG", quality=85)
    add("sizes/huge_12000x8000.jpg", huge.getvalue())

    small = np.full((400, 400, 3), 120, np.uint8)
    small[180:220, 180:220] = cv2.resize(face, (40, 40), interpolation=cv2.INTER_AREA)
    add("faces/too_small.png", encoded(small, "PNG"))
    add("faces/cut_by_border.png", encoded(np.ascontiguousarray(face[:, 215:]), "PNG"))
    add("faces/five_faces.jpg", encoded(five_faces(face), "JPEG", quality=92))
    add("faces/cartoon.png", encoded(cartoon_face(), "PNG"))
    add("faces/profile_squeezed.png", encoded(profile_like(face), "PNG"))

    add("names/with spaces 'single' \"double\".jpg", jpeg)
    add("names/--help.jpg", jpeg)
    add("names/new\nline\ttab.jpg", jpeg)
    add("names/[bold]markup[reset] 100% {x}.jpg", jpeg)
    special("names/empty_folder.png", lambda p: p.mkdir())
    add("names/" + NON_UTF8_NAME, jpeg)
    add("names/" + LONG_NAME, jpeg)
    add("names/" + LONGEST_NAME, jpeg)
    add("names/same.jpg", jpeg)
    add("names/same.png", png)
    add("names/a/x.jpg", jpeg)
    add("names/b/x.jpg", jpeg)
    add("names/folder.png/inside.jpg", jpeg)  # a folder named like an image is searched, not read

    special("links/loop", lambda p: os.symlink(".", p))
    special("links/self_loop.jpg", lambda p: os.symlink(p.name, p))
    special("links/dangling.jpg", lambda p: os.symlink("no-such-photo.jpg", p))
    special("links/fifo.jpg", lambda p: os.mkfifo(p))
    add("links/unreadable.jpg", jpeg)
    os.chmod(root / "links/unreadable.jpg", 0)
    return names


def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
    """Poll `condition` every `poll` seconds for up to `timeout` seconds; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()


def shmt_command() -> list[str]:
    """How to start the `shmt` command line of *this checkout* as a subprocess.

    Not the environment's `shmt` script: that imports whichever checkout is installed (another
    worktree's code when several share a virtualenv), so subprocess tests would test the wrong code.
    """
    repo = str(Path(__file__).resolve().parents[1])
    start = f"import sys; sys.path.insert(0, {repo!r}); from shmt_cli.cli import app; app()"
    return [sys.executable, "-c", start]


def readable_despite_mode_0(path: Path) -> bool:
    """Whether a file with mode 000 can still be opened (true for root, or with CAP_DAC_OVERRIDE)."""
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except PermissionError:
        return False
    return True


def write_photo_set(
    folder: Path, face: np.ndarray, count: int, sizes: tuple[int, ...] = (400, 448, 512)
) -> list[Path]:
    """`count` distinct one-face photos (the astronaut resized, mirrored, brightened) in `folder`.

    Names are `photo_NN.jpg` / `photo_NN.png` (alternating); returns the paths in name order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        size = sizes[index % len(sizes)]
        photo = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
        if index // len(sizes) % 2:
            photo = np.ascontiguousarray(photo[:, ::-1])
        photo = np.clip(photo.astype(np.int16) + (index % 5 - 2) * 6, 0, 255).astype(np.uint8)
        suffix = ".jpg" if index % 2 else ".png"
        path = folder / f"photo_{index:02d}{suffix}"
        Image.fromarray(photo).save(path, **({"quality": 90} if suffix == ".jpg" else {"compress_level": 1}))
        paths.append(path)
    return paths
