"""The cluster environments (docs/environments.md): workflow/envs/dti.yaml for `--sdm conda` and
workflow/envs/dti.def for `--sdm apptainer` install exactly requirements.lock.txt, on the Python the
project's venv runs.

Neither conda nor Apptainer is used here (no conda channel and no Apptainer package can be reached from
the project's machines): the conda file is checked against the lock and this venv, and the definition file
with a port of the checks Apptainer's own parser makes (pkg/build/types/parser/deffile.go) plus `sh -n` of
its scriptlets, which Apptainer runs with /bin/sh.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock.txt"
CONDA_ENV = REPO / "workflow" / "envs" / "dti.yaml"
DEFINITION = REPO / "workflow" / "envs" / "dti.def"
VENV_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def lock_pins() -> list[str]:
    """The lock's requirement lines, in order, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in LOCK.read_text().splitlines())
    return [line for line in lines if line]


def conda_env() -> dict:
    return yaml.safe_load(CONDA_ENV.read_text())


def conda_dependencies() -> tuple[list[str], list[str]]:
    """(the conda specs, the pip list) of the environment file."""
    specs, pip = [], None
    for dep in conda_env()["dependencies"]:
        if isinstance(dep, dict):
            assert list(dep) == ["pip"] and pip is None, f"one pip list, nothing else nested: {dep}"
            pip = dep["pip"]
        else:
            specs.append(dep)
    assert pip is not None, "the environment file has no pip list"
    return specs, pip


# --- workflow/envs/dti.yaml ---------------------------------------------------------------------------------


def test_conda_env_pip_list_is_the_lock_line_for_line():
    _, pip = conda_dependencies()
    lock = lock_pins()
    assert all(isinstance(p, str) for p in pip)
    missing = [p for p in lock if p not in pip]
    extra = [p for p in pip if p not in lock]
    assert not missing and not extra, (
        f"workflow/envs/dti.yaml differs from requirements.lock.txt: missing {missing}, not in the lock "
        f"{extra}. Copy the lock's lines into its pip list.")
    assert pip == lock, "same pins, other order: keep the lock's order so the two files diff line for line"


def test_conda_env_takes_only_python_and_pip_from_conda():
    # Anything else from conda would be a second copy of what pip installs from the lock, or an unpinned
    # extra. conda-forge only: no Anaconda `defaults` channel (its terms of service bind many institutions).
    specs, _ = conda_dependencies()
    names = sorted(re.split(r"[=<>!~ ]", s, maxsplit=1)[0] for s in specs)
    assert names == ["pip", "python"], specs
    assert conda_env()["channels"] == ["conda-forge", "nodefaults"]


def test_conda_env_python_is_the_venvs_and_the_projects():
    specs, _ = conda_dependencies()
    (python,) = [s for s in specs if s.startswith("python")]
    assert python == f"python={VENV_PYTHON}", f"the venv runs Python {VENV_PYTHON}, the conda env asks {python}"
    requires = pyproject()["project"]["requires-python"]
    assert f"{VENV_PYTHON}.0" in SpecifierSet(requires)


def test_conda_env_pins_installed_together_in_this_venv():
    """The pins resolve together on this Python: `make` installed exactly these versions into the venv that
    runs this test (conda's pip step installs the same list from the same package index)."""
    differ = []
    for pin in conda_dependencies()[1]:
        name, version = pin.split("==")
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            differ.append(f"{name}: pinned {version}, installed {installed}")
    assert not differ, f"the venv is not the lock (rerun `make .venv/.installed`): {differ}"


def test_a_conda_job_finds_dti_in_the_checkout_snakemake_runs_from():
    """Why dti.yaml does not install dti: a script job's preamble appends the Snakemake process's own search
    path (snakemake.common.get_snakemake_searchpaths) to the job's sys.path, and that holds this checkout's
    src/ (an editable install's plain path entry). An interpreter with none of this venv's site-packages
    finds dti there, in the checkout, not a copy."""
    controller = subprocess.run(
        [sys.executable, "-c",
         "import json; from snakemake.common import get_snakemake_searchpaths as g; print(json.dumps(g()))"],
        cwd=REPO / "tests", capture_output=True, text=True, check=True)
    job = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         "import importlib.util, json, sys; before = importlib.util.find_spec('dti');"
         "sys.path.extend(json.loads(sys.argv[1])); print(before is None, importlib.util.find_spec('dti').origin)",
         controller.stdout.strip()],
        cwd="/", capture_output=True, text=True, check=True)
    not_before, origin = job.stdout.split()
    assert not_before == "True", "the bare interpreter found dti without Snakemake's search path"
    assert Path(origin).resolve() == (REPO / "src" / "dti" / "__init__.py").resolve(), origin


# --- workflow/envs/dti.def ----------------------------------------------------------------------------------

# As Apptainer's parser has them (pkg/build/types/parser/deffile.go).
VALID_SECTIONS = {"help", "setup", "files", "labels", "environment", "pre", "post", "runscript", "test",
                  "startscript", "arguments"}
VALID_HEADERS = {"bootstrap", "from", "includecmd", "mirrorurl", "updateurl", "osversion", "include", "library",
                 "registry", "namespace", "stage", "product", "user", "regcode", "productpgp", "registerurl",
                 "modules", "fingerprints", "confurl", "setopt"}


