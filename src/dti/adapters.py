"""Weights trained on the denoiser beside a token (LoRA, OFT, the whole denoiser): attach, save, load and
describe them.

LoRA and OFT go on the denoiser's attention projections `to_q`, `to_k`, `to_v` (every attention block, self
and cross, as the DTI authors' `peft_modules`), through peft, which diffusers' models take natively. `full`
trains every weight of the denoiser (CoRe's second stage); its base weights are kept on the CPU, so taking
it off restores the frozen model.
Files (docs/method.md, "Token plus weights"): each saved step gets a folder `adapter-steps-{N}/` beside
`learned_embeds-steps-{N}.safetensors`, and the final adapter is `adapter/`:
- LoRA: `pytorch_lora_weights.safetensors` in diffusers' layout, loaded by `pipe.load_lora_weights(folder)`;
- OFT: peft's layout (`adapter_config.json`, `adapter_model.safetensors`), loaded by `load_adapter` here or
  by peft itself (docs/method.md has the four lines);
- full: the denoiser in diffusers' layout (`config.json`, `diffusion_pytorch_model.safetensors`), loaded by
  the denoiser class's `from_pretrained(folder)`.
The safetensors file carries the token files' provenance (dti.method, dti.base_model, dti.steps,
dti.code_version, ...) and dti.adapter, dti.adapter_rank (LoRA, OFT), dti.adapter_targets,
dti.adapter_parameters.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from dti.errors import DtiError
from dti.io import atomic_dir, write_text

TARGETS = ("to_q", "to_k", "to_v")
ADAPTER_NAME = "dti"  # the peft adapter name: its parameters are `...to_q.lora_A.dti.weight` and the like
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
FULL_WEIGHTS = "diffusion_pytorch_model.safetensors"  # the name a diffusers model's from_pretrained looks for
_BASE = "_dti_base_weights"  # the denoiser attribute holding its frozen weights while `full` is on it


def adapter_dir(step: int | None = None) -> str:
    """The folder of the adapter saved at `step` (None: the final one)."""
    return "adapter" if step is None else f"adapter-steps-{step}"


class AdapterKind:
    """One kind of adapter: how it goes on the denoiser and off again, and how its files are written and
    loaded. The base class is a peft adapter named ADAPTER_NAME (`config` gives its peft config)."""

    name = ""
    weights_file = ""
    targets: tuple[str, ...] = TARGETS  # the modules it changes (recorded as dti.adapter_targets)
    ranked = True  # it has a rank (dti.adapter_rank)
    key_parts = 1  # dotted parts at the end of a file key that name a tensor within its layer

    def update_norm(self, tensors: dict[str, torch.Tensor]) -> float | None:
        """The norm of the update the file's weights make, over its layers in quadrature; None where it
        cannot be told from the file alone."""
        return None

    def config(self, rank: int):
        raise NotImplementedError

    def attach(self, denoiser, rank: int) -> None:
        """Put a fresh adapter on the denoiser; its trainable parameters are those named `.{ADAPTER_NAME}.`."""
        denoiser.add_adapter(self.config(rank), adapter_name=ADAPTER_NAME)

    def trainable(self, denoiser) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in denoiser.named_parameters() if f".{ADAPTER_NAME}." in name}

    def is_attached(self, denoiser) -> bool:
        return ADAPTER_NAME in (getattr(denoiser, "peft_config", None) or {})

    def detach(self, denoiser) -> None:
        denoiser.delete_adapters(ADAPTER_NAME)

    @contextmanager
    def disabled(self, denoiser):
        """The frozen model: the adapter bypassed (LoRA's update and OFT's rotation both off), nothing copied."""
        denoiser.disable_adapters()
        try:
            yield
        finally:
            denoiser.enable_adapters()

    def tensors(self, denoiser, prefix: str) -> dict[str, torch.Tensor]:
        """The adapter's weights as its file holds them."""
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(denoiser, adapter_name=ADAPTER_NAME)

    def write_extra(self, folder: Path, rank: int, denoiser) -> None:
        """Files beside the weights (OFT: peft's config; full: the denoiser's config)."""

    def load(self, backbone, folder: Path) -> None:
        raise NotImplementedError


