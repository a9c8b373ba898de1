"""`snakemake --report` on the embedded default's run, opened in a real headless Chromium.

Chromium comes from the distribution's packages: the `chromium` fixture installs it with apt-get when it is
missing (as root, as CI runs). Snakemake's report is one self-contained HTML file whose page is drawn by
JavaScript from data embedded in it, so the checks look at the page after its scripts ran: the DOM, a
screenshot, and every section and result clicked through the report's own app, recording what each showed.

Chromium is driven over its DevTools protocol (`Browser`), and every check waits for what it checks, not for
an amount of time: a page that takes seconds to draw on a loaded machine is polled until it has drawn, up
to a generous deadline. (A --dump-dom under --virtual-time-budget dumps when the budget is spent, and
virtual time runs ahead of work done on other threads and processes, such as decoding an image or drawing
the page, so under load it dumped a page not yet drawn.)
"""

from __future__ import annotations

import base64
import copy
import fcntl
import html
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from workflow_run import SHARED, snakemake

pytestmark = pytest.mark.slow

DEFAULT = copy.deepcopy(SHARED)  # the shared run's config (tests/shared_run.yaml)
RUN = f"results/runs/{DEFAULT['run_name']}"  # the run's tables, analyses and report files
# The README's order; each name starts with its place, since the report lists its categories sorted by name.
SECTIONS = ["1. Tables", "2. Samples", "3. Interpolation", "4. Norms and directions", "5. Checkpoints",
            "6. Mechanism"]
# What headless Chromium needs in a container: no sandbox (root), no GPU, and nothing that phones home.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOW = (1400, 900)
# How long a page may take to show what a check waits for. A quiet 2-core machine draws the report in about
# 4 s; this only bounds a page that never does, so it is generous. The walk through every result shares one.
PAGE_DEADLINE_S, WALK_DEADLINE_S = 240, 600


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


class Browser:
    """One headless Chromium and one tab in it, driven over the DevTools protocol on a pipe
    (--remote-debugging-pipe: the browser reads commands on its descriptor 3 and answers on 4, each message
    JSON ending in a NUL byte), so a check can ask the page for what it shows, as often as it needs to.
    A fresh profile folder for each (a used one can hold a lock or cached state)."""

    def __init__(self, chromium: str, profile: Path, window: tuple[int, int] = WINDOW):
        self.log = profile.with_name(profile.name + ".log")
        to_browser, from_browser = os.pipe(), os.pipe()
        # The browser's ends, moved above 9 so that bash can put them at 3 and 4 without overwriting one with
        # the other (preexec_fn could do it, but is unsafe in this process: the workflow runs in a thread).
        theirs = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser[0], from_browser[1])]
        for fd in (to_browser[0], from_browser[1]):
            os.close(fd)
        self._read, self._write = from_browser[0], to_browser[1]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$@" 3<&{theirs[0]} 4>&{theirs[1]}', "bash", chromium, *FLAGS,
                 f"--window-size={window[0]},{window[1]}", f"--user-data-dir={profile}", "--remote-debugging-pipe"],
                pass_fds=theirs, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        for fd in theirs:
            os.close(fd)
        self._pending, self._id, self._session = b"", 0, None
        try:
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            # The screenshot's size, whatever the window's frame takes.
            self.send("Emulation.setDeviceMetricsOverride", width=window[0], height=window[1], deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self.close()
            raise

    def _failed(self, why: str) -> AssertionError:
        log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return AssertionError(f"chromium: {why} (exit status {self.process.poll()}); its log ends:\n{log}")

    def _message(self, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while b"\0" not in self._pending:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise self._failed(f"no answer in {timeout} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise self._failed("it closed the pipe")
            self._pending += chunk
        message, self._pending = self._pending.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, timeout: float = PAGE_DEADLINE_S, **params) -> dict:
        """A command's result (events the browser sends meanwhile are not needed: the checks poll). The
        timeout only ends a wait on a browser that stopped answering; an answer comes as soon as it is ready."""
        self._id += 1
        command = {"id": self._id, "method": method, "params": params}
        if self._session and not method.startswith(("Target.", "Browser.")):
            command["sessionId"] = self._session
        os.write(self._write, json.dumps(command).encode() + b"\0")
        while True:
            answer = self._message(timeout)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise self._failed(f"{method} failed: {answer['error']}")
                return answer["result"]

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a promise awaited); a RuntimeError with the
        page's message if it threw."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, expression: str, deadline: float, ready=bool):
        """Evaluate `expression` until ready(value) or the deadline (time.monotonic()) has passed, at least
        once; the last value. An expression that throws (the app not defined yet) is not ready; one that
        still throws at the deadline raises."""
        while True:
            try:
                value, error = self.evaluate(expression), None
            except RuntimeError as exc:
                value, error = None, exc
            if (error is None and ready(value)) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if error is not None:
            raise error
        return value

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def screenshot(self) -> Image.Image:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data)))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except AssertionError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._read, self._write):
            os.close(fd)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    mechanism = DEFAULT["analysis"]["mechanism"]
    measured = mechanism.get("backbones") or backbones  # every one of them SDXL-shaped (two CLIPs, a UNet)
    files |= {f"{RUN}/analysis/mechanism/{b}/{kind}.png" for b in measured
              for kind in ("positional", "residual", "context", "attention")}
    files |= {f"{RUN}/analysis/mechanism/{b}/directions/{s}.png" for b in measured for s in subjects}
    files |= {f"{RUN}/analysis/mechanism/{b}/directions/nearest.html" for b in measured}  # CLIP: no decoding
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
    assert sorted(categories) == SECTIONS  # the menu's order is the README's
    listed = {path for subcategories in categories.values() for paths in subcategories.values() for path in paths}
    assert listed == set(results)
    for path, entry in results.items():
        assert entry["data_uri"].startswith(f"data:{entry['mime_type']}"), path
        assert entry["caption"].strip(), f"{path} has no caption"


