"""`snakemake --report` on the embedded default's run, opened in a real headless Chromium.

Chromium comes from the distribution's packages: the `chromium` fixture installs it with apt-get when it is
missing (as root, as CI runs). Snakemake's report is one self-contained HTML file whose page is drawn by
JavaScript from data embedded in it, so the checks look at the page after its scripts ran: the DOM that
Chromium dumps, a screenshot, and a probe that walks every section of a copy of the report the way a
reader clicks through it and records what each result showed.
"""

from __future__ import annotations

import copy
import html
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from workflow_run import SHARED, snakemake

pytestmark = pytest.mark.slow

DEFAULT = copy.deepcopy(SHARED)  # the shared run's config (tests/shared_run.yaml)
RUN = f"results/runs/{DEFAULT['run_name']}"  # the run's tables, analyses and report files
SECTIONS = ["Checkpoints", "Interpolation", "Norms and directions", "Samples", "Tables"]
# What headless Chromium needs in a container: no sandbox (root), no GPU, and nothing that phones home.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=60000"]
PROBE = Path(__file__).parent / "report" / "probe.js"
WINDOW = (1400, 900)


def _apt(*args: str) -> subprocess.CompletedProcess:
    """apt-get, waiting for the package lock (other installs, e.g. the SLURM fixture's, may hold it)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(5):
        result = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", *args], capture_output=True,
                                text=True, env=env, timeout=900)
        if result.returncode == 0 or "lock" not in result.stderr.lower():
            return result
        time.sleep(5 * (attempt + 1))  # `apt-get update` does not wait for the lists lock by itself
    return result


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Chromium is not installed and only root with apt-get can install it here "
                    "(apt-get install chromium)")
    for args in (("update", "-qq"), ("install", "-y", "-qq", "--no-install-recommends", "chromium")):
        result = _apt(*args)
        if result.returncode != 0:
            pytest.fail(f"apt-get {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but there is no `chromium` on PATH"
    return found


def run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium with a fresh profile folder (a used one can hold a lock or cached state)."""
    result = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"chromium failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def report(default_run, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    snakemake(default_run, "--report", str(path))
    return path


def expected_results(run_dir: Path) -> set[str]:
    """Every file the report must hold, from the outputs the embedded default's run wrote."""
    backbones, subjects = sorted(DEFAULT["backbones"]), sorted(s["name"] for s in DEFAULT["subjects"])
    pairs = [f"{p['a']}+{p['b']}" for p in DEFAULT["interpolation"]["pairs"]]
    interpolated = DEFAULT["interpolation"].get("backbones") or backbones
    swept = DEFAULT["analysis"]["magnitude"].get("backbones") or backbones
    files = {f"{RUN}/analysis/{kind}/{b}.png" for kind in ("norm_curves", "vocab_norms") for b in backbones}
    files |= {f"{RUN}/analysis/magnitude/{b}.png" for b in swept}
    files |= {f"{RUN}/interpolation/{b}/{p}/{kind}.png" for b in interpolated for p in pairs
              for kind in ("curves", "strip")}
    files |= {f"{RUN}/report/grids/{b}/{s}.png" for b in backbones for s in subjects}
    files |= {f"{RUN}/report/tables/{p.stem}.html" for p in (run_dir / f"{RUN}/tables").glob("*.parquet")}
    files |= {f"{RUN}/report/tables/interpolation.html", f"{RUN}/analysis/checkpoints.png"}
    assert all((run_dir / f).is_file() for f in files), sorted(f for f in files if not (run_dir / f).is_file())
    return files


def embedded(report_html: str, name: str) -> dict:
    match = re.search(rf"var {name} = (\{{.*?\}});\n", report_html, re.S)
    assert match, f"the report embeds no `{name}`"
    return json.loads(match.group(1))


def test_report_embeds_every_result(report, default_run):
    text = report.read_text()
    results, categories = embedded(text, "results"), embedded(text, "categories")
    assert set(results) == expected_results(default_run)
    assert sorted(categories) == SECTIONS
    listed = {path for subcategories in categories.values() for paths in subcategories.values() for path in paths}
    assert listed == set(results)
    for path, entry in results.items():
        assert entry["data_uri"].startswith(f"data:{entry['mime_type']}"), path
        assert entry["caption"].strip(), f"{path} has no caption"


def test_page_renders_its_sections(report, chromium, tmp_path):
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", report.as_uri()).stdout
    page = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)  # what was drawn, not the embedded data
    assert '<div id="app"></div>' not in page  # the app drew into its element
    for section in SECTIONS:
        assert f">{html.escape(section)}<" in page, f"the menu lacks {section!r}"
    assert ">DTI benchmark report<" in page  # the front page, workflow/report/workflow.rst
    for backbone in DEFAULT["backbones"]:
        assert backbone in page


def test_screenshot_is_not_blank(report, chromium, tmp_path):
    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path / "profile", f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}",
                 report.as_uri())
    with Image.open(shot) as image:
        assert image.size == WINDOW
        gray = np.asarray(image.convert("L"), dtype=np.float64)
    # A blank page is one colour; the report shows a dark menu, text and the rule graph on white.
    values, counts = np.unique(gray.astype(np.uint8), return_counts=True)
    assert counts.max() / gray.size < 0.9, "one colour covers nearly the whole screenshot"
    assert gray.std() > 10 and len(values) > 20


def test_every_result_shows_in_the_browser(report, chromium, tmp_path):
    """Walk every section and result through the report's own app; every image must decode to a picture
    and every table page must hold a table."""
    text = report.read_text()
    end = text.rindex("</body>")
    probed = tmp_path / "probed.html"
    probed.write_text(text[:end] + "<script>" + PROBE.read_text() + "</script>" + text[end:])
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", probed.as_uri()).stdout
    marker = '<pre id="probe-result">'
    assert marker in dom, "the probe never finished"
    start = dom.rindex(marker) + len(marker)
    probe = json.loads(html.unescape(dom[start:dom.index("</pre>", start)]))
    assert probe["error"] is None, probe["error"]
    results, categories = embedded(text, "results"), embedded(text, "categories")
    assert set(probe["results"]) == set(results)
    missing = {path: shown for path, shown in probe["results"].items()
               if not shown["shown"] or (shown["kind"] == "image" and not (shown["complete"] and shown["width"] > 0))
               or (shown["kind"] != "image" and not shown["has_table"])}
    assert not missing, f"results that did not show: {missing}"
    for category, subcategories in categories.items():
        for subcategory, paths in subcategories.items():
            menu = probe["menus"][f"{category} / {subcategory}"]
            for path in paths:  # each result is listed by its labels (or its file name)
                labels = results[path]["labels"] or {"name": results[path]["name"]}
                assert all(str(v) in menu for v in labels.values()), (category, subcategory, path)
