"""Full-size architectures with random weights, for GPU benchmarks: the published configs, so FLOPs,
memory and kernels are those of the real models; only the weights are random and nothing is downloaded.
Each family's architecture is its backbone class's `fullsize_pipeline` (with the source of every number);
the CLIP parts SD and SDXL share are here.
"""

from __future__ import annotations

# The SD-family AutoencoderKL (SD 1.5 and SDXL base 1.0 vae/config.json); scaling_factor and sample_size
# differ per model.
KL_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, norm_num_groups=32)


def clip_l():
    """CLIP ViT-L/14's text encoder (SD 1.5 text_encoder, SDXL text_encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))