class LoRA(AdapterKind):
    """Low-rank updates B A (rank r, alpha = r so the scale is 1, A Gaussian and B zero at the start: the
    authors' LoraConfig)."""

    name, weights_file, key_parts = "lora", LORA_FILE, 3

    def update_norm(self, tensors: dict[str, torch.Tensor]) -> float:
        """The Frobenius norm of B A."""
        ends = "lora.down.weight"
        downs = {k[: -len(ends)]: v for k, v in tensors.items() if k.endswith(ends)}
        return sum(float((tensors[stem + "lora.up.weight"].float() @ down.float()).norm() ** 2)
                   for stem, down in downs.items()) ** 0.5

    def config(self, rank: int):
        from peft import LoraConfig

        return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(TARGETS))

    def tensors(self, denoiser, prefix: str) -> dict[str, torch.Tensor]:
        from diffusers.utils import convert_state_dict_to_diffusers

        state = convert_state_dict_to_diffusers(super().tensors(denoiser, prefix))
        return {f"{prefix}.{key}": value for key, value in state.items()}

    def load(self, backbone, folder: Path) -> None:
        backbone.pipe.load_lora_weights(str(folder), adapter_name=ADAPTER_NAME)


class OFT(AdapterKind):
    """Orthogonal fine-tuning: each projection's weight is multiplied by a block-diagonal orthogonal matrix
    of r blocks, the identity at the start (the authors' OFTConfig: r, block size from r, no dropout)."""

    name, weights_file, key_parts = "oft", PEFT_WEIGHTS, 2

    def update_norm(self, tensors: dict[str, torch.Tensor]) -> float:
        """The Frobenius norm of R - I, the rotation's distance from the identity."""
        return sum(float(_oft_rotation_offset(value.float()) ** 2) for value in tensors.values()) ** 0.5

    def config(self, rank: int):
        from peft import OFTConfig

        return OFTConfig(r=rank, oft_block_size=0, target_modules=list(TARGETS), module_dropout=0.0,
                         init_weights=True)

    def write_extra(self, folder: Path, rank: int, denoiser) -> None:
        config = {key: sorted(value) if isinstance(value, set) else value
                  for key, value in self.config(rank).to_dict().items()}
        write_text(folder / PEFT_CONFIG, json.dumps(config, sort_keys=True, indent=2, default=str) + "\n", root=folder)

    def load(self, backbone, folder: Path) -> None:
        from peft import OFTConfig
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        backbone.denoiser.add_adapter(OFTConfig.from_pretrained(str(folder)), adapter_name=ADAPTER_NAME)
        set_peft_model_state_dict(backbone.denoiser, load_file(folder / PEFT_WEIGHTS), adapter_name=ADAPTER_NAME)


