"""SANA 1.5 (diffusers SanaPipeline): a Gemma-2 decoder as text encoder, a linear-attention DiT, the DC-AE
(32 pixels per latent cell) and flow matching.

Training follows the DTI authors' SANA script: the prompt lower-cased and stripped as the pipeline does,
300 Gemma tokens with the attention mask, no "complex human instruction" prefix, rectified-flow loss with
uniform timesteps and no weighting (dti.backbones.objectives.FlowMatching). Sampling calls the pipeline
with its defaults for everything the sample settings do not name, so the complex human instruction the
pipeline prepends by default is used there, as in the authors' evaluator. The placeholder lives in Gemma's
input embedding table; m is measured on that table's rows (Gemma multiplies every looked-up row by
sqrt(hidden size) inside the model, and dti.tokens.PlaceholderEmbedding scales the new rows alike).
"""

from __future__ import annotations

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

MAX_TEXT_LENGTH = 300  # the pipeline's max_sequence_length, and the authors' training text length
# Gemma-2's special ids (its tokenizer's <pad>, <eos>, <bos>, <unk>, <mask> are 0..4).
_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def gemma_tokenizer(vocab_size: int | None = None):
    """A GemmaTokenizer with a small BPE vocabulary trained on the project's prompts (dti.tiny); with
    `vocab_size`, padded with unused pieces to that many ids, as the real 256000-id vocabulary."""
    from transformers import GemmaTokenizer

    from dti.tiny import trained_bpe

    vocab, merges = trained_bpe(2000, _SPECIALS, unk="<unk>")
    for i in range(len(vocab), vocab_size or 0):
        vocab[f"<unused{i}>"] = i
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


