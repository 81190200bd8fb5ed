"""The canonical 68-point template: where landmarks sit in a crop framed like SHMT's training images.

SHMT's data (MT, Wild-MT, LADN) shows the whole head with some background, eyes in the upper
third: not a tight face crop. ``TEMPLATE_256`` holds that framing as (x, y) pixel-centre positions
in a 256x256 crop, iBUG 300-W order (dlib's 68 points).

How it was derived (``tools/derive_template.py``): dlib landmarks on the 36 dev photos in
../shared/faces, mapped to each photo's plain 256x256 resize (SHMT's test-time geometry), each face
rotated about its landmark centroid until the eye line is level, positions averaged, then averaged
with the mirror image so the template is left-right symmetric about x = 127.5 (the photos sit ~4.5 px
left of centre on average; the face shape itself is symmetric to < 1 px rms). Per-photo rms
distance to the template after a similarity fit: mean 5.4 px.
"""

from __future__ import annotations

import numpy as np

TEMPLATE_SIZE = 256

# Point i of a face corresponds to point MIRROR_INDEX[i] of the same face flipped left-right.
MIRROR_INDEX = np.concatenate(
    [
        np.arange(16, -1, -1),  # jaw
        np.arange(26, 16, -1),  # brows
        [27, 28, 29, 30],  # nose bridge
        np.arange(35, 30, -1),  # nostrils
        [45, 44, 43, 42, 47, 46],  # image-left eye <- image-right eye
        [39, 38, 37, 36, 41, 40],
        np.arange(54, 47, -1),  # outer lips
        np.arange(59, 54, -1),
        np.arange(64, 59, -1),  # inner lips
        [67, 66, 65],
    ]
).astype(np.intp)

TEMPLATE_256 = np.array(
    [
        [44.95, 94.38],
        [46.50, 116.39],
        [50.25, 138.07],
        [55.02, 159.39],
        [62.73, 179.40],
        [74.90, 196.92],
        [90.22, 211.90],
        [108.11, 223.57],
        [127.50, 227.04],
        [146.89, 223.57],
        [164.78, 211.90],
        [180.10, 196.92],
        [192.27, 179.40],
        [199.98, 159.39],
        [204.75, 138.07],
        [208.50, 116.39],
        [210.05, 94.38],
        [56.90, 75.88],
        [68.21, 66.82],
        [83.37, 64.61],
        [98.45, 67.31],
        [112.72, 73.73],
        [142.28, 73.73],
        [156.55, 67.31],
        [171.63, 64.61],
        [186.79, 66.82],
        [198.10, 75.88],
        [127.50, 93.04],
        [127.50, 107.89],
        [127.50, 122.71],
        [127.50, 137.49],
        [113.24, 148.21],
        [120.18, 150.55],
        [127.50, 152.66],
        [134.82, 150.55],
        [141.76, 148.21],
        [73.78, 95.50],
        [83.30, 89.63],
        [95.10, 90.04],
        [104.90, 98.28],
        [94.03, 100.72],
        [82.30, 100.49],
        [150.10, 98.28],
        [159.90, 90.04],
        [171.70, 89.63],
        [181.22, 95.50],
        [172.70, 100.49],
        [160.97, 100.72],
        [97.51, 176.25],
        [108.71, 169.98],
        [119.78, 166.15],
        [127.50, 168.42],
        [135.22, 166.15],
        [146.29, 169.98],
        [157.49, 176.25],
        [146.75, 187.32],
        [136.04, 192.06],
        [127.50, 192.90],
        [118.96, 192.06],
        [108.25, 187.32],
        [103.03, 176.80],
        [119.55, 175.76],
        [127.50, 176.36],
        [135.45, 175.76],
        [151.97, 176.80],
        [135.46, 179.02],
        [127.50, 179.94],
        [119.54, 179.02],
    ],
    dtype=np.float64,
)


def template_for_size(size: int) -> np.ndarray:
    """TEMPLATE_256 scaled to a size x size crop: (68, 2) float64 (x, y) pixel-centre coordinates."""
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    return (TEMPLATE_256 + 0.5) * (size / TEMPLATE_SIZE) - 0.5
