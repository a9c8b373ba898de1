"""Methods as units: the registry, a method registered from outside the library, and each ablation doing
exactly what its entry says (docs/method.md). Runs on the tiny SD model, a few steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import fast_settings, fresh_backbone, saved_token_table
from safetensors.torch import load_file

import dti.methods.registry as registry
import dti.train
from dti.errors import DtiError
from dti.methods import METHODS, Method, get_method, register, trainable_methods
from dti.methods.units import RawVector, Start, TokenMethod, trainable
from dti.sphere import normalize
from dti.state import read_state
from dti.tokens import contextual_init
from dti.train import Trainer, start_generator, train


def _trainer(model, images, tmp_path, method, **overrides) -> Trainer:
    return Trainer(fresh_backbone(model), images, fast_settings(method=method, **overrides), tmp_path)


def _directions(trainer) -> torch.Tensor:
    return normalize(trainer.layers["clip_l"].embedding_rows().detach().float())


# --- a method from outside the library -----------------------------------------------------------------
class DoubledStart:
    """Twice the initializer's rows, anchored at them."""

    def __call__(self, ctx):
        rows = ctx.table[torch.tensor(ctx.placeholder.init_ids)].detach().float()
        return Start(2 * rows, rows)


class MomentumSGD:
    def __call__(self, layers, starts, hp):
        params = [p for layer in layers.values() for p in trainable(layer).values()]
        return torch.optim.SGD(params, lr=hp["lr"], momentum=0.9)


class ToyMethod(TokenMethod):
    """Parts the library does not have: its own start, SGD with momentum (state the library never names)."""

    start = DoubledStart()
    parameterization = RawVector()
    optimizer = MomentumSGD()

    def extra_loss(self, inputs):
        return 1e-3 * sum(layer.embedding_rows().pow(2).sum() for layer in inputs.layers.values())


@pytest.fixture
def toy_method(monkeypatch):
    """Registers the toy method; the registration ends with the test (the registry is restored)."""
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    register(Method("toy", "Toy", "a test's own method", ToyMethod, defaults={"lr": 0.5}, accepts=("lr",)))
    assert "toy" in trainable_methods()
    return "toy"


