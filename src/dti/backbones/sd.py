"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, its last hidden state conditions the UNet."""

from __future__ import annotations

import torch

from dti.backbones.base import Backbone, TextEncoderSlot, load_component, register_family


@register_family("sd")
class StableDiffusion(Backbone):
    @classmethod
    def load(cls, model: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> StableDiffusion:
        from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", revision=revision)
        text_encoder = load_component(CLIPTextModel, model, "text_encoder", revision, dtype)
        unet = load_component(UNet2DConditionModel, model, "unet", revision, dtype)
        vae = load_component(AutoencoderKL, model, "vae", revision, torch.float32)
        scheduler = _load_scheduler(model, revision)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False).to(device)
        return cls(pipe, model, revision)

    def make_slots(self) -> list[TextEncoderSlot]:
        return [TextEncoderSlot("clip_l", self.pipe.tokenizer, self.pipe.text_encoder, "text_encoder")]

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        slot = self.slots[0]
        return {"hidden": slot.encoder(self.tokenize(slot, prompts))[0]}


def _load_scheduler(model: str, revision: str | None):
    from diffusers import EulerDiscreteScheduler

    # The sampling scheduler of the protocol (Euler); its config carries the model's beta schedule.
    return EulerDiscreteScheduler.from_pretrained(model, subfolder="scheduler", revision=revision)
