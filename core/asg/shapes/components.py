"""4-connected component labelling in pure numpy (no scipy dependency).

Min-label propagation with pointer jumping: every foreground pixel starts
labelled with its own flat index, repeatedly takes the minimum over its
4-neighbours, and then jumps to its label's label.  Labels are always indices
of pixels in the same component, and the fixed point gives every component
one shared label; pointer jumping makes it converge in roughly log(diameter)
rounds instead of diameter rounds, all vectorised.
"""

from __future__ import annotations

import numpy as np


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Return (labels, n): labels is 0 for background and 1..n per component
    (numbered in raster order of each component's first pixel)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    h, w = mask.shape
    big = h * w  # larger than any flat index, marks background
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        new = lab.copy()
        np.minimum(new[1:, :], lab[:-1, :], out=new[1:, :])
        np.minimum(new[:-1, :], lab[1:, :], out=new[:-1, :])
        np.minimum(new[:, 1:], lab[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], lab[:, 1:], out=new[:, :-1])
        new[~mask] = big  # background never joins anything
        flat = np.append(new.ravel(), big)  # sentinel so big maps to big
        new = flat[new]  # pointer jump
        if np.array_equal(new, lab):
            break
        lab = new
    roots, inverse = np.unique(lab, return_inverse=True)
    inverse = inverse.reshape(h, w)
    if roots.size and roots[-1] == big:  # background is the largest value
        n = roots.size - 1
        out = np.where(mask, inverse + 1, 0)
    else:
        n = roots.size
        out = inverse + 1
    return out.astype(np.int32), int(n)
