"""SDXL: two text encoders (CLIP ViT-L and OpenCLIP bigG), penultimate states concatenated,
the pooled projection of encoder 2 and six size/crop time ids."""

from __future__ import annotations

import torch

from dti.backbones.base import Backbone, TextEncoderSlot, load_component, register_family
from dti.backbones.sd import _load_scheduler


@register_family("sdxl")
class StableDiffusionXL(Backbone):
    pipeline_class = "StableDiffusionXLPipeline"

    @classmethod
    def load(cls, model: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> StableDiffusionXL:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", revision=revision)
        tokenizer_2 = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2", revision=revision)
        text_encoder = load_component(CLIPTextModel, model, "text_encoder", revision, dtype)
        text_encoder_2 = load_component(CLIPTextModelWithProjection, model, "text_encoder_2", revision, dtype)
        unet = load_component(UNet2DConditionModel, model, "unet", revision, dtype)
        # The stock SDXL VAE overflows in fp16; fp32 here (it encodes each training image once).
        vae = load_component(AutoencoderKL, model, "vae", revision, torch.float32)
        components = dict(vae=vae.to(device), text_encoder=text_encoder.to(device),
                          text_encoder_2=text_encoder_2.to(device), tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                          unet=unet.to(device), scheduler=_load_scheduler(model, revision))
        return cls(components, model, revision)

    def make_slots(self) -> list[TextEncoderSlot]:
        c = self.components
        return [TextEncoderSlot("clip_l", c["tokenizer"], c["text_encoder"], "text_encoder"),
                TextEncoderSlot("clip_g", c["tokenizer_2"], c["text_encoder_2"], "text_encoder_2")]

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        slot_l, slot_g = self.slots
        out_l = slot_l.encoder(self.tokenize(slot_l, prompts), output_hidden_states=True)
        out_g = slot_g.encoder(self.tokenize(slot_g, prompts), output_hidden_states=True)
        hidden = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2].to(out_l.hidden_states[-2].dtype)],
                           dim=-1)
        return {"hidden": hidden, "pooled": out_g.text_embeds}

    def unet_kwargs(self, cond: dict[str, torch.Tensor], time_ids: torch.Tensor) -> dict:
        dtype = self.unet.dtype
        return {"added_cond_kwargs": {"text_embeds": cond["pooled"].to(dtype), "time_ids": time_ids.to(dtype)}}
