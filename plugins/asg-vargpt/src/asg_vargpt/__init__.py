"""asg backbone plugin for VARGPT-v1.1: a Qwen2-VL that also paints, through an Infinity next-scale head.

Modules: :mod:`asg_vargpt.vlm` (understanding, config, tokenizer, processor), :mod:`asg_vargpt.infinity`
(the head), :mod:`asg_vargpt.generate` (the next-scale loop with the LLM in it), :mod:`asg_vargpt.bsq_vae`
(the BSQ-VAE), :mod:`asg_vargpt.checkpoint` and :mod:`asg_vargpt.keys` (names and strict loading) and
:mod:`asg_vargpt.backbone` (the asg backbone).
"""

from __future__ import annotations

__version__ = "0.1.0"