class FullWeights(AdapterKind):
    """Every weight of the denoiser trained (CoRe's second stage): no peft. Attaching keeps a CPU copy of the
    frozen weights on the denoiser, which `detach` writes back, so a backbone is the frozen one again after
    training or after sampling another run. There is no frozen model beside the trained one, so a loss that
    needs one (DCO) cannot use it."""

    name, weights_file, targets, ranked = "full", FULL_WEIGHTS, ("all",), False

    def attach(self, denoiser, rank: int) -> None:
        setattr(denoiser, _BASE, {name: t.detach().to("cpu", copy=True) for name, t in denoiser.state_dict().items()})

    def trainable(self, denoiser) -> dict[str, torch.nn.Parameter]:
        return dict(denoiser.named_parameters())

    def is_attached(self, denoiser) -> bool:
        return hasattr(denoiser, _BASE)

    def detach(self, denoiser) -> None:
        base = getattr(denoiser, _BASE)
        with torch.no_grad():
            for name, param in denoiser.named_parameters():
                param.requires_grad_(False)
                param.data = base[name].to(param.device)  # its own dtype back too (fp32 while trained)
            for name, buffer in denoiser.named_buffers():
                if name in base:  # a non-persistent buffer is in no state dict, and training leaves it alone
                    buffer.copy_(base[name])
        delattr(denoiser, _BASE)

    @contextmanager
    def disabled(self, denoiser):
        raise DtiError("a full fine-tune of the denoiser keeps no frozen model beside it to compare with; "
                       "a loss that needs one (DCO) takes a LoRA or OFT adapter")
        yield  # unreachable: makes this a generator, as contextmanager wants

    def tensors(self, denoiser, prefix: str) -> dict[str, torch.Tensor]:
        return denoiser.state_dict()  # written as fp32 tensor by tensor (AttachedAdapter.save)

    def write_extra(self, folder: Path, rank: int, denoiser) -> None:
        config = {key: value for key, value in dict(denoiser.config).items() if not key.startswith("_")}
        config["_class_name"] = type(denoiser).__name__
        write_text(folder / "config.json", json.dumps(config, sort_keys=True, indent=2, default=str) + "\n",
                   root=folder)

    def load(self, backbone, folder: Path) -> None:
        from safetensors.torch import load_file

        denoiser = backbone.denoiser
        self.attach(denoiser, 0)
        try:
            # strict: every weight named, none left over; each cast to the loaded model's dtype
            denoiser.load_state_dict(load_file(folder / FULL_WEIGHTS), strict=True)
        except Exception:
            self.detach(denoiser)
            raise


KINDS: dict[str, AdapterKind] = {kind.name: kind for kind in (LoRA(), OFT(), FullWeights())}


def adapter_kind(name: str) -> AdapterKind:
    if name not in KINDS:
        raise DtiError(f"unknown adapter kind {name!r}; known: {sorted(KINDS)}")
    return KINDS[name]


class AttachedAdapter:
    """An adapter of `kind` and `rank` on a backbone's denoiser, its parameters trainable and in fp32 (the
    denoiser may be bf16: peft runs each adapter in its own weights' precision). Its random start (LoRA's
    Gaussian A) is drawn from torch's CPU generator seeded by `seed`, where peft draws it, so a run's
    adapter starts the same whatever ran before it in the process."""

    def __init__(self, backbone, kind: str, rank: int | None, seed: int = 0):
        self.kind = adapter_kind(kind)
        self.backbone, self.rank = backbone, int(rank) if self.kind.ranked else None
        denoiser = backbone.denoiser
        if attached_kind(denoiser) is not None:
            raise DtiError(f"the {backbone.denoiser_name} already has a {ADAPTER_NAME!r} adapter attached")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.kind.attach(denoiser, self.rank)
        self.parameters: dict[str, torch.nn.Parameter] = {}
        for name, param in self.kind.trainable(denoiser).items():
            param.data = param.data.float()
            self.parameters[name] = param.requires_grad_(True)
        if not self.parameters:
            self.kind.detach(denoiser)
            raise DtiError(f"the {backbone.denoiser_name} has no {', '.join(TARGETS)} projections for "
                           f"a {self.kind.name} adapter")

    def disabled(self):
        """The frozen model, where the kind has one beside the trained weights (LoRA, OFT: bypassed)."""
        return self.kind.disabled(self.backbone.denoiser)

    def remove(self) -> None:
        """Take the adapter off the denoiser again (a backbone reused after training is the frozen one)."""
        remove_adapter(self.backbone)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters.values())

    def save(self, out_dir: Path, step: int | None, metadata: dict) -> Path:
        """Write the adapter's folder for `step` (None: the final one) atomically into out_dir."""
        from dti.tensor_files import write_safetensors

        target = Path(out_dir) / adapter_dir(step)
        meta = {**metadata, "dti.adapter": self.kind.name, "dti.adapter_targets": ",".join(self.kind.targets),
                "dti.adapter_parameters": self.parameter_count()}
        if self.rank is not None:
            meta["dti.adapter_rank"] = self.rank
        with atomic_dir(target, root=out_dir) as tmp:
            tensors = self.kind.tensors(self.backbone.denoiser, self.backbone.denoiser_name)
            write_safetensors(tmp / self.kind.weights_file, tensors, meta, as_float=True, root=tmp)
            self.kind.write_extra(tmp, self.rank, self.backbone.denoiser)
        return target


