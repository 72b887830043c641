"""Deterministic, platform-stable random streams keyed by (domain, split, seed, ...).

numpy's SeedSequence hashes an integer list, so the same key gives the same
stream on every run and platform (unlike Python's salted ``hash()``).  Every key
starts with a fixed namespace and a domain id so that, e.g., the RNG that draws
a scene can never coincide with the one that draws its questions.
"""

from __future__ import annotations

import numpy as np

from ._checks import is_int, require_choice
from .vocab import SPLITS

# Arbitrary constant ("SHAP" in ASCII) so our streams differ from anyone else's
# default_rng([split, seed, index]) keyed on the same small integers.
_NAMESPACE = 0x53484150

# Domain ids: one per kind of random draw.  Never renumber.
SCENE = 0
QUESTIONS = 1
GENEVAL = 2


def split_id(split: str) -> int:
    return SPLITS.index(require_choice("split", split, SPLITS))


def rng_for(domain: int, split: str, seed: int, *keys: int) -> np.random.Generator:
    """A fresh Generator for one (domain, split, seed, *keys) key.

    Callers of one domain always pass the same number of keys: SeedSequence pads
    short entropy with zeros, so [.., 5] and [.., 5, 0] would otherwise collide.
    """
    for name, value in (("seed", seed),) + tuple((f"key[{i}]", k) for i, k in enumerate(keys)):
        if not is_int(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    entropy = [_NAMESPACE, domain, split_id(split), int(seed), *(int(k) for k in keys)]
    return np.random.default_rng(entropy)
