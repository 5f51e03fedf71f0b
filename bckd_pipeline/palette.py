"""The class colours every picture of this project uses: report.html's masks and predict's label maps.

numpy only, so the Segmenter and the label PNGs it writes need nothing heavier.
"""

from __future__ import annotations

import numpy as np


def palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved, distinct neighbours), n x 3 uint8; class 0 is not black here."""
    colors = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i + 1, 0, 0, 0  # +1: VOC's index 0 is black, which is kept for ignore pixels
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors[i] = (r, g, b)
    return colors
