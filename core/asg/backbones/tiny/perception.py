"""Dense perception targets for `tiny`'s vision tower, from the labeled scenes' ground truth.

Trained only through the language model's answer tokens, the tower's features collapse: a linear probe
can no longer tell a single circle from a square at the projector output (docs/tiny.md). This module
gives the tower an objective of its own. Every image token (one 8x8 patch) is asked four questions
about the object under the patch's centre point, each a linear read-out of the *projector* output,
i.e. of exactly what the language model reads:

- ``shape``: background, circle, square or triangle (the top-most object that covers the point);
- ``color``: background or one of the six colours;
- ``size``: background, small or large;
- ``center``: whether an object's centre lies inside the patch (so counting is a sum of patches).

The targets come from the scene description, not from the pixels, so they are exact. They use only
the labeled ``pretrain`` scenes, like every other pretraining signal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from asg.shapes.geometry import inside
from asg.shapes.scene import Scene
from asg.shapes.vocab import COLORS, SHAPES, SIZES

HEADS: dict[str, int] = {"shape": 1 + len(SHAPES), "color": 1 + len(COLORS), "size": 1 + len(SIZES), "center": 2}
_COLOR_NAMES = tuple(COLORS)


def patch_targets(scene: Scene, grid: int) -> dict[str, np.ndarray]:
    """Per-patch class indices (row-major, ``grid * grid`` entries, 0 = background / no centre).

    Later objects are painted over earlier ones by the renderer, so the last object that covers a
    patch's centre point owns it.
    """
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    centres = (np.arange(grid) + 0.5) / grid  # patch centres in [0, 1] canvas units
    px, py = centres[None, :], centres[:, None]
    out = {name: np.zeros((grid, grid), dtype=np.int64) for name in HEADS}
    for o in scene.objects:
        covered = inside(o.shape, px, py, o.x, o.y, o.extent)
        out["shape"][covered] = 1 + SHAPES.index(o.shape)
        out["color"][covered] = 1 + _COLOR_NAMES.index(o.color)
        out["size"][covered] = 1 + SIZES.index(o.size)
        row, col = min(grid - 1, int(o.y * grid)), min(grid - 1, int(o.x * grid))
        out["center"][row, col] = 1
    return {name: a.reshape(-1) for name, a in out.items()}


def stack_targets(scenes: list[Scene], grid: int) -> dict[str, torch.Tensor]:
    """:func:`patch_targets` of each scene, stacked to ``(len(scenes), grid * grid)`` long tensors."""
    per = [patch_targets(s, grid) for s in scenes]
    return {name: torch.from_numpy(np.stack([p[name] for p in per])) for name in HEADS}


class PerceptionHeads(nn.Module):
    """One linear classifier per target, applied to every image token independently."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(width, classes) for name, classes in HEADS.items()})

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(tokens) for name, head in self.heads.items()}


def pixel_values(backbone: Any, images: list[Any], batch: int = 500) -> torch.Tensor:
    """The vision tower's input for ``images`` (PIL), through the backbone's own image processor, in
    the backbone's dtype."""
    processor = backbone._image_processor.image_processor
    return torch.cat([processor(images[i:i + batch], return_tensors="pt")["pixel_values"]
                      for i in range(0, len(images), batch)]).to(backbone._param_dtype())


def image_tokens(backbone: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projector output for ``pixel_values``: the image tokens the language model reads,
    ``(batch, patches, text width)``. Uses the same layer the LLaVA model feeds its projector."""
    vlm = backbone.net["vlm"].model
    hidden = vlm.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return vlm.multi_modal_projector(hidden[vlm.config.vision_feature_layer])


def perception_loss(heads: PerceptionHeads, tokens: torch.Tensor,
                    targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over the heads of the mean per-patch cross-entropy, and each head's patch accuracy (%)."""
    logits = heads(tokens)
    total = tokens.new_zeros(())
    accuracy = {}
    for name, lg in logits.items():
        y = targets[name].to(lg.device)
        total = total + nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), y.reshape(-1))
        accuracy[name] = 100.0 * float((lg.argmax(-1) == y).float().mean())
    return total, accuracy


def evaluate_perception(backbone: Any, heads: PerceptionHeads, pixel_values: torch.Tensor,
                        targets: dict[str, torch.Tensor], batch: int = 200) -> dict[str, float]:
    """Patch accuracy (%) of each head on held-out images, and of the object patches only (``*_objects``:
    the patches some object covers, where always answering "background" scores nothing)."""
    with torch.no_grad():
        logits = [heads(image_tokens(backbone, pixel_values[i:i + batch])) for i in range(0, len(pixel_values), batch)]
    out = {}
    for name in HEADS:
        pred = torch.cat([lg[name] for lg in logits]).argmax(-1)
        y = targets[name]
        out[name] = 100.0 * float((pred == y).float().mean())
        fg = y > 0
        if fg.any():
            out[f"{name}_objects"] = 100.0 * float((pred[fg] == y[fg]).float().mean())
    return out