def attached_kind(denoiser) -> AdapterKind | None:
    """The kind of dti's adapter on the denoiser, or None."""
    return next((kind for kind in KINDS.values() if kind.is_attached(denoiser)), None)


def remove_adapter(backbone) -> None:
    """Take dti's adapter off the backbone's denoiser, if it has one (`full`: its frozen weights back)."""
    kind = attached_kind(backbone.denoiser)
    if kind is not None:
        kind.detach(backbone.denoiser)


def read_adapter(folder: str | Path) -> tuple[str, dict[str, torch.Tensor], dict[str, str]]:
    """(kind, weights, metadata) of a saved adapter folder; a DtiError naming it if it is none."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    for kind in KINDS.values():
        path = folder / kind.weights_file
        if path.is_file():
            try:
                with safe_open(path, "pt") as f:
                    return kind.name, {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
            except (SafetensorError, OSError) as err:
                raise DtiError(f"{path}: not a readable safetensors file ({err})") from err
    raise DtiError(f"{folder}: no adapter weights ({' or '.join(k.weights_file for k in KINDS.values())})")


def load_adapter(backbone, folder: str | Path) -> str:
    """Put a saved adapter on the backbone's denoiser (replacing one loaded before); returns its kind."""
    folder = Path(folder)
    kind, _, _ = read_adapter(folder)
    remove_adapter(backbone)
    try:
        KINDS[kind].load(backbone, folder)
    except (ValueError, KeyError, RuntimeError) as err:
        raise DtiError(f"cannot load the {kind} adapter of {folder}: {err}") from err
    return kind


def describe_adapter(folder: str | Path) -> dict:
    """What `dti inspect` says of an adapter folder: kind, rank, targets, trainable parameters, and the
    norm of the update it makes (LoRA: the Frobenius norm of B A summed over layers in quadrature; OFT: of
    R - I, the rotation's distance from the identity; full: None, the base model is not in the folder)."""
    kind, tensors, meta = read_adapter(folder)
    layers = {key.rsplit(".", KINDS[kind].key_parts)[0] for key in tensors}
    return {"kind": kind, "rank": meta.get("dti.adapter_rank"), "targets": meta.get("dti.adapter_targets"),
            "layers": len(layers), "parameters": sum(t.numel() for t in tensors.values()),
            "update_norm": KINDS[kind].update_norm(tensors), "metadata": meta}


def _oft_rotation_offset(packed: torch.Tensor) -> torch.Tensor:
    """||R - I|| of peft's OFT blocks, each stored as the packed upper triangle of a skew-symmetric Q with
    R = (I + Q)(I - Q)^-1 (the Cayley transform)."""
    blocks, entries = packed.shape
    size = int(round((1 + (1 + 8 * entries) ** 0.5) / 2))
    q = torch.zeros(blocks, size, size)
    rows, cols = torch.triu_indices(size, size, 1)
    q[:, rows, cols] = packed
    q = q - q.transpose(1, 2)
    eye = torch.eye(size).expand_as(q)
    rotation = torch.linalg.solve((eye - q).transpose(1, 2), (eye + q).transpose(1, 2)).transpose(1, 2)
    return (rotation - eye).norm()
