"""SDXL: two text encoders (CLIP ViT-L and OpenCLIP bigG), penultimate states concatenated,
the pooled projection of encoder 2 and six size/crop time ids."""

from __future__ import annotations

import torch

from dti.backbones.base import (
    Backbone,
    load_component,
    load_scheduler,
    load_tokenizer,
    to_device,
)


class StableDiffusionXL(Backbone):
    family = "sdxl"
    @classmethod
    def load(cls, model: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> StableDiffusionXL:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        parts = dict(
            tokenizer=load_tokenizer(CLIPTokenizer, model, "tokenizer", revision),
            tokenizer_2=load_tokenizer(CLIPTokenizer, model, "tokenizer_2", revision),
            text_encoder=load_component(CLIPTextModel, model, "text_encoder", revision, dtype),
            text_encoder_2=load_component(CLIPTextModelWithProjection, model, "text_encoder_2", revision, dtype),
            unet=load_component(UNet2DConditionModel, model, "unet", revision, dtype),
            # The stock SDXL VAE overflows in fp16; fp32 here (it encodes each training image once).
            vae=load_component(AutoencoderKL, model, "vae", revision, torch.float32),
            scheduler=load_scheduler(model, revision, "EulerDiscreteScheduler"))  # the protocol's sampler
        return cls(to_device(parts, device), model, revision)

    @classmethod
    def tiny_pipeline(cls):
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        from dti.tiny import EULER_SCHEDULER, clip_text_config, clip_tokenizer, kl_vae, unet

        return StableDiffusionXLPipeline(
            vae=kl_vae(), text_encoder=CLIPTextModel(clip_text_config(32, False)),
            text_encoder_2=CLIPTextModelWithProjection(clip_text_config(32, True)), tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet(64, sdxl=True),
            scheduler=EulerDiscreteScheduler(**EULER_SCHEDULER))

    @classmethod
    def fullsize_pipeline(cls, device):
        """SDXL base 1.0 (stable-diffusion-xl-base-1.0 unet/, vae/, text_encoder_2/ config.json): about 2.6 B
        UNet parameters."""
        from diffusers import (
            AutoencoderKL,
            EulerDiscreteScheduler,
            StableDiffusionXLPipeline,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        from dti.fullsize import KL_VAE, clip_l
        from dti.tiny import EULER_SCHEDULER, clip_tokenizer

        scheduler = EulerDiscreteScheduler(**EULER_SCHEDULER)  # schedulers keep CPU tensors: built outside
        tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")
        with torch.device(device):
            unet = UNet2DConditionModel(
                sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                mid_block_type="UNetMidBlock2DCrossAttn", transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            vae = AutoencoderKL(**KL_VAE, scaling_factor=0.13025, sample_size=1024)
            text_2 = CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280))
            return StableDiffusionXLPipeline(vae=vae, text_encoder=clip_l(), text_encoder_2=text_2,
                                             tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                             scheduler=scheduler)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        slot_l, slot_g = self.slots
        out_l = slot_l.encoder(self.tokenize(slot_l, prompts), output_hidden_states=True)
        out_g = slot_g.encoder(self.tokenize(slot_g, prompts), output_hidden_states=True)
        hidden = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2].to(out_l.hidden_states[-2].dtype)],
                           dim=-1)
        return {"hidden": hidden, "pooled": out_g.text_embeds}

    def token_features(self, cond):
        """clip_l's and clip_g's penultimate outputs, which encode_prompts joins along the width."""
        widths = [slot.encoder.config.hidden_size for slot in self.slots]
        return list(torch.split(cond["hidden"], widths, dim=-1))

    def predict(self, noisy, timesteps, cond, time_ids):
        dtype = self.denoiser.dtype
        added = {"text_embeds": cond["pooled"].to(dtype), "time_ids": time_ids.to(dtype)}
        return self.denoiser(noisy.to(dtype), timesteps, encoder_hidden_states=cond["hidden"].to(dtype),
                             added_cond_kwargs=added).sample
