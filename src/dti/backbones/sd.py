"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, its last hidden state conditions the UNet."""

from __future__ import annotations

import torch

from dti.backbones.base import Backbone, TextEncoderSlot, load_component, register_family


@register_family("sd")
class StableDiffusion(Backbone):
    pipeline_class = "StableDiffusionPipeline"
    pipeline_extras = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    @classmethod
    def load(cls, model: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> StableDiffusion:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", revision=revision)
        text_encoder = load_component(CLIPTextModel, model, "text_encoder", revision, dtype)
        unet = load_component(UNet2DConditionModel, model, "unet", revision, dtype)
        vae = load_component(AutoencoderKL, model, "vae", revision, torch.float32)
        components = dict(vae=vae.to(device), text_encoder=text_encoder.to(device), tokenizer=tokenizer,
                          unet=unet.to(device), scheduler=_load_scheduler(model, revision))
        return cls(components, model, revision)

    def make_slots(self) -> list[TextEncoderSlot]:
        c = self.components
        return [TextEncoderSlot("clip_l", c["tokenizer"], c["text_encoder"], "text_encoder")]

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        slot = self.slots[0]
        return {"hidden": slot.encoder(self.tokenize(slot, prompts))[0]}


def _load_scheduler(model: str, revision: str | None):
    from diffusers import EulerDiscreteScheduler

    # The sampling scheduler of the protocol (Euler); its config carries the model's beta schedule.
    return EulerDiscreteScheduler.from_pretrained(model, subfolder="scheduler", revision=revision)