def test_a_method_registered_from_a_test_module_trains_and_resumes(tiny_sd, subject_images, tmp_path, toy_method,
                                                                   monkeypatch):
    trainer = _trainer(tiny_sd, subject_images, tmp_path / "probe", toy_method)
    start = trainer.layers["clip_l"].rows.detach().clone()
    torch.testing.assert_close(start, 2 * trainer.slots["clip_l"].start.anchor)
    assert isinstance(trainer.optimizer, torch.optim.SGD)

    straight = train(fresh_backbone(tiny_sd), subject_images, fast_settings(method=toy_method, save_every=2),
                     tmp_path / "straight", progress=False)
    assert straight["method"] == "toy" and straight["hyper_parameters"] == {"lr": 0.5}
    saved = load_file(str(tmp_path / "straight" / "learned_embeds.safetensors"))["<subject>"]
    assert not torch.allclose(saved, start)
    state = read_state(tmp_path / "straight" / "checkpoints" / "state.safetensors")
    assert set(state.optimizer_state[0]) == {"momentum_buffer"}  # SGD's own state, saved as it is

    # Killed after its first save (step 2), then rerun: resumes from the state and ends byte-identical.
    real_append, lines = dti.train._append, []

    def dying_append(log_file, path, record):
        lines.append(record)
        if len(lines) == 3:
            raise KeyboardInterrupt
        return real_append(log_file, path, record)

    monkeypatch.setattr(dti.train, "_append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        train(fresh_backbone(tiny_sd), subject_images, fast_settings(method=toy_method, save_every=2),
              tmp_path / "resumed", progress=False)
    monkeypatch.setattr(dti.train, "_append", real_append)
    resumed = train(fresh_backbone(tiny_sd), subject_images, fast_settings(method=toy_method, save_every=2),
                    tmp_path / "resumed", progress=False)
    assert resumed["resumed_from"] == 2
    for name in ("learned_embeds.safetensors", "checkpoints/state.safetensors", "train_log.jsonl"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_register_refuses_what_it_cannot_train(toy_method):
    with pytest.raises(DtiError, match="registered already"):
        register(Method("toy", "Toy", "again", ToyMethod, accepts=("lr",)))
    with pytest.raises(DtiError, match="unknown hyper-parameter"):
        register(Method("toy2", "Toy", "x", ToyMethod, accepts=("learning_rate",)))
    with pytest.raises(DtiError, match="lr must be a positive"):
        register(Method("toy3", "Toy", "x", ToyMethod, defaults={"lr": -1.0}, accepts=("lr",)))
    with pytest.raises(DtiError, match="either a unit class or trained_as"):
        register(Method("toy4", "Toy", "x", None, accepts=()))
    with pytest.raises(DtiError, match="method name"):
        register(Method("../toy", "Toy", "x", ToyMethod))


def test_the_trainer_names_no_method_and_no_part():
    """The loop calls the method's hooks: no registered method's name, init, optimizer or loss appears in it."""
    source = Path(dti.train.__file__).read_text().replace('method: str = "dti"', "")  # the default, no branch
    words = [*METHODS, "rsgd", "adamw", "contextual", "pull_weight", "kappa", "magnitude_lr"]
    found = [w for w in words if re.search(rf"[\"']{re.escape(w)}[\"']", source)]
    found += [w for w in ("AdamW", "Riemannian", "on_sphere", "contextual_init", "pull_weight") if w in source]
    assert not found, found


# --- the ablations ---------------------------------------------------------------------------------------
def test_starts_of_the_init_ablations(tiny_sd, subject_images, tmp_path):
    dog = saved_token_table(tiny_sd, "clip_l")[[1929]]  # "dog</w>": the anchor (prior mean) of every variant
    table = saved_token_table(tiny_sd, "clip_l")
    mean_row = table[table.norm(dim=-1) > 0].mean(0, keepdim=True)

    random = _trainer(tiny_sd, subject_images, tmp_path, "dti_init_random")
    expected = normalize(torch.randn((1, table.shape[1]), generator=start_generator(0, "clip_l")))
    torch.testing.assert_close(_directions(random), expected)
    torch.testing.assert_close(random.slots["clip_l"].prior_mu, normalize(dog))
    again = _trainer(tiny_sd, subject_images, tmp_path, "dti_init_random")
    assert torch.equal(_directions(again), _directions(random))  # seeded, not drawn from the global stream
    other_seed = _trainer(tiny_sd, subject_images, tmp_path, "dti_init_random", seed=1)
    assert not torch.allclose(_directions(other_seed), _directions(random))

    mean = _trainer(tiny_sd, subject_images, tmp_path, "dti_init_mean")
    torch.testing.assert_close(_directions(mean), normalize(mean_row))
    torch.testing.assert_close(mean.slots["clip_l"].prior_mu, normalize(dog))

    xinit = _trainer(tiny_sd, subject_images, tmp_path, "dti_init_xinit")
    slot = xinit.backbone.slots[0]
    output = contextual_init(slot.encoder, slot.tokenizer, "dog", "cpu", slot.text_length)
    torch.testing.assert_close(_directions(xinit), normalize(output))
    torch.testing.assert_close(xinit.slots["clip_l"].prior_mu, normalize(output))  # the authors' prior for xinit
    m = xinit.slots["clip_l"].magnitude
    torch.testing.assert_close(xinit.layers["clip_l"].embedding_rows().norm(dim=-1), torch.tensor([m]))


def test_trained_norm_trains_m_and_keeps_a_unit_direction(tiny_sd, subject_images, tmp_path):
    trainer = _trainer(tiny_sd, subject_images, tmp_path, "dti_trained_norm", magnitude_lr=0.01)
    layer = trainer.layers["clip_l"]
    m = trainer.slots["clip_l"].magnitude
    assert set(trainable(layer)) == {"rows", "magnitude"} and layer.magnitude.dtype == torch.float32
    for _ in range(3):
        trainer.train_step()
        torch.testing.assert_close(layer.rows.detach().norm(dim=-1), torch.ones(1))
    # beta = 0: each step moves m by exactly magnitude_lr (a normalized step in flat space).
    assert abs(layer.magnitude.item() - m) == pytest.approx(0.03, abs=1e-6) or \
        abs(layer.magnitude.item() - m) == pytest.approx(0.01, abs=1e-6)
    norm = layer.embedding_rows().detach().norm(dim=-1)
    torch.testing.assert_close(norm, layer.magnitude.detach().abs().flatten())


def test_adamw_variants_differ_only_in_the_retraction(tiny_sd, subject_images, tmp_path):
    free = _trainer(tiny_sd, subject_images, tmp_path, "dti_adamw")
    sphere = _trainer(tiny_sd, subject_images, tmp_path, "dti_adamw_sphere")
    for trainer in (free, sphere):
        trainer.train_step()
        trainer.train_step()
    free_rows, sphere_rows = (t.layers["clip_l"].rows.detach() for t in (free, sphere))
    assert abs(free_rows.norm().item() - 1) > 1e-4  # AdamW alone leaves the sphere: |m v| drifts from m
    torch.testing.assert_close(sphere_rows.norm(dim=-1), torch.ones(1))
    assert isinstance(free.optimizer, torch.optim.AdamW) and isinstance(sphere.optimizer, torch.optim.AdamW)


@pytest.mark.parametrize("method", trainable_methods())
def test_on_sphere_says_whether_the_norm_stays_m(tiny_sd, subject_images, tmp_path, method, first_stage):
    """The registry's planning-time fact (interpolation blends on_sphere methods by slerp at m) agrees with
    what the method's unit trains; each magnitude variant sits at its own statistic."""
    settings = fast_settings(method=method, **first_stage(method))
    run = train(fresh_backbone(tiny_sd), subject_images, settings, tmp_path, progress=False)
    norm = load_file(str(tmp_path / "learned_embeds.safetensors"))["<subject>"].double().norm(dim=-1)
    norms = saved_token_table(tiny_sd, "clip_l").double().norm(dim=-1)
    norms = norms[norms > 0]
    if get_method(method).on_sphere:
        expected = {"mean": norms.mean(), "min": norms.min(), "max": norms.max()}.get(run["hyper_parameters"]
                                                                                    ["magnitude"])
        expected = float(run["hyper_parameters"]["magnitude"]) if expected is None else expected.item()
        assert run["magnitudes"]["clip_l"] == pytest.approx(expected, rel=1e-6)
        torch.testing.assert_close(norm, torch.full_like(norm, expected), rtol=1e-6, atol=0)
    else:
        start = run["magnitudes"].get("clip_l")
        assert start is None or abs(norm.item() - start) > 1e-6
    assert json.loads((tmp_path / "run.json").read_text())["method"] == method