def test_table_pages_in_the_built_report_read_like_their_latex(report, default_run):
    """The summary as the report carries it: the LaTeX table's caption, every method and metric by its
    display name (never a registry key), and as many best values in bold as the .tex has."""
    from dti.report import latex_caption
    from dti.terms import display_name

    results = embedded(report.read_text(), "results")
    page = base64.b64decode(results[f"{RUN}/report/tables/summary.html"]["data_uri"].split(",", 1)[1]).decode()
    tex = (default_run / f"{RUN}/tables/summary.tex").read_text()
    assert html.escape(latex_caption(tex)) in page
    summary = pd.read_parquet(default_run / f"{RUN}/tables/summary.parquet")
    for method in summary["method"].unique():
        assert f">{html.escape(display_name(method))}<" in page, method
    assert ">dti_trained_norm<" not in page and ">clip_t<" not in page
    assert page.count('class="num best"') == tex.count("\\textbf{") > 0  # the bold cells (the legend says "Bold" too)


# The page's DOM as drawn: a copy without its scripts (the embedded data, megabytes of it, is not drawn).
DRAWN_DOM = """(() => {
  const copy = document.documentElement.cloneNode(true);
  copy.querySelectorAll("script").forEach((script) => script.remove());
  return copy.outerHTML;
})()"""


def page_problems(dom: str) -> list[str]:
    """What the report's first page lacks; none once the app has drawn it."""
    page = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)  # what was drawn, not the embedded data
    problems = ['the app drew nothing into <div id="app">'] if '<div id="app"></div>' in page else []
    problems += [f"the menu lacks {section!r}" for section in SECTIONS if f">{html.escape(section)}<" not in page]
    # The front page (workflow/report/workflow.rst) lists every section as a link to it.
    problems += [f"the front page does not list {section!r}" for section in SECTIONS
                 if f">{html.escape(section)}</a>" not in page]
    if ">DTI benchmark report<" not in page:  # the front page, workflow/report/workflow.rst
        problems.append("the front page's title is missing")
    return problems + [f"backbone {b!r} is not named" for b in DEFAULT["backbones"] if b not in page]


@contextmanager
def drawn_report(chromium: str, report: Path, profile: Path):
    """A Browser on the report once its first page has drawn (or the deadline passed: the checks say what
    is missing)."""
    with Browser(chromium, profile) as browser:
        browser.open(report.as_uri())
        browser.wait_for(DRAWN_DOM, time.monotonic() + PAGE_DEADLINE_S, ready=lambda dom: not page_problems(dom))
        yield browser


def test_page_renders_its_sections(report, chromium, tmp_path):
    with drawn_report(chromium, report, tmp_path / "profile") as browser:
        problems = page_problems(browser.evaluate(DRAWN_DOM))
    assert not problems, problems


def test_screenshot_is_not_blank(report, chromium, tmp_path):
    with drawn_report(chromium, report, tmp_path / "profile") as browser:
        # Drawn in the DOM; then every image loaded, the fonts ready, and two frames painted since.
        settled = browser.wait_for(
            "Array.from(document.images).every((image) => image.complete) && document.fonts.status === 'loaded'",
            time.monotonic() + PAGE_DEADLINE_S)
        assert settled, "the report's images or fonts never finished loading"
        browser.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
        with browser.screenshot() as image:
            assert image.size == WINDOW
            gray = np.asarray(image.convert("L"), dtype=np.float64)
    # A blank page is one colour; the report shows a dark menu, text and the rule graph on white.
    values, counts = np.unique(gray.astype(np.uint8), return_counts=True)
    assert counts.max() / gray.size < 0.9, "one colour covers nearly the whole screenshot"
    assert gray.std() > 10 and len(values) > 20


def _labels(entry: dict) -> list[str]:
    """How the results list names a result: its labels, or its file name."""
    return [str(v) for v in (entry["labels"] or {"name": entry["name"]}).values()]


def _has_table(data_uri: str) -> bool:
    return b"<table" in base64.b64decode(data_uri.split(",", 1)[1])