class Sana(Backbone):
    family = "sana"
    denoiser_name = "transformer"
    objective_class = FlowMatching
    max_text_length = MAX_TEXT_LENGTH
    placeholder_joiner = ""  # the authors write a k-vector placeholder's tokens without spaces
    # Resolution binning maps a requested size to the nearest of the model's trained aspect-ratio bins; for
    # the protocol's square 1024 px that is 1024 px itself, other sizes would render at another size.
    sampling_kwargs = {"use_resolution_binning": False}
    # fuse_qkv would fuse projections that SANA's linear-attention processors never read: no gain.
    speedups_supported = frozenset({"compile", "channels_last"})
    compile_blocks = ("SanaTransformerBlock",)

    @classmethod
    def load(cls, model: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> Sana:
        from diffusers import AutoencoderDC, SanaTransformer2DModel
        from transformers import AutoTokenizer, Gemma2Model

        parts = dict(tokenizer=load_tokenizer(AutoTokenizer, model, "tokenizer", revision),
                     text_encoder=load_component(Gemma2Model, model, "text_encoder", revision, dtype),
                     transformer=load_component(SanaTransformer2DModel, model, "transformer", revision, dtype),
                     vae=load_component(AutoencoderDC, model, "vae", revision, torch.float32),
                     scheduler=load_scheduler(model, revision))  # the model's own sampler (flow DPM-Solver)
        return cls(to_device(parts, device), model, revision)

    @classmethod
    def tiny_pipeline(cls):
        from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
        from transformers import Gemma2Config, Gemma2Model

        tokenizer = gemma_tokenizer()
        text_encoder = Gemma2Model(Gemma2Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
            pad_token_id=0, eos_token_id=1, bos_token_id=2))
        # The SANA 1.5 layout (qk norm, linear self-attention, GLU conv feed-forward), 4 cells per 32 px.
        transformer = SanaTransformer2DModel(
            in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32,
            sample_size=16, qk_norm="rms_norm_across_heads")
        blocks = ("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock")  # 8 pixels per cell
        vae = AutoencoderDC(latent_channels=8, attention_head_dim=8, encoder_block_types=blocks,
                            decoder_block_types=blocks, encoder_block_out_channels=(8, 16, 16, 16),
                            decoder_block_out_channels=(8, 16, 16, 16), encoder_layers_per_block=(1, 1, 1, 1),
                            decoder_layers_per_block=(1, 1, 1, 1), encoder_qkv_multiscales=((), (), (5,), (5,)),
                            decoder_qkv_multiscales=((), (), (5,), (5,)), downsample_block_type="conv",
                            upsample_block_type="interpolate", scaling_factor=0.41407)
        scheduler = DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
        return SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                            scheduler=scheduler)

    @classmethod
    def fullsize_pipeline(cls, device):
        """SANA 1.5 1.6B at 1024 px. The tokenizer is the small trained one padded to Gemma-2's 256000 ids
        (prompts are padded to 300 tokens, so the encoder's cost is the real one)."""
        from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
        from transformers import Gemma2Config, Gemma2Model

        tokenizer = gemma_tokenizer(vocab_size=256000)
        # diffusers scripts/convert_sana_to_diffusers.py: scheduler "flow-dpm_solver", flow_shift 3.0 below 4K.
        scheduler = DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
        with torch.device(device):
            # Gemma-2 2B (Efficient-Large-Model/gemma-2-2b-it config.json, which the conversion script loads).
            text_encoder = Gemma2Model(Gemma2Config(
                vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                query_pre_attn_scalar=256, sliding_window=4096, pad_token_id=0, eos_token_id=1, bos_token_id=2))
            # convert_sana_to_diffusers.py: model_kwargs["SanaMS1.5_1600M_P1_D20"] (70 heads x 32, 20 layers,
            # cross-attention 20 x 112 = 2240), caption_channels 2304, mlp_ratio 2.5, sample_size 1024 // 32,
            # patch 1, norm_eps 1e-6, qk_norm "rms_norm_across_heads" for SANA 1.5.
            transformer = SanaTransformer2DModel(
                in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
                num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
                caption_channels=2304, mlp_ratio=2.5, attention_bias=False, sample_size=32, patch_size=1,
                norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None,
                qk_norm="rms_norm_across_heads")
            # DC-AE f32c32 (scripts/convert_dcae_to_diffusers.py, convert_ae; SANA 1.5 ships its 1.1 weights
            # of the same architecture).
            blocks = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
            vae = AutoencoderDC(
                in_channels=3, latent_channels=32, encoder_block_types=blocks, decoder_block_types=blocks,
                encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
                encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)), downsample_block_type="conv",
                upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
                scaling_factor=0.41407)
            return SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                                scheduler=scheduler)

    # --- text -------------------------------------------------------------------------------------
    def make_slots(self) -> list[TextEncoderSlot]:
        self.components["tokenizer"].padding_side = "right"  # as the pipeline sets it before every encoding
        return super().make_slots()

    def check_placeholder(self, placeholder: str) -> None:
        if placeholder != placeholder.lower().strip():
            raise DtiError(f"placeholder {placeholder!r}: SanaPipeline lower-cases every prompt, so a SANA "
                           f"placeholder must be lower case (e.g. {placeholder.lower().strip()!r})")

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """SanaPipeline.encode_prompt without the complex human instruction: lower-cased, stripped, 300
        tokens padded on the right, Gemma's last hidden state and the mask, first token and the last 299
        kept (all 300 at this length)."""
        slot = self.slots[0]
        ids, mask = self.tokenize_with_mask(slot, [p.lower().strip() for p in prompts])
        hidden = slot.encoder(ids, attention_mask=mask)[0]
        keep = [0, *range(-MAX_TEXT_LENGTH + 1, 0)]
        return {"hidden": hidden[:, keep], "mask": mask[:, keep]}

    # --- latents: the DC-AE is deterministic --------------------------------------------------------
    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        return self.latent_factor * self.denoiser.config.patch_size

    @torch.no_grad()
    def encode_pixels(self, pixels):
        latent = self.vae.encode(pixels.unsqueeze(0).to(self.vae.device, self.vae.dtype)).latent[0].float()
        return latent, torch.zeros_like(latent)

    def decode_latents(self, latents, chunk: int = 4):
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return torch.cat([self.vae.decode(part).sample for part in latents.split(chunk)])

    # --- training ---------------------------------------------------------------------------------
    def predict(self, noisy, timesteps, cond, time_ids):
        dtype = self.denoiser.dtype
        # As the pipeline calls it (timestep_scale is 1 for SANA 1.5; SANA-Sprint differs).
        return self.denoiser(noisy.to(dtype), encoder_hidden_states=cond["hidden"].to(dtype),
                             encoder_attention_mask=cond["mask"],
                             timestep=timesteps * self.denoiser.config.timestep_scale).sample
