"""The `dti` command: tiny models, training and sampling from a shell."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import importlib.util
import math
import os
import re
import sys
import warnings
from pathlib import Path

from dti.devices import DTYPE_NAMES, default_device, weights_dtype
from dti.errors import DtiError
from dti.methods import HYPER_PARAMETERS, METHODS, trainable_methods
from dti.names import safe_name
from dti.numbers import SEED_MAX
from dti.terminal import visible


class Bounded:
    """An argparse `type`: a number of one kind (int or float) in a declared range, so each flag's range sits
    next to it. A float must be finite too. Anything else is a one-line error naming the flag and the value
    (`_Parser.error`); `minimum` and `maximum` stay readable for the test that every numeric flag has one."""

    def __init__(self, kind: type, minimum: float | None = None, maximum: float | None = None,
                 what: str | None = None):
        self.kind, self.minimum, self.maximum = kind, minimum, maximum
        self.what = what or self._describe()
        self.__name__ = kind.__name__  # argparse names a type by it

    def _describe(self) -> str:
        noun = "an integer" if self.kind is int else "a finite number"
        if self.maximum is not None:
            return f"{noun} in [{self.minimum}, {self.maximum}]"
        if self.kind is int and self.minimum == 1:
            return "a positive integer"
        return f"{noun} >= {self.minimum}"

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.what}, got {text!r}") from None
        if ((self.kind is float and not math.isfinite(value))
                or (self.minimum is not None and value < self.minimum)
                or (self.maximum is not None and value > self.maximum)):
            raise argparse.ArgumentTypeError(f"must be {self.what}, got {value}")
        return value

    def __repr__(self) -> str:
        return f"Bounded({self.kind.__name__}, {self.minimum}, {self.maximum})"


def bounded(kind: type, minimum: float | None = None, maximum: float | None = None, what: str | None = None):
    return Bounded(kind, minimum, maximum, what)


def default_of(module: str, settings: str, name: str):
    """The default of field `name` of the settings dataclass `settings` in `module` (dti.train TrainSettings,
    dti.sample SampleSettings): the one home of a setting's default, which the flags of build_parser take and
    config/schema.yaml repeats (tests/test_defaults.py checks both against it). A literal default is read
    from the module's source, not by importing it: dti.train and dti.sample import torch, seconds that
    `dti --help`, --version or a mistyped flag should not cost. Any other default (a default_factory)
    imports the module and asks dataclasses.fields."""
    literals = _literal_defaults(module, settings)
    if name in literals:
        return literals[name]
    for field in dataclasses.fields(getattr(importlib.import_module(module), settings)):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            raise LookupError(f"{module}.{settings}.{name} has no default")
    raise LookupError(f"{module}.{settings} has no field {name!r}")


@functools.cache
def _literal_defaults(module: str, settings: str) -> dict:
    """{field: default} for the fields of class `settings` whose default is a literal (`steps: int = 400`),
    from the module's source; empty where there is no source (default_of then imports the module)."""
    spec = importlib.util.find_spec(module)
    source = spec.loader.get_source(module) if spec is not None and spec.loader is not None else None
    if source is None:
        return {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == settings:
            found = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value:
                    try:
                        found[item.target.id] = ast.literal_eval(item.value)
                    except ValueError:  # field(default_factory=...) and the like: not a literal
                        pass
            return found
    return {}


class HyperParameterFlag(argparse.Action):
    """A hyper-parameter's flag: its value (a list for nargs) must pass the check dti.methods declares for it
    (HYPER_PARAMETERS[key].check, the range config files get too), worded as TrainSettings.validate words it."""

    def __call__(self, parser, namespace, values, option_string=None):
        problem = HYPER_PARAMETERS[self.dest].check(values)
        if problem:
            raise argparse.ArgumentError(self, f"{self.dest} must be {problem}, got {values!r}")
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """Every command-line error in one line, `dti: error: ...`, exit code 2 (subcommands too: argparse makes
    them of the parent's class)."""

    def error(self, message: str):
        # "argument --steps: must be ..." (Bounded's message) reads "--steps must be ..."
        match = re.fullmatch(r"argument (-[^\s:]+): (must be .*)", message, flags=re.S)
        if match:
            message = f"{match[1]} {match[2]}"
        self.exit(2, f"dti: error: {visible(message)}\n")


DISTRIBUTION = "dti"  # [project] name in pyproject.toml: whose installed metadata --version reads


def package_version() -> str:
    """The installed distribution's version; from a source tree that was never installed, the package's own
    `__version__`, marked so, rather than no answer."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        from dti import __version__

        return f"{__version__} (not installed)"


class _VersionFlag(argparse.Action):
    """--version: looks the version up only when asked (the metadata lookup costs every other call nothing)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {package_version()}")
        parser.exit(0)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """End each flag's help with its default, as you would type it. Flags without help get one too (argparse's
    ArgumentDefaultsHelpFormatter skips them), and none is added where the help already says what the default
    is, or where there is nothing to show: None (required flags, or a default worked out later and described
    in the help) and False (a switch that is off unless given)."""
    for action in parser._actions:
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or "default" in (action.help or "").lower()):
            continue
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        shown = shown.replace("%", "%%")  # argparse %-formats help strings
        action.help = f"{action.help} (default: {shown})" if action.help else f"(default: {shown})"


