"""Wan 2.1 text-to-video (diffusers WanPipeline) used for images, as the DTI authors do: each photo is a
one-frame video, the UMT5 encoder's 512-token states condition a 3D DiT, and the loss is flow matching.

Training follows the authors' Wan script: the prompt cleaned as the pipeline cleans it, 512 UMT5 tokens
with the attention mask and the states past the prompt zeroed, the one-frame latent taken at the mode of
the 3D VAE's distribution and normalised by its per-channel mean and std, rectified-flow loss with uniform
timesteps and no weighting (dti.backbones.objectives.FlowMatching). Sampling renders one frame
(num_frames=1) and decodes it as the image to score.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dti.backbones.base import (
    Backbone,
    TextEncoderSlot,
    load_component,
    load_scheduler,
    load_tokenizer,
    to_device,
)
from dti.backbones.objectives import FlowMatching
from dti.errors import DtiError

MAX_TEXT_LENGTH = 512  # the pipeline's max_sequence_length, and the authors' training text length
_SPECIALS = ["<pad>", "</s>", "<unk>"]  # T5's ids 0, 1, 2


def umt5_tokenizer(vocab_size: int | None = None):
    """A T5Tokenizer with a small unigram vocabulary counted on the project's prompts (dti.tiny); with
    `vocab_size`, padded with unused pieces to that many ids, as the real 256300-id vocabulary."""
    from transformers import T5Tokenizer

    from dti.tiny import counted_unigram

    vocab = counted_unigram(_SPECIALS)
    vocab += [(f"<unused{i}>", -100.0) for i in range(len(vocab), vocab_size or 0)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _check_wan21(model: str, revision: str | None) -> None:
    """Wan 2.2's two-expert and per-token-timestep pipelines share the class but not this recipe."""
    from dti.model_files import model_folder

    folder = model_folder(model, revision)
    index = folder / "model_index.json" if folder is not None else None
    if index is None or not index.is_file():
        return
    try:
        config = json.loads(Path(index).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DtiError(f"cannot read {index}: {err}") from err
    if config.get("boundary_ratio") is not None or (config.get("transformer_2") or [None])[0] is not None \
            or config.get("expand_timesteps"):
        raise DtiError(f"model {model!r} is a Wan 2.2 pipeline (two denoisers or per-token timesteps); dti trains "
                       "Wan 2.1 text-to-video models")


class Wan(Backbone):
    family = "wan"
    denoiser_name = "transformer"
    objective_class = FlowMatching
    max_text_length = MAX_TEXT_LENGTH
    placeholder_joiner = ""  # the authors write a k-vector placeholder's tokens without spaces
    sampling_kwargs = {"num_frames": 1}
    # The VAE and the patch embedding are 3D convolutions, which have no channels_last layout in torch.
    speedups_supported = frozenset({"compile", "fuse_qkv"})

    @classmethod
    def load(cls, model: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> Wan:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        _check_wan21(model, revision)
        parts = dict(tokenizer=load_tokenizer(AutoTokenizer, model, "tokenizer", revision),
                     text_encoder=load_component(UMT5EncoderModel, model, "text_encoder", revision, dtype),
                     transformer=load_component(WanTransformer3DModel, model, "transformer", revision, dtype),
                     vae=load_component(AutoencoderKLWan, model, "vae", revision, torch.float32),
                     scheduler=load_scheduler(model, revision))  # the model's own sampler (flow UniPC)
        return cls(to_device(parts, device), model, revision)

    @classmethod
    def tiny_pipeline(cls):
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        tokenizer = umt5_tokenizer()
        # More table rows than token ids, as UMT5's (rounded up to a multiple of 128).
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=-(-len(tokenizer) // 128) * 128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
        transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                            in_channels=4, out_channels=4, text_dim=32, freq_dim=16, ffn_dim=32,
                                            num_layers=2, rope_max_seq_len=32)
        # Wan's per-channel latent statistics, here for 4 channels (the real VAE has 16).
        vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True], latents_mean=[-0.76, -0.71, -0.91, 0.11],
                               latents_std=[2.82, 1.45, 2.33, 2.66])
        scheduler = UniPCMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
        return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                           scheduler=scheduler)

    @classmethod
    def fullsize_pipeline(cls, device):
        """Wan 2.1 T2V 1.3B. The tokenizer is the small trained one padded to UMT5's 256300 ids (prompts are
        padded to 512 tokens, so the encoder's cost is the real one)."""
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        tokenizer = umt5_tokenizer(vocab_size=256300)
        # The WanPipeline docstring's scheduler for 480p: UniPC on flow sigmas, flow_shift 3.0.
        scheduler = UniPCMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
        with torch.device(device):
            # google/umt5-xxl config.json (the encoder diffusers' scripts/convert_wan_to_diffusers.py loads).
            text_encoder = UMT5EncoderModel(UMT5Config(
                vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
            # convert_wan_to_diffusers.py, get_transformer_config("Wan-T2V-1.3B").
            transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, added_kv_proj_dim=None)
            vae = AutoencoderKLWan()  # the conversion script's convert_vae: AutoencoderKLWan's defaults
            return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                               scheduler=scheduler)

    # --- text -------------------------------------------------------------------------------------
    def make_slots(self) -> list[TextEncoderSlot]:
        self.components["tokenizer"].padding_side = "right"
        return super().make_slots()

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """WanPipeline's prompt embedding: prompts cleaned by the pipeline's own `prompt_clean`, 512 tokens
        with the mask, the last hidden state with every position past the prompt set to zero."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        slot = self.slots[0]
        ids, mask = self.tokenize_with_mask(slot, [prompt_clean(p) for p in prompts])
        hidden = slot.encoder(ids, mask).last_hidden_state
        return {"hidden": torch.where(mask.bool().unsqueeze(-1), hidden, torch.zeros_like(hidden))}

    # --- latents: a one-frame video -----------------------------------------------------------------
    @property
    def latent_factor(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    @property
    def pixel_multiple(self) -> int:
        return self.latent_factor * self.denoiser.config.patch_size[1]

    def latent_shape(self, cells: int) -> tuple[int, ...]:
        return (self.vae.config.z_dim, 1, cells, cells)

    def _channel_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and 1/std, shaped for latents [(B,) C, F, H, W] like `like`."""
        shape = [1] * like.dim()
        shape[-4] = -1
        config = self.vae.config
        mean = torch.tensor(config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        inv_std = 1.0 / torch.tensor(config.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, inv_std

    @torch.no_grad()
    def encode_pixels(self, pixels):
        video = pixels.unsqueeze(0).unsqueeze(2).to(self.vae.device, self.vae.dtype)  # [1, 3, 1, H, W]
        mode = self.vae.encode(video).latent_dist.mode()[0].float()  # the authors' sample_mode="argmax"
        return mode, torch.zeros_like(mode)

    def to_model_latents(self, latents):
        mean, inv_std = self._channel_stats(latents)
        return (latents - mean) * inv_std

    def decode_latents(self, latents, chunk: int = 4):
        """[B, C, 1, h, w] -> the frame [B, 3, H, W], unnormalised as WanPipeline does."""
        latents = latents.to(self.vae.dtype)
        mean, inv_std = self._channel_stats(latents)
        latents = latents / inv_std + mean
        return torch.cat([self.vae.decode(part).sample[:, :, 0] for part in latents.split(chunk)])

    # --- training and sampling ----------------------------------------------------------------------
    def predict(self, noisy, timesteps, cond, time_ids):
        dtype = self.denoiser.dtype
        return self.denoiser(hidden_states=noisy.to(dtype), timestep=timesteps,
                             encoder_hidden_states=cond["hidden"].to(dtype)).sample

    def render_latents(self, prompts, generators, *, steps, guidance_scale, height, width):
        out = self.pipe(prompt=prompts, generator=generators, num_inference_steps=steps,
                        guidance_scale=guidance_scale, height=height, width=width, output_type="latent",
                        **self.sampling_kwargs)
        return out.frames
