"""The networks of the `tiny` backbone, built from transformers and diffusers classes.

- understanding: ``LlavaForConditionalGeneration`` = SigLIP vision tower -> MLP projector -> Qwen2 LM
  (each image is 64 tokens of one 8x8 patch each at 64x64 px);
- generation: ``num_queries`` learned latent queries are appended to the prompt, run through the same
  LM, and their last-layer states condition a ``PixArtTransformer2DModel`` over 64x64 RGB pixels (the
  BLIP3o pattern, at toy scale).

The head predicts the *clean image* x0 and the velocity is derived from it (x-prediction, as in
"Back to Basics: Let Denoising Generative Models Denoise", Li & He 2025): an 8x8x3 = 192-value pixel
patch passes through a 128-wide token, and such a bottleneck can represent clean patches (flat colour
and edges) but not the per-pixel noise that velocity- or noise-prediction must reproduce. Measured
on this model: velocity-prediction left visible noise in every sample.
"""

from __future__ import annotations

import torch
from torch import nn

from asg.backbones.tiny.config import TinyConfig


def build_vlm(cfg: TinyConfig, *, image_token_id: int, pad_token_id: int, eos_token_id: int) -> nn.Module:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.vision_hidden,
        intermediate_size=2 * cfg.vision_hidden, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, num_channels=3,
    )
    text = Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads, max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True, pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id,
        vision_feature_select_strategy="full", vision_feature_layer=-1, projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    return model


# Smallest t used to turn an x0 prediction into a velocity, v = (x_t - x0) / t: keeps the v-loss
# weight 1/t^2 bounded near t = 0 (the JiT recipe).
T_MIN = 0.05


class FlowHead(nn.Module):
    """Latent queries + a PixArt transformer predicting clean RGB pixels in [-1, 1] (x-prediction)."""

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        from diffusers import PixArtTransformer2DModel

        self.queries = nn.Parameter(torch.randn(cfg.num_queries, cfg.text_hidden) * 0.02)  # (Q, H)
        self.transformer = PixArtTransformer2DModel(
            num_attention_heads=cfg.head_heads, attention_head_dim=cfg.head_dim, in_channels=3, out_channels=3,
            num_layers=cfg.head_layers, cross_attention_dim=cfg.head_heads * cfg.head_dim,
            sample_size=cfg.image_size, patch_size=cfg.patch_size, caption_channels=cfg.text_hidden,
            norm_type="ada_norm_single", use_additional_conditions=False, norm_num_groups=1,
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Rectified-flow velocity (B, 3, S, S) at noisy pixels ``x_t`` = (1-t)·x0 + t·ε (B, 3, S, S),
        time ``t`` in [0, 1] (B,), conditioning ``cond`` (B, Q, H)."""
        x0 = self.transformer(x_t, encoder_hidden_states=cond, timestep=t * 1000.0, return_dict=False)[0]
        return (x_t - x0) / t.clamp_min(T_MIN)[:, None, None, None]