def cmd_tiny_model(args) -> None:
    from dti.backbones.catalog import write_tiny_model

    print(write_tiny_model(args.family, args.out, seed=args.seed))


def _output_folder(out: str) -> Path:
    """--out must be a folder (or not exist yet): checked before minutes of loading."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DtiError(f"--out {out} is a file; give a folder")
    return path


def cmd_train(args) -> None:
    from dti.backbones.catalog import load_backbone
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
        latent_cache=not args.no_latent_cache, name=name, zero_pad=args.zero_pad, start_from=args.start_from)
    settings.validate()  # bad settings fail before any image or model is loaded
    images = [load_image(p) for p in list_images(args.images)]
    device = args.device or default_device()
    backbone = load_backbone(args.model, family=args.family, revision=args.revision,
                             dtype=weights_dtype(device, args.dtype), device=device)
    run = train(backbone, images, settings, args.out, progress=not args.quiet)
    print(f"learned {run['tokens']} with {args.method} in {run['seconds']} s -> {args.out}")
    print(how_to_use(args.out, settings.placeholder, settings.export_name, backbone.family))
    kind = run["cost"]["adapter"]
    if kind is not None:  # the token was learned with weights on the denoiser: alone it is not the result
        from dti.inspect import ADAPTER_LOADERS

        folder = Path(args.out) / "adapter"
        print(f"with its {kind} adapter, {folder}: the token was learned together with it, so load both: "
              + ADAPTER_LOADERS[kind].replace("RUN", str(args.out)).replace("FOLDER", str(folder)))


def _check_sample_args(args) -> None:
    """What the flags' types cannot say alone (their ranges are declared with them, in build_parser)."""
    if "{}" not in args.prompt:
        raise DtiError(f"--prompt must contain {{}} where the learned token goes, got {args.prompt!r}")
    if not Path(args.embeds).is_dir():
        raise DtiError(f"--embeds {args.embeds} is not a folder (give the folder holding learned_embeds.safetensors)")


