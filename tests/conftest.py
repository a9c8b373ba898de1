"""Shared fixtures: tiny pipelines of every family (SD, SDXL, SANA, Wan) written once per session, a
synthetic subject folder, and the session's two full workflow runs (local and through SLURM), started in the
background.

The tiny models have small, random weights (SD and SDXL the real CLIP vocabulary, SANA and Wan small
trained vocabularies of the real tokenizer classes), so every training, export and sampling path runs for
real on a CPU in seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from workflow_run import EMBEDDED_DEFAULT, BackgroundRun

from dti.backbones.catalog import write_tiny_model
from dti.families import FAMILIES as REGISTRY
from dti.families import family_names
from dti.io import save_image
from dti.jobs import lighten_gc
from dti.synthetic import make_synthetic_subject

pytest_plugins = ["slurm_cluster"]  # the slurm_cluster fixture

# This process imports the jobs' stack and builds dozens of tiny models in-process: it gains from the
# jobs' collector settings as they do (bench/gc_settings.py). Before any model is built, so before any
# fixture runs.
lighten_gc()

N_IMAGES, IMAGE_SIZE = 4, 80
# The fast recipe every real-training test shares: 64 px (8x8 latents), batch 2, a handful of steps.
FAST = dict(resolution=64, batch_size=2, steps=3, save_every=3, initializer="dog", seed=0)
# Every registered family, its slots, and where each slot's token table and tokenizer live in a saved model.
FAMILIES = family_names()
SLOTS = {f: [s.name for s in REGISTRY[f].slots] for f in FAMILIES}
ENCODER_DIRS = {s.name: s.encoder for f in FAMILIES for s in REGISTRY[f].slots}
TOKENIZER_DIRS = {s.name: s.tokenizer for f in FAMILIES for s in REGISTRY[f].slots}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny model of every registered family (each builds in well under a second)."""
    folder = tmp_path_factory.mktemp("models")
    return {family: write_tiny_model(family, folder / f"tiny-{family}") for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_sd(tiny_models) -> Path:
    return tiny_models["sd"]


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_models) -> Path:
    return tiny_models["sdxl"]


@pytest.fixture(scope="session")
def tiny_sana(tiny_models) -> Path:
    return tiny_models["sana"]


@pytest.fixture(scope="session")
def tiny_wan(tiny_models) -> Path:
    return tiny_models["wan"]


@pytest.fixture(scope="session")
def subject_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("subject")
    for i, image in enumerate(make_synthetic_subject("toy", "object", N_IMAGES, IMAGE_SIZE, seed=3)):
        save_image(folder / f"{i:02d}.png", image)
    return folder


@pytest.fixture(scope="session")
def subject_images(subject_dir):
    from dti.images import list_images, load_image

    return [load_image(p) for p in list_images(subject_dir)]


def fresh_backbone(model: Path):
    """A newly loaded backbone (training installs placeholder rows, so every run needs its own)."""
    from dti.backbones.catalog import load_backbone

    return load_backbone(str(model))


@pytest.fixture(scope="session")
def first_stage(tiny_sd, subject_images, tmp_path_factory):
    """`first_stage(method)`: {"start_from": folder} for a second-stage method (Method.starts_from), the folder
    of a FAST run of its first stage on tiny_sd (trained once per session); {} for every other method."""
    from dti.methods import get_method
    from dti.train import train

    runs: dict[str, Path] = {}

    def settings_for(method: str) -> dict:
        first = get_method(method).starts_from
        if first is None:
            return {}
        if first not in runs:
            out = tmp_path_factory.mktemp(f"first-stage-{first}")
            train(fresh_backbone(tiny_sd), subject_images, fast_settings(method=first), out, progress=False)
            runs[first] = out
        return {"start_from": str(runs[first])}

    return settings_for


def fast_settings(**overrides):
    """FAST with `overrides`; hyper-parameters (dti.methods.HYPER_PARAMETERS) given by name go into the
    settings' hyper_parameters, None meaning "the method's default"."""
    from dti.methods import HYPER_PARAMETERS
    from dti.train import TrainSettings

    hp = {key: overrides.pop(key) for key in list(overrides) if key in HYPER_PARAMETERS}
    return TrainSettings(**{**FAST, **overrides}, hyper_parameters={k: v for k, v in hp.items() if v is not None})


def saved_token_table(model: Path, slot: str) -> torch.Tensor:
    """The slot's original vocabulary table, read straight from the saved weights file: the rows of the ids
    its tokenizer can produce (UMT5's table has more rows than its tokenizer has ids)."""
    weights = load_file(str(model / ENCODER_DIRS[slot] / "model.safetensors"))
    # transformers 5 saves CLIPTextModel without the "text_model." prefix, the projection model with it.
    (key,) = [k for k in weights if k.endswith(("embeddings.token_embedding.weight", "embed_tokens.weight"))
              or k == "shared.weight"]
    with open(model / TOKENIZER_DIRS[slot] / "tokenizer.json", encoding="utf-8") as handle:
        tokenizer = json.load(handle)
    n_ids = max([*_vocab_ids(tokenizer["model"]["vocab"]), *(t["id"] for t in tokenizer["added_tokens"])]) + 1
    return weights[key][:n_ids].float()