def walk_results(browser: Browser, categories: dict, results: dict, deadline: float) -> dict:
    """Every section and result through the report's own app (app.setView, what its menu items and buttons
    call), the way a reader clicks through it; after each step, wait until the page shows what the step
    should show, and record what it showed: {"menus": {"category / subcategory": the results list's text},
    "results": {path: how it showed}}."""
    walked = {"menus": {}, "results": {}}
    menu = "({mode: app.state.navbarMode, subcategory: app.state.subcategory, text: document.querySelector('nav').innerText})"
    for category, subcategories in categories.items():
        for subcategory, paths in subcategories.items():
            # The results list is built when it mounts: leave it first (the menu lists the categories).
            browser.evaluate('app.setView({navbarMode: "menu"})')
            browser.wait_for(menu, deadline, ready=lambda now, c=category: now["mode"] == "menu" and c in now["text"])
            browser.evaluate(f'app.setView({{navbarMode: "subcategory", category: {json.dumps(category)}, '
                             f"subcategory: {json.dumps(subcategory)}}})")
            labels = {label for path in paths for label in _labels(results[path])}
            shown = browser.wait_for(menu, deadline, ready=lambda now, s=subcategory, want=labels: (
                now["subcategory"] == s and all(label in now["text"] for label in want)))
            walked["menus"][f"{category} / {subcategory}"] = shown["text"]
            for path in paths:
                entry = f"results[{json.dumps(path)}]"
                if results[path]["mime_type"].startswith("image/"):
                    browser.evaluate(f'app.setView({{content: "img", contentPath: {entry}.data_uri, '
                                     f"resultPath: {json.dumps(path)}}})")
                    walked["results"][path] = browser.wait_for(f"""(() => {{
                        const img = Array.from(document.images).find((i) => i.getAttribute("src") === {entry}.data_uri);
                        return {{kind: "image", shown: Boolean(img), complete: Boolean(img && img.complete),
                                 width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0}};
                    }})()""", deadline, ready=lambda shown: shown["complete"])  # loaded, or broken: width 0
                else:
                    browser.evaluate(f'app.setView({{content: "html", contentPath: {entry}.data_uri, '
                                     f"resultPath: {json.dumps(path)}}})")
                    shown = browser.wait_for(f"""Array.from(document.querySelectorAll("iframe")).some(
                        (f) => f.getAttribute("src") === {entry}.data_uri)""", deadline)
                    walked["results"][path] = {"kind": results[path]["mime_type"], "shown": shown,
                                               "has_table": _has_table(results[path]["data_uri"])}
    return walked


def test_a_results_sidebar_shows_its_caption_before_the_job_parameters(report, chromium, tmp_path):
    """The sidebar of a result, as a reader opens it: its labels, then its caption (the description), and only
    then the rule and the job's parameters."""
    results = embedded(report.read_text(), "results")
    path = f"{RUN}/analysis/magnitude/{(DEFAULT['analysis']['magnitude'].get('backbones') or ['tiny_sd'])[0]}.png"
    caption_start = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", results[path]["caption"])).split()[:4])
    entry = f"results[{json.dumps(path)}]"
    with drawn_report(chromium, report, tmp_path / "profile") as browser:
        browser.evaluate(f'app.setView({{navbarMode: "resultinfo", content: "img", contentPath: {entry}.data_uri, '
                         f"resultPath: {json.dumps(path)}}})")
        # innerText as shown: the headings are drawn upper-case.
        text = browser.wait_for("document.querySelector('nav').innerText.toLowerCase()",
                                time.monotonic() + PAGE_DEADLINE_S,
                                ready=lambda now: "job parameters" in now and "description" in now)
    flat, start = " ".join(text.split()), caption_start.lower()
    assert "description" in flat and "job parameters" in flat and start in flat, flat[:500]
    assert flat.index("description") < flat.index(start) < flat.index("job parameters"), flat[:800]


def test_every_result_shows_in_the_browser(report, chromium, tmp_path):
    """Walk every section and result through the report's own app; every image must decode to a picture
    and every table page must hold a table."""
    text = report.read_text()
    results, categories = embedded(text, "results"), embedded(text, "categories")
    with drawn_report(chromium, report, tmp_path / "profile") as browser:
        walked = walk_results(browser, categories, results, time.monotonic() + WALK_DEADLINE_S)
    assert set(walked["results"]) == set(results)
    missing = {path: shown for path, shown in walked["results"].items()
               if not shown["shown"] or (shown["kind"] == "image" and not (shown["complete"] and shown["width"] > 0))
               or (shown["kind"] != "image" and not shown["has_table"])}
    assert not missing, f"results that did not show: {missing}"
    for category, subcategories in categories.items():
        for subcategory, paths in subcategories.items():
            menu = walked["menus"][f"{category} / {subcategory}"]
            for path in paths:  # each result is listed by its labels (or its file name)
                assert all(label in menu for label in _labels(results[path])), (category, subcategory, path)