def cmd_sample(args) -> None:
    from dti.backbones.catalog import load_backbone
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
    from dti.families import family_names

    families = family_names()
    parser = _Parser(prog="dti", description=__doc__)
    parser.add_argument("--version", action=_VersionFlag, help="print the version of dti and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tiny-model", help="write a tiny random pipeline of a family (small random weights, offline)")
    p.add_argument("--family", choices=families, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=bounded(int, 0, SEED_MAX, "an integer in [0, 2^63)"), default=0)
    p.set_defaults(func=cmd_tiny_model)

    def model_args(p):
        p.add_argument("--model", required=True, help="HF hub id or local diffusers folder")
        p.add_argument("--family", choices=families, help="default: read from model_index.json")
        p.add_argument("--revision")
        p.add_argument("--device", help="default: cuda if available, else cpu")
        p.add_argument("--dtype", choices=DTYPE_NAMES, default="auto",
                       help="frozen weights' dtype (auto: bf16 on CUDA, fp32 on CPU)")
        p.add_argument("--quiet", action="store_true")

    # The defaults of the flags that set a field of TrainSettings (SampleSettings below) are the dataclass's:
    # one home for each, so the command, the library and config/schema.yaml cannot drift apart.
    def train_default(name):
        return default_of("dti.train", "TrainSettings", name)

    p = sub.add_parser("train", help="learn a subject token with DTI, TI, CrossInit or one of DTI's ablations")
    model_args(p)
    p.add_argument("--images", required=True, help="folder of subject photos")
    # Required although TrainSettings has a default ("object"): the words a token starts from are the
    # subject's, and a generic word would silently start every subject from the same place.
    p.add_argument("--initializer", required=True, help="words to start from, e.g. the class noun")
    p.add_argument("--method", choices=trainable_methods(), default=train_default("method"))
    p.add_argument("--out", required=True)
    p.add_argument("--placeholder", default=train_default("placeholder"), help="the token diffusers prompts "
                   "use (stored in lower case: CLIP tokenizers lower-case prompts)")
    # No default here (TrainSettings' None names the file from the placeholder): cmd_train names it from the
    # --out folder instead, which tells runs apart that share the default placeholder.
    p.add_argument("--name", help="name of the single-file export, its trigger word in AUTOMATIC1111, Forge and "
                   "SD.Next (default: METHOD-FOLDER, the --out folder's name, e.g. dti-bear)")
    p.add_argument("--steps", type=bounded(int, 1), default=train_default("steps"))
    p.add_argument("--batch-size", type=bounded(int, 1), default=train_default("batch_size"))
    p.add_argument("--grad-accum", type=bounded(int, 1), default=train_default("grad_accum"))
    # The backbone checks the multiple of its latent grid; the photos are reduced to 4096 px at most.
    p.add_argument("--resolution", type=bounded(int, 1, 4096), default=train_default("resolution"))
    p.add_argument("--seed", type=bounded(int, 0, SEED_MAX, "an integer in [0, 2^63)"),
                   default=train_default("seed"))
    p.add_argument("--save-every", type=bounded(int, 1), default=train_default("save_every"),
                   help="write learned_embeds-steps-N every N steps")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16"],
                   default=train_default("mixed_precision"))
    # Two switches, off unless given: latent_cache is on by default (the flag turns it off) and zero_pad off
    # (the flag turns it on); tests/test_defaults.py checks that the dataclass still says so.
    p.add_argument("--no-latent-cache", action="store_true", help="re-encode images every step (slower)")
    p.add_argument("--start-from", metavar="RUN", help="the run folder whose final token a second-stage method "
                   "starts from (core_unet: a core run's --out)")
    p.add_argument("--zero-pad", action="store_true", help="prepend 0-15 all-zero padding tokens to each training "
                   "prompt (the DTI authors' SANA runs; docs/method.md)")
    group = p.add_argument_group("hyper-parameters", "default: the method's published value; giving a method "
                                 "one it does not take is an error")
    for key, hp in HYPER_PARAMETERS.items():
        takers = ", ".join(m for m in trainable_methods() if key in METHODS[m].accepts)
        group.add_argument(f"--{key.replace('_', '-')}", dest=key, type=hp.parse, nargs=hp.nargs,
                           action=HyperParameterFlag, help=f"{hp.help} [{takers}]")
    p.set_defaults(func=cmd_train)

    def sample_default(name):
        return default_of("dti.sample", "SampleSettings", name)

    p = sub.add_parser("sample", help="generate images with a learned token")
    model_args(p)
    p.add_argument("--embeds", required=True, help="folder with learned_embeds*.safetensors")
    p.add_argument("--prompt", required=True, help="with {} where the token goes, e.g. 'a {} in the snow'")
    # No settings field (one SampleJob per seed): this default lives here alone.
    p.add_argument("--seeds", type=bounded(int, 0, SEED_MAX, "integers in [0, 2^63)"), nargs="+",
                   default=[0, 1, 2, 3])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=bounded(int, 1), default=sample_default("steps"))
    p.add_argument("--guidance-scale", type=bounded(float, 0), default=sample_default("guidance_scale"))
    # The backbone checks the multiple of its latent grid once the model is loaded.
    p.add_argument("--resolution", type=bounded(int, 1, 8192), default=sample_default("resolution"),
                   help="image height (and width unless --width)")
    p.add_argument("--width", type=bounded(int, 1, 8192), default=sample_default("width"),
                   help="image width (default: --resolution)")
    # An integer only: "auto" (SampleSettings takes it too) sizes batches by free GPU memory, a config option.
    p.add_argument("--batch-size", type=bounded(int, 1), default=sample_default("batch_size"))
    p.add_argument("--rescale-to", help="TI-rescaled: set each row's norm to this vocabulary statistic")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("inspect", help="norms, nearest vocabulary tokens and loaders of a textual-inversion file; "
                       "rank, size and update norm of an adapter")
    p.add_argument("file", metavar="PATH", help="a .safetensors embedding (pickle formats are refused, never "
                   "unpickled), an adapter folder (adapter/, adapter-steps-N/) or a run folder (its final "
                   "learned_embeds files and adapter/)")
    p.add_argument("--model", help="HF hub id or local diffusers folder: compare with its vocabulary")
    p.add_argument("--revision")
    p.add_argument("--top", type=bounded(int, 1, 1000), default=5, help="nearest vocabulary tokens to list per "
                   "vector (1 to 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)
    for subcommand in sub.choices.values():
        _show_defaults(subcommand)
    return parser


def _hub_cache_miss(exc: BaseException, args) -> str | None:
    """One line for a hub model that is not in the local cache: huggingface_hub's LocalEntryNotFoundError
    (offline, or the hub out of reach), wherever in the chain of causes the loaders wrapped it. Its own
    message (and the transformers one around it) runs over several lines and names no model; this one names
    --model and the two ways out. None for any other error."""
    model = getattr(args, "model", None)
    if model is None or "huggingface_hub" not in sys.modules:  # no hub call can have been made
        return None
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen = set()  # a chain that loops back (`raise a from b` after `raise b from a`) ends the walk too
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, LocalEntryNotFoundError):
            break
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    else:
        return None
    revision = getattr(args, "revision", None)
    fetch = f"hf download {model}" + (f" --revision {revision}" if revision else "")
    why = "HF_HUB_OFFLINE forbids downloading" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
    return (f"model {model!r}{f' (revision {revision})' if revision else ''} is not (fully) in the local Hugging "
            f"Face cache and {why}: download it where there is internet (`{fetch}`) or give --model a local "
            "diffusers folder")


