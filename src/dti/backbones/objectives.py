"""Training objectives: how a training sample's timestep is drawn, how its clean latent is noised and what
the denoiser is asked to predict. Each draw comes from the sample's own generator (dti.train), so a run is
reproducible from its seed.
"""

from __future__ import annotations

import torch

from dti.errors import DtiError


class NoisePrediction:
    """The DDPM forward process of SD-style models, with the model's own beta schedule: uniform integer
    timesteps in [0, N), and the target the scheduler config names (epsilon, or the velocity
    alpha_t * noise - sigma_t * x0 of v-prediction models such as SD 2.1 768-v)."""

    def __init__(self, scheduler_config):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise DtiError(f"prediction_type {self.prediction_type!r} of the model's scheduler is not supported "
                           "(epsilon or v_prediction)")

    def sample_step(self, gen: torch.Generator) -> int:
        return int(torch.randint(self.scheduler.config.num_train_timesteps, (1,), generator=gen))

    def prepare(self, latents: torch.Tensor, noise: torch.Tensor, steps: torch.Tensor):
        """(noisy latents, the denoiser's timesteps, the target)."""
        noisy = self.scheduler.add_noise(latents, noise, steps)
        if self.prediction_type == "v_prediction":
            return noisy, steps, self.scheduler.get_velocity(latents, noise, steps)
        return noisy, steps, noise


class FlowMatching:
    """Rectified flow as the DTI authors train SANA and Wan: u from diffusers'
    `compute_density_for_timestep_sampling` with weighting scheme "none" (uniform), index = floor(u * N)
    into the timesteps and sigmas of a `FlowMatchEulerDiscreteScheduler` built from the model's scheduler
    config, x_t = (1 - sigma) x0 + sigma * noise, target = noise - x0, no loss weighting."""

    def __init__(self, scheduler_config):
        import inspect

        from diffusers import FlowMatchEulerDiscreteScheduler

        # Only its own keys: the sampler's config (DPM-Solver's or UniPC's flow settings) would only warn.
        known = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            {k: v for k, v in dict(scheduler_config).items() if k in known})
        self.prediction_type = "flow"

    def sample_step(self, gen: torch.Generator) -> int:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(weighting_scheme="none", batch_size=1, generator=gen)
        return int((u * self.scheduler.config.num_train_timesteps).long())

    def prepare(self, latents: torch.Tensor, noise: torch.Tensor, steps: torch.Tensor):
        index = steps.cpu()
        timesteps = self.scheduler.timesteps[index].to(latents.device)
        sigmas = self.scheduler.sigmas[index].to(latents.device, latents.dtype)
        sigmas = sigmas.view(-1, *([1] * (latents.dim() - 1)))
        return (1.0 - sigmas) * latents + sigmas * noise, timesteps, noise - latents
