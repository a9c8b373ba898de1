"""The `dti` command: tiny models, training and sampling from a shell."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from dti.devices import DTYPE_NAMES, default_device, weights_dtype
from dti.errors import DtiError
from dti.methods import HYPER_PARAMETERS, METHODS, trainable_methods
from dti.names import safe_name


def cmd_tiny_model(args) -> None:
    from dti.tiny import write_tiny_model

    print(write_tiny_model(args.family, args.out, seed=args.seed))


def _output_folder(out: str) -> Path:
    """--out must be a folder (or not exist yet): checked before minutes of loading."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DtiError(f"--out {out} is a file; give a folder")
    return path


def cmd_train(args) -> None:
    from dti.backbones import load_backbone
    from dti.export import how_to_use
    from dti.images import list_images, load_image
    from dti.train import TrainSettings, train

    _output_folder(args.out)
    given = {key: getattr(args, key) for key in HYPER_PARAMETERS if getattr(args, key) is not None}
    # The single file's default name: the method and the output folder's name (runs/bear -> dti-bear).
    name = args.name or f"{args.method}-{safe_name(Path(args.out).resolve().name)}"
    settings = TrainSettings(
        method=args.method, hyper_parameters=given, placeholder=args.placeholder, initializer=args.initializer,
        steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, resolution=args.resolution,
        seed=args.seed, save_every=args.save_every, mixed_precision=args.mixed_precision,
        latent_cache=not args.no_latent_cache, name=name, zero_pad=args.zero_pad)
    settings.validate()  # bad settings fail before any image or model is loaded
    images = [load_image(p) for p in list_images(args.images)]
    device = args.device or default_device()
    backbone = load_backbone(args.model, family=args.family, revision=args.revision,
                             dtype=weights_dtype(device, args.dtype), device=device)
    run = train(backbone, images, settings, args.out, progress=not args.quiet)
    print(f"learned {run['tokens']} with {args.method} in {run['seconds']} s -> {args.out}")
    print(how_to_use(args.out, settings.placeholder, settings.export_name, backbone.family))


def _check_sample_args(args) -> None:
    if "{}" not in args.prompt:
        raise DtiError(f"--prompt must contain {{}} where the learned token goes, got {args.prompt!r}")
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--resolution", args.resolution),
                        ("--width", 1 if args.width is None else args.width)):
        if value < 1:
            raise DtiError(f"{flag} must be a positive integer, got {value}")
    if not (math.isfinite(args.guidance_scale) and args.guidance_scale >= 0):
        raise DtiError(f"--guidance-scale must be a finite number >= 0, got {args.guidance_scale}")
    for seed in args.seeds:
        if not 0 <= seed < 2**63:
            raise DtiError(f"--seeds must be integers in [0, 2^63), got {seed}")
    if not Path(args.embeds).is_dir():
        raise DtiError(f"--embeds {args.embeds} is not a folder (give the folder holding learned_embeds.safetensors)")


def cmd_sample(args) -> None:
    from dti.backbones import load_backbone
    from dti.sample import SampleJob, SampleSettings, generate, load_learned_token

    _check_sample_args(args)
    out = _output_folder(args.out)
    device = args.device or default_device()
    backbone = load_backbone(args.model, family=args.family, revision=args.revision,
                             dtype=weights_dtype(device, args.dtype), device=device)
    backbone.check_resolution(args.resolution, "--resolution")
    if args.width is not None:
        backbone.check_resolution(args.width, "--width")
    token = load_learned_token(backbone, Path(args.embeds), rescale_to=args.rescale_to)
    prompt = args.prompt.replace("{}", token)
    jobs = [SampleJob(prompt, seed, out / f"{seed:04d}.png") for seed in args.seeds]
    settings = SampleSettings(steps=args.steps, guidance_scale=args.guidance_scale, resolution=args.resolution,
                              width=args.width, batch_size=args.batch_size)
    generate(backbone, jobs, settings, progress=not args.quiet)
    print(f"{len(jobs)} images -> {out}")


def cmd_inspect(args) -> None:
    from dti.inspect import run_inspect

    print(run_inspect(args.file, model=args.model, revision=args.revision, as_json=args.json, top=args.top))


def build_parser() -> argparse.ArgumentParser:
    from dti.backbones.registry import family_names

    families = family_names()
    parser = argparse.ArgumentParser(prog="dti", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tiny-model", help="write a tiny random pipeline of a family (small random weights, offline)")
    p.add_argument("--family", choices=families, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_model)

    def model_args(p):
        p.add_argument("--model", required=True, help="HF hub id or local diffusers folder")
        p.add_argument("--family", choices=families, help="default: read from model_index.json")
        p.add_argument("--revision")
        p.add_argument("--device", help="default: cuda if available, else cpu")
        p.add_argument("--dtype", choices=DTYPE_NAMES, default="auto",
                       help="frozen weights' dtype (auto: bf16 on CUDA, fp32 on CPU)")
        p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("train", help="learn a subject token with DTI, TI, CrossInit or one of DTI's ablations")
    model_args(p)
    p.add_argument("--images", required=True, help="folder of subject photos")
    p.add_argument("--initializer", required=True, help="words to start from, e.g. the class noun")
    p.add_argument("--method", choices=trainable_methods(), default="dti")
    p.add_argument("--out", required=True)
    p.add_argument("--placeholder", default="<subject>", help="the token diffusers prompts use (stored in lower "
                   "case: CLIP tokenizers lower-case prompts)")
    p.add_argument("--name", help="name of the single-file export, its trigger word in AUTOMATIC1111, Forge and "
                   "SD.Next (default: METHOD-FOLDER, the --out folder's name, e.g. dti-bear)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--resolution", type=int, default=768)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default="auto")
    p.add_argument("--no-latent-cache", action="store_true", help="re-encode images every step (slower)")
    p.add_argument("--zero-pad", action="store_true", help="prepend 0-15 all-zero padding tokens to each training "
                   "prompt (the DTI authors' SANA runs; docs/method.md)")
    group = p.add_argument_group("hyper-parameters", "default: the method's published value; giving a method "
                                 "one it does not take is an error")
    for key, hp in HYPER_PARAMETERS.items():
        takers = ", ".join(m for m in trainable_methods() if key in METHODS[m].accepts)
        group.add_argument(f"--{key.replace('_', '-')}", dest=key, type=hp.parse, nargs=hp.nargs,
                           help=f"{hp.help} [{takers}]")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate images with a learned token")
    model_args(p)
    p.add_argument("--embeds", required=True, help="folder with learned_embeds*.safetensors")
    p.add_argument("--prompt", required=True, help="with {} where the token goes, e.g. 'a {} in the snow'")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=5.0)
    p.add_argument("--resolution", type=int, default=1024, help="image height (and width unless --width)")
    p.add_argument("--width", type=int, help="image width (default: --resolution)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rescale-to", help="TI-rescaled: set each row's norm to this vocabulary statistic")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("inspect", help="norms, nearest vocabulary tokens and loaders of a textual-inversion file")
    p.add_argument("file", help="a .safetensors embedding (pickle formats are refused, never unpickled)")
    p.add_argument("--model", help="HF hub id or local diffusers folder: compare with its vocabulary")
    p.add_argument("--revision")
    p.add_argument("--top", type=int, default=5, help="nearest vocabulary tokens to list per vector")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dti.jobs import lighten_gc

    lighten_gc()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DtiError as exc:
        print(f"dti: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the OS's message names the file (permissions, a folder where a file should be)
        print(f"dti: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from dti.train import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            print(f"dti: {exc}", file=sys.stderr)
            return 143
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