def _report(exc: BaseException, args) -> None:
    # Messages may quote text from files (a tensor name, a file name): dti.terminal.visible keeps each one line.
    print(f"dti: error: {visible(_hub_cache_miss(exc, args) or exc)}", file=sys.stderr)


def _run(argv: list[str] | None) -> int:
    from dti.jobs import lighten_gc

    lighten_gc()
    # diffusers still passes huggingface_hub a deprecated argument: two lines of warning before every hub
    # lookup, about nothing the user can change.
    warnings.filterwarnings("ignore", message=r"The `local_dir_use_symlinks` argument is deprecated",
                            category=UserWarning)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad flag (one line from _Parser.error: code 2), --help or --version (0)
        return exc.code if isinstance(exc.code, int) else 0
    try:
        args.func(args)
    except BrokenPipeError:  # an OSError, but not the user's: main() handles it
        raise
    except DtiError as exc:
        _report(exc, args)
        return 2
    except OSError as exc:  # the OS's message names the file (permissions, a folder where a file should be)
        _report(exc, args)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from dti.train import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            print(f"dti: {visible(exc)}", file=sys.stderr)
            return 143
        raise
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status.

    When the reader of our output goes away (`dti inspect --json F | head -c 10`), stop quietly as Unix tools
    do, with 141: the status a shell reports for a tool that SIGPIPE ended (128 + 13), what `cat` or `grep`
    give there. Not 0: the output was cut short, and a script under `set -o pipefail` must be able to tell.
    """
    try:
        code = _run(argv)
        sys.stdout.flush()  # what is still buffered meets a closed pipe here, not in Python's flush at exit
        return code
    except BrokenPipeError:
        # Nothing more can reach the reader; point both streams at /dev/null so that Python's flush at exit
        # does not raise again and print a traceback of its own (stderr may be the same pipe: `2>&1 | head`).
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):  # a stream replaced by one without a file descriptor
                pass
        os.close(devnull)
        return 141


if __name__ == "__main__":
    sys.exit(main())