def _vocab_ids(vocab) -> list[int]:
    return list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # BPE dict, unigram list


def vocab_mean_norm(model: Path, slot: str) -> float:
    """m computed independently of dti.tokens: mean L2 norm of the non-zero vocabulary rows."""
    norms = saved_token_table(model, slot).double().norm(dim=-1)
    return norms[norms > 0].mean().item()


@dataclass
class TrainedRun:
    backbone: object  # after training: its encoders hold the learned rows, its tokenizers the placeholder
    out_dir: Path
    run: dict
    settings: object


@pytest.fixture(scope="session")
def trained_run(tiny_models, subject_images, tmp_path_factory):
    """Fast training runs shared by several tests: `trained_run(family, method, **settings)`, each run once.

    Callers only read the result (files, backbone); a test that changes a backbone trains its own.
    """
    from dti.train import train

    cache: dict[tuple, TrainedRun] = {}

    def get(family: str, method: str, **overrides) -> TrainedRun:
        key = (family, method, tuple(sorted(overrides.items())))
        if key not in cache:
            backbone = fresh_backbone(tiny_models[family])
            out = tmp_path_factory.mktemp(f"run-{family}-{method}")
            settings = fast_settings(method=method, **overrides)
            run = train(backbone, subject_images, settings, out, progress=False)
            cache[key] = TrainedRun(backbone, out, run, settings)
        return cache[key]

    return get


# --- the two full runs of the embedded default ------------------------------------------------------
# Each takes minutes of CPU on both cores, and the machine is CPU-bound: what runs side by side only
# shares the cores. So the local run starts with the session and has the cores to itself while the
# cluster starts and the toy cluster tests (mostly waiting on SLURM) run; the SLURM run starts when it
# ends. The cheap checks of the local run come next, then the tests that need no run, beside the SLURM
# run (a shorter suite than with them beside the local run: bench/README.md); the tests that read the
# SLURM run go last.
RUN_FIXTURES = ("default_run", "slurm_run")
NEEDED_RUNS = pytest.StashKey[set]()


def _phase(item) -> int:
    names = set(item.fixturenames)
    if "slurm_run" in names:
        return 3
    if "default_run" in names:
        return 1
    if "slurm_cluster" in names:
        return 0  # the toy cluster tests go first, while the cluster's GPUs are free
    return 2


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(config, items):
    items.sort(key=_phase)  # stable: file order within a phase
    config.stash[NEEDED_RUNS] = {name for item in items for name in RUN_FIXTURES if name in item.fixturenames}


def _needed_runs(request) -> set[str]:
    return request.config.stash.get(NEEDED_RUNS, set())


@pytest.fixture(scope="session", autouse=True)
def _start_runs_early(request):
    """Queue the runs this session needs before its first test. A run that cannot start fails the tests
    that need it, not this one."""
    from slurm_cluster import slurm_unavailable

    needed = _needed_runs(request)
    wanted = ["local_run_process"] if "default_run" in needed else []
    if "slurm_run" in needed and slurm_unavailable() is None:
        wanted.append("slurm_run_process")
    for name in wanted:
        try:
            request.getfixturevalue(name)
        except (Exception, pytest.skip.Exception):  # pytest keeps the error for the tests that need the run
            pass


@pytest.fixture(scope="session")
def local_run_process(tmp_path_factory):
    # --resources gpu=2: no GPU here, so the GPU rules are CPU jobs, two at a time on two cores.
    run = BackgroundRun(tmp_path_factory.mktemp("default-run"), "--cores", "2", "--resources", "gpu=2")
    yield run
    run.stop()


@pytest.fixture(scope="session")
def slurm_run_process(slurm_cluster, tmp_path_factory, request):
    # Same torch thread count as the local run (1 per job), so the floating-point sums are identical; on a
    # real cluster the profile's set-threads applies. The embedded default itself, not the shared run's
    # extra methods: through SLURM every job starts Snakemake twice more, and what the extra methods add is
    # the library's, which the local run covers (the tables are compared on the methods both ran).
    run = BackgroundRun(tmp_path_factory.mktemp("slurm-run"), "--configfile", str(EMBEDDED_DEFAULT),
                        "--profile", str(slurm_cluster.profile),
                        *slurm_cluster.fast_status_args, "--seconds-between-status-checks", "2",
                        "--set-threads", "train=1", "sample=1", "score=1", "--verbose",
                        after=(request.getfixturevalue("local_run_process")
                               if "default_run" in _needed_runs(request) else None))
    yield run
    run.stop()


@pytest.fixture(scope="session")
def default_run(local_run_process) -> Path:
    """One full local run of the workflow on the embedded default (tiny models, CPU)."""
    local_run_process.result()
    return local_run_process.workdir


@pytest.fixture(scope="session")
def slurm_run(slurm_run_process):
    """The embedded default through `--profile profiles/slurm` on the test cluster: (workdir, its output)."""
    return slurm_run_process.workdir, slurm_run_process.result()