def parse_definition(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header, sections) of a single-stage definition file, refusing what Apptainer's parser refuses: an
    unknown header keyword, a header line without a value, an unknown section. Like Apptainer, a line whose
    first word starts with % opens a section, and repeated sections are appended to one another."""
    stages = re.split(r"(?mi)^(?=bootstrap:)", text)
    before, stages = stages[0], stages[1:]
    assert all(not line.strip() or line.lstrip().startswith("#") for line in before.splitlines()), \
        "only comments may precede Bootstrap:, the header's first keyword"
    assert len(stages) == 1, "one build stage expected"
    header, sections, current = {}, {}, None
    for line in stages[0].splitlines():
        words = line.split()
        if words and words[0].startswith("%"):
            current = words[0][1:].lower()
            assert current in VALID_SECTIONS, f"invalid section %{current}"
            sections.setdefault(current, "")
        elif current is not None:
            sections[current] += line + "\n"
        elif words and not words[0].startswith("#"):
            key, colon, value = line.split("#", 1)[0].partition(":")
            key = key.strip().lower()
            assert colon and value.strip(), f"header key {key} had no value"
            assert key in VALID_HEADERS, f"invalid header keyword {key}"
            header[key] = value.strip()
    return header, sections


def definition() -> tuple[dict[str, str], dict[str, str]]:
    return parse_definition(DEFINITION.read_text())


def files_section() -> dict[str, str]:
    """%files as {source: destination}."""
    pairs = {}
    for line in definition()[1]["files"].splitlines():
        if line.strip() and not line.strip().startswith("#"):
            src, *dst = shlex.split(line)
            pairs[src] = dst[0] if dst else src
    return pairs


def commands(script: str) -> list[list[str]]:
    """A scriptlet's commands as argument lists (comments dropped, one command a line)."""
    return [shlex.split(line, comments=True) for line in script.splitlines() if shlex.split(line, comments=True)]


def test_parser_refuses_what_apptainer_refuses():
    good = "# c\nBootstrap: docker\nFrom: python:3.11-slim\n%post\n    echo hi\n"
    assert parse_definition(good) == ({"bootstrap": "docker", "from": "python:3.11-slim"}, {"post": "    echo hi\n"})
    for bad in (good.replace("%post", "%pots"), good.replace("From:", "Form:"), "From: x\n" + good,
                good.replace("From: python:3.11-slim", "From python:3.11-slim")):
        with pytest.raises(AssertionError):
            parse_definition(bad)


def test_definition_parses_with_a_pinned_python_base_of_the_venvs_version():
    header, sections = definition()
    assert header["bootstrap"] == "docker"
    image, _, tag = header["from"].partition(":")
    assert image == "python" and tag and tag != "latest", f"pin the base image to a tag: {header['from']}"
    assert tag.split("-")[0] == VENV_PYTHON, f"the venv runs Python {VENV_PYTHON}, the image {tag}"
    assert {"files", "post", "environment", "test", "runscript"} <= set(sections)


def test_definition_copies_what_the_install_needs_and_it_exists():
    files = files_section()
    project = pyproject()
    # The build context is the repository root (docs/environments.md builds from there).
    needed = {"requirements.lock.txt", "pyproject.toml", project["project"]["readme"],
              *project["tool"]["setuptools"]["packages"]["find"]["where"]}
    assert needed <= set(files), f"%files lacks {needed - set(files)}"
    for src in files:
        assert (REPO / src).exists(), f"%files source {src} is not in the repository"
    # Everything the package build reads lands in one folder: the one pip installs from.
    project_dir = str(Path(files["pyproject.toml"]).parent)
    assert all(str(Path(files[src]).parent) == project_dir for src in needed), files


def test_definition_installs_the_lock_then_the_package():
    _, sections = definition()
    files = files_section()
    post = commands(sections["post"])
    assert post[0][:2] == ["set", "-eu"], "stop the build at the first failing command"
    pip = [c[c.index("install") + 1:] for c in post if c[:4] == ["python", "-m", "pip", "install"]]
    assert pip[0] == ["-r", files["requirements.lock.txt"]], "first install exactly the copied lock"
    assert pip[1] == ["--no-deps", str(Path(files["pyproject.toml"]).parent)], \
        "then the package, not editable, adding no other version than the lock's"
    assert len(pip) == 2
    assert ["python", "-m", "pip", "check"] in post
    imports = " ".join(" ".join(c) for c in commands(sections["test"]))
    assert "import dti" in imports


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
@pytest.mark.parametrize("section", ["post", "environment", "test", "runscript"])
def test_definition_scriptlets_are_valid_sh(section):
    script = definition()[1][section]
    checked = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, f"%{section}: {checked.stderr}"



# --- the workflow names them -----------------------------------------------------------------------------
def test_every_rule_runs_in_the_conda_environment_and_the_lint_is_clean(tmp_path):
    """`--sdm conda` reaches every rule (each names DTI_ENV, the env file's path from rules/), and with that
    `snakemake --lint` has no finding left."""
    common = (REPO / "rules" / "common.smk").read_text()
    env = re.search(r'^DTI_ENV = "([^"]+)"', common, re.M).group(1)
    assert (REPO / "rules" / env).resolve() == (REPO / "workflow" / "envs" / "dti.yaml").resolve()
    for smk in sorted((REPO / "rules").glob("*.smk")):
        rules = re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]
        for rule in rules:
            assert re.search(r"^    conda:\n        DTI_ENV$", rule, re.M), f"{smk.name}: rule {rule.split(':')[0]}"
    lint = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--lint", "-s", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
