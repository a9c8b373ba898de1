"""Full-size architectures with random weights, for GPU benchmarks: the published configs, so FLOPs,
memory and kernels are those of the real models; only the weights are random and nothing is downloaded.
Each family's architecture is its backbone class's `fullsize_pipeline` (with the source of every number);
the CLIP parts SD and SDXL share are here.
"""

from __future__ import annotations

import torch

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


def build_fullsize_pipeline(family: str, dtype: torch.dtype = torch.bfloat16, device: str = "cuda"):
    """The family's pipeline with random weights allocated directly on `device`: the denoiser and text
    encoders in `dtype` except the parts their class keeps in fp32, the VAE in fp32 (as a training job's
    `from_pretrained` loads them)."""
    from dti.backbones.registry import backbone_class

    cls = backbone_class(family)
    torch.manual_seed(0)
    pipe = cls.fullsize_pipeline(device)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and name != "vae":
            module.to(dtype)
            keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
            for sub_name, sub in module.named_modules():
                if keep and any(part in keep for part in sub_name.split(".")):
                    sub.to(torch.float32)
    return pipe
