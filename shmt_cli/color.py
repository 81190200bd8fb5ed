"""CIELAB (D65, sRGB companding) in float32, exactly: OpenCV's float conversion approximates the cube
root (errors up to ~0.4 in a*), which matters for colour metrics and region colour transfer."""

from __future__ import annotations

import numpy as np

_SRGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_D65_WHITE = np.array([0.950456, 1.0, 1.088754])
_RGB_TO_XYZN = (_SRGB_TO_XYZ / _D65_WHITE[:, None]).astype(np.float32)
_XYZN_TO_RGB = np.linalg.inv(_SRGB_TO_XYZ / _D65_WHITE[:, None]).astype(np.float32)
_CODE = np.arange(256) / 255.0
_SRGB_DECODE = np.where(_CODE <= 0.04045, _CODE / 12.92, ((_CODE + 0.055) / 1.055) ** 2.4).astype(np.float32)
_DELTA = 6.0 / 29.0


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float32 CIELAB: L in [0, 100], a* and b* about [-128, 128]."""
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb_to_lab expects uint8, got {rgb.dtype}")
    xyz = _SRGB_DECODE[rgb] @ _RGB_TO_XYZN.T
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    lab = np.empty_like(xyz)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) float CIELAB -> (..., 3) uint8 sRGB (out-of-gamut colours clipped, rounded)."""
    lab = np.asarray(lab, dtype=np.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    linear = np.clip(xyz @ _XYZN_TO_RGB.T, 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1.0 / 2.4) - 0.055)
    return np.clip(np.rint(srgb * 255.0), 0, 255).astype(np.uint8)
