"""Full-size SD 1.5 and SDXL architectures with random weights, for GPU benchmarks.

The published configs (see docs/FULLSIZE in the project notes): FLOPs, memory and kernels are those of
the real models; only the weights are random, so nothing has to be downloaded.
"""

from __future__ import annotations

import torch

from dti.tiny import _SCHEDULER, clip_tokenizer

_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, norm_num_groups=32)


def _clip_l():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))


def build_fullsize_pipeline(family: str, dtype: torch.dtype = torch.bfloat16, device: str = "cuda"):
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    scheduler = EulerDiscreteScheduler(**_SCHEDULER)  # schedulers keep CPU tensors: build outside the device
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")
    with torch.device(device):  # allocate the weights directly on the GPU
        if family == "sd":
            unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                        attention_head_dim=8, cross_attention_dim=768)
            vae = AutoencoderKL(**_VAE, scaling_factor=0.18215, sample_size=512)
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=_clip_l(), tokenizer=tokenizer, unet=unet,
                                           scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        else:
            unet = UNet2DConditionModel(
                sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                mid_block_type="UNetMidBlock2DCrossAttn", transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            vae = AutoencoderKL(**_VAE, scaling_factor=0.13025, sample_size=1024)
            text_2 = CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280))
            pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=_clip_l(), text_encoder_2=text_2,
                                             tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                             scheduler=scheduler)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(dtype)
    return pipe
