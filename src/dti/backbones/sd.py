"""Stable Diffusion 1.x / 2.x: one CLIP text encoder whose last hidden state (after its final layer norm)
conditions the UNet, as diffusers' StableDiffusionPipeline computes it. SD 2.x's OpenCLIP-H encoder is a
CLIPTextModel too; a v-prediction model (SD 2.1 768-v) trains on the velocity its scheduler config names.
"""

from __future__ import annotations

import torch

from dti.backbones.base import (
    Backbone,
    load_component,
    load_scheduler,
    load_tokenizer,
    to_device,
)


class StableDiffusion(Backbone):
    family = "sd"
    pipeline_extras = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    @classmethod
    def load(cls, model: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> StableDiffusion:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        parts = dict(tokenizer=load_tokenizer(CLIPTokenizer, model, "tokenizer", revision),
                     text_encoder=load_component(CLIPTextModel, model, "text_encoder", revision, dtype),
                     unet=load_component(UNet2DConditionModel, model, "unet", revision, dtype),
                     vae=load_component(AutoencoderKL, model, "vae", revision, torch.float32),
                     # The sampling scheduler of the protocol (Euler); its config carries the model's beta
                     # schedule and prediction type.
                     scheduler=load_scheduler(model, revision, "EulerDiscreteScheduler"))
        return cls(to_device(parts, device), model, revision)

    @classmethod
    def tiny_pipeline(cls):
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
        from transformers import CLIPTextModel

        from dti.tiny import EULER_SCHEDULER, clip_text_config, clip_tokenizer, kl_vae, unet

        return StableDiffusionPipeline(
            vae=kl_vae(), text_encoder=CLIPTextModel(clip_text_config(32, False)), tokenizer=clip_tokenizer(),
            unet=unet(32, sdxl=False), scheduler=EulerDiscreteScheduler(**EULER_SCHEDULER), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)

    @classmethod
    def fullsize_pipeline(cls, device):
        """SD 1.5 (stable-diffusion-v1-5 unet/, vae/ and text_encoder/ config.json): about 860 M UNet parameters."""
        from diffusers import (
            AutoencoderKL,
            EulerDiscreteScheduler,
            StableDiffusionPipeline,
            UNet2DConditionModel,
        )

        from dti.fullsize import KL_VAE, clip_l
        from dti.tiny import EULER_SCHEDULER, clip_tokenizer

        scheduler, tokenizer = EulerDiscreteScheduler(**EULER_SCHEDULER), clip_tokenizer()  # CPU objects
        with torch.device(device):
            unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                        attention_head_dim=8, cross_attention_dim=768)
            vae = AutoencoderKL(**KL_VAE, scaling_factor=0.18215, sample_size=512)
            return StableDiffusionPipeline(vae=vae, text_encoder=clip_l(), tokenizer=tokenizer, unet=unet,
                                           scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        slot = self.slots[0]
        ids, mask = self.tokenize_with_mask(slot, prompts)
        # The pipeline passes the attention mask only to encoders whose config asks for it.
        use_mask = getattr(slot.encoder.config, "use_attention_mask", False)
        return {"hidden": slot.encoder(ids, attention_mask=mask if use_mask else None)[0]}

    def predict(self, noisy, timesteps, cond, time_ids):
        dtype = self.denoiser.dtype
        return self.denoiser(noisy.to(dtype), timesteps, encoder_hidden_states=cond["hidden"].to(dtype)).sample
