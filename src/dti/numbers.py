"""Numbers read from files get the checks the command line gives them.

A value in a config file reaches the same code as the flag it stands for, but JSON schema lets through
what `dti`'s flags refuse: YAML's `.nan` passes `minimum` and `exclusiveMinimum` (every comparison with NaN
is false), `.inf` passes `minimum`, an integer has no upper bound (a seed of 2^64, 10^30 steps) and a float
may be finite in float64 yet not in the float32 the models compute in (a learning rate of 1e39). So every
number of the config, wherever it sits, is checked once after the schema (`check_numbers`): finite, an
integer within 64 bits, a float within float32's range, and seeds in [0, 2^63) as `dti --seed` takes
them. Each method's hyper-parameters are checked by dti.methods (the same check as their flags) while
planning; `metadata_number` checks a number read back from a safetensors file's metadata.
"""

from __future__ import annotations

import math

from dti.errors import DtiError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max
SEED_MAX = INT64_MAX  # torch generators take 64-bit seeds; a signed 63-bit one means the same everywhere
SEED_KEYS = ("seed", "seeds")  # config keys holding a seed, or a list of seeds


def number_problem(value) -> str | None:
    """Why `value` cannot be used as a number anywhere (None if it is fine or is not a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else "beyond the 64-bit integer range [-2^63, 2^63)"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "not a finite number"
        if abs(value) > FLOAT32_MAX:
            return f"beyond float32's range (at most {FLOAT32_MAX:.4g} in size), in which the models compute"
    return None


def seed_problem(value) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX
    return None if ok else "not a seed: seeds are integers in [0, 2^63)"


def _path(parent: str, key) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def check_numbers(tree, where: str = "") -> None:
    """A DtiError `<key path>: <value> is <problem>` (e.g. `methods.dti.lr: nan is not a finite number`)
    for the first number of `tree` (nested dicts and lists) that no flag would take."""
    stack = [(where, tree, False)]
    while stack:
        path, value, is_seed = stack.pop()
        if isinstance(value, dict):
            stack.extend((_path(path, k), v, k in SEED_KEYS) for k, v in reversed(value.items()))
            continue
        if isinstance(value, (list, tuple)):
            stack.extend((_path(path, i), v, is_seed) for i, v in reversed(list(enumerate(value))))
            continue
        problem = number_problem(value) or (seed_problem(value) if is_seed and value is not None else None)
        if problem:
            raise DtiError(f"{path or 'value'}: {value!r} is {problem}")


def metadata_number(where: str, key: str, text: str, *, integer: bool = False, minimum: float = 0,
                    exclusive: bool = False) -> float | int:
    """The number a safetensors file's metadata value `text` holds, checked as the flag of the same setting
    would check it: an integer (`integer`) within 64 bits, or a finite float32; at least `minimum` (above
    it with `exclusive`). Anything else is a DtiError naming `where` (the file), the key and the value."""
    kind = "an integer" if integer else "a finite number"
    bound = f"> {minimum}" if exclusive else f">= {minimum}"
    try:
        value = int(text) if integer else float(text)
    except (TypeError, ValueError):
        value = None
    if value is None or number_problem(value) or value < minimum or (exclusive and value == minimum):
        shown = text if len(str(text)) <= 40 else f"{str(text)[:40]}…"
        raise DtiError(f"{where}: metadata {key} {shown!r} is not {kind} {bound} (the file is damaged or was "
                       "not written by dti)")
    return value


# The numbers dti writes into an embedding file's metadata (dti.train.Trainer.provenance), each with the range
# of the setting it records: the step count as `--steps` (positive), the seed as `--seed`, kappa as
# `--kappa`, each encoder's norm m (dti.magnitude.<encoder>) positive; all within 64-bit integers or float32.
_METADATA_NUMBERS = {"dti.steps": dict(integer=True, minimum=1), "dti.seed": dict(integer=True, minimum=0),
                     "dti.kappa": dict(minimum=0)}
_MAGNITUDE_PREFIX = "dti.magnitude."


def provenance_problems(path, metadata: dict[str, str]) -> dict[str, str]:
    """{key: the one-line problem} for each number of dti's provenance in a safetensors file's `metadata`
    that the flag of its setting would refuse (not a number, NaN or infinite, beyond float32 or 64 bits, out
    of its range); {} for a sound file and for files of other tools (they carry no dti.* keys). A seed
    within 64 bits and >= 0 is one of [0, 2^63), as `--seed` takes."""
    problems = {}
    for key, text in metadata.items():
        if key in _METADATA_NUMBERS:
            bounds = _METADATA_NUMBERS[key]
        elif key.startswith(_MAGNITUDE_PREFIX):
            bounds = dict(minimum=0, exclusive=True)
        else:
            continue
        try:
            metadata_number(str(path), key, text, **bounds)
        except DtiError as err:
            problems[key] = str(err)
    return problems
