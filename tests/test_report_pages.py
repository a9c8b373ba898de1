"""The report's table pages (dti.report.write_html_tables): each result table as its LaTeX shows it, under the
LaTeX table's own caption, with the best values marked, and the summary first.

The tables come from the real aggregation (dti.pipeline.aggregate) of constructed scores whose means are known,
so the expected best cells are derived from the numbers made here, not from the tables."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from dti.latex import _NORM_HEADERS, DIGITS, KEY_LABELS
from dti.tables import _COST_HEADERS, STAT_COLUMNS, caption_for, table_names
from dti.terms import display_name

DINO = "timm:vit_small_patch16_224.dino@random"  # underscores: escaped in the LaTeX caption, plain on the page
CLIP_T = "open_clip:ViT-B-32@openai"
MODELS = {"dino": DINO, "clip_t": CLIP_T}
STEP, N_BOOT = 400, 50
SUBJECTS = {"can": "object", "clock": "object", "dog_2": "live"}
METHODS = ("dti", "ti", "crossinit", "dti_m_max")  # dti_m_max: an ablation of DTI, so an ablation table too
# (backbone, metric) -> {method: its mean over subjects}. On sdxl_base, DINO: DTI and TI differ only past the
# printed decimals, so both are best; everywhere else one method is.
MEANS = {
    ("sdxl_base", "dino"): {"dti": 0.6001, "ti": 0.6004, "crossinit": 0.55, "dti_m_max": 0.50},
    ("sdxl_base", "clip_t"): {"dti": 0.30, "ti": 0.32, "crossinit": 0.31, "dti_m_max": 0.25},
    ("sana", "dino"): {"dti": 0.70, "ti": 0.60, "crossinit": 0.72, "dti_m_max": 0.65},
    ("sana", "clip_t"): {"dti": 0.33, "ti": 0.28, "crossinit": 0.29, "dti_m_max": 0.30},
}
# Each subject's offset from the method's mean (they cancel over the subjects): CrossInit's subjects are far
# apart, so per subject the best method can differ from the summary's (sana, DINO: DTI on clock, not on can, a
# subject of the same kind).
OFFSETS = {m: {"can": 0.05, "clock": -0.06, "dog_2": 0.01} if m == "crossinit" else {"can": 0.01, "clock": 0.0,
                                                                                        "dog_2": -0.01}
           for m in METHODS}
NORMS = {"dti": 0.4, "ti": 2.0, "crossinit": 1.2, "dti_m_max": 0.8}  # vocabulary mean 0.4
PAGE_ORDER = ["summary", "by_prompt_set", "by_kind", "per_subject", "per_prompt", "over_steps", "norms", "cost",
              "ablation", "interpolation"]


def value(backbone: str, method: str, subject: str, metric: str) -> float:
    return MEANS[(backbone, metric)][method] + OFFSETS[method][subject]


def score_rows() -> pd.DataFrame:
    """Two prompts and one seed per subject, each image scored with every metric."""
    return pd.DataFrame([
        dict(backbone=b, method=m, step=STEP, subject=s, subject_kind=kind, prompt_set="object", prompt_id=p,
             seed=0, image=f"{s}/{p}.png", metric=metric, metric_model=MODELS[metric], value=value(b, m, s, metric))
        for (b, metric) in MEANS for m in METHODS for s, kind in SUBJECTS.items() for p in (0, 1)])


@pytest.fixture(scope="module")
def tables_dir(tmp_path_factory) -> Path:
    """dti.pipeline.aggregate on the constructed scores and a run.json per run: tables/*.parquet and *.tex."""
    from dti.io import write_parquet
    from dti.pipeline import aggregate

    root = tmp_path_factory.mktemp("aggregate")
    write_parquet(root / "scores.parquet", score_rows())
    records = []
    for backbone in ("sdxl_base", "sana"):
        for method in METHODS:
            for subject in SUBJECTS:
                run = {"method": method, "steps": STEP, "resumed_from": 0, "seconds": 80.0,
                       "cost": {"token_parameters": 2048, "adapter_parameters": 0, "peak_gpu_memory_bytes": None},
                       "norms": [{"encoder": "clip_l", "vector": 0, "norm": NORMS[method], "vocab_norm_mean": 0.4,
                                  "vocab_norm_std": 0.05}]}
                path = root / "train" / backbone / method / subject / "run.json"
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps(run))
                records.append({"path": str(path), "backbone": backbone, "method": method, "subject": subject})
    aggregate([str(root / "scores.parquet")], records, str(root / "tables"), n_boot=N_BOOT, seed=0)
    return root / "tables"


@pytest.fixture(scope="module")
def pages(tables_dir, tmp_path_factory) -> dict[str, Page]:
    from dti.report import write_html_tables

    out = tmp_path_factory.mktemp("pages")
    names = sorted(p.stem for p in tables_dir.glob("*.parquet"))
    write_html_tables({n: str(tables_dir / f"{n}.parquet") for n in names}, str(out))
    return {n: Page((out / f"{n}.html").read_text()) for n in names}


class Page(HTMLParser):
    """What a page shows: its paragraphs by class, the table's headers, and per body row its cells as
    (text, marked best: a "best" cell whose text is all in <strong>, title)."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.paragraphs, self.headers, self.rows = text, {}, [], []
        self._in, self._cell, self._p, self._strong = None, None, None, ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "p":
            self._p = [attrs.get("class", ""), ""]
        elif tag == "tr":
            self._row = []
        elif tag in ("th", "td"):
            self._cell = {"text": "", "classes": attrs.get("class", "").split(), "title": attrs.get("title"),
                          "strong": ""}
        elif tag == "strong" and self._cell is not None:
            self._in = "strong"

    def handle_endtag(self, tag):
        if tag == "p" and self._p:
            self.paragraphs[self._p[0]] = self._p[1]
            self._p = None
        elif tag == "strong":
            self._in = None
        elif tag == "th":
            self.headers.append(self._cell["text"])
            self._cell = None
        elif tag == "td":
            cell = self._cell
            self._row.append((cell["text"], "best" in cell["classes"] and cell["strong"] == cell["text"] != "",
                              cell["title"]))
            self._cell = None
        elif tag == "tr" and self._row:
            self.rows.append(self._row)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
            if self._in == "strong":
                self._cell["strong"] += data
        elif self._p is not None:
            self._p[1] += data


def shown(page: Page, n_keys: int) -> dict[tuple, dict[str, tuple]]:
    """{row's key cells: {header: (text, best, title)}} of a page whose first n_keys columns are keys."""
    return {tuple(c[0] for c in row[:n_keys]): dict(zip(page.headers[n_keys:], row[n_keys:], strict=True))
            for row in page.rows}


def expected_best(blocks: dict[tuple, dict[str, float]]) -> set[tuple]:
    """{(block..., method display name)}: in each block of more than one method, those whose mean, at the printed
    decimals, is the highest."""
    best = set()
    for block, means in blocks.items():
        printed = {m: round(v, DIGITS) for m, v in means.items()}
        if len(printed) > 1:
            best |= {(*block, display_name(m)) for m, v in printed.items() if v == max(printed.values())}
    return best


METRIC_HEADERS = {m: display_name(m) for m in MODELS}


def test_summary_page_shows_display_names_and_marks_the_best_method_per_backbone(pages, tables_dir):
    page = pages["summary"]
    keys = [KEY_LABELS[k] for k in ("backbone", "prompt_set", "step", "method")]
    assert page.headers == [*keys, METRIC_HEADERS["dino"], METRIC_HEADERS["clip_t"]]
    raw = {"backbone", "prompt_set", "step", "method", "metric", "metric_model", *MODELS, *STAT_COLUMNS}
    assert not raw & set(page.headers)
    cells = shown(page, len(keys))
    assert {key[3] for key in cells} == {display_name(m) for m in METHODS}  # no method by its key
    assert not {"dti", "ti", "crossinit", "dti_m_max"} & {key[3] for key in cells}
    marked = {(key[0], metric, key[3]) for key, row in cells.items() for metric, (_, best, _) in row.items() if best}
    expected = expected_best({(b, METRIC_HEADERS[metric]): means for (b, metric), means in MEANS.items()})
    assert marked == expected
    assert ("sdxl_base", "DINO", "DTI") in marked and ("sdxl_base", "DINO", "TI") in marked  # the printed tie
    assert page.text.count("<strong>") == len(expected) + 1  # and the legend's "Bold"
    # Cells as the LaTeX's: mean ± half the interval's width; the exact bounds on hover.
    table = pd.read_parquet(tables_dir / "summary.parquet")
    row = table[(table["backbone"] == "sana") & (table["method"] == "ti") & (table["metric"] == "dino")].iloc[0]
    text, _, title = cells[("sana", "object", str(STEP), display_name("ti"))][METRIC_HEADERS["dino"]]
    assert text == f"{row['mean']:.3f} ± {(row['ci_high'] - row['ci_low']) / 2:.3f}"
    assert title == f"95% interval [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    legend = page.paragraphs["legend"]
    assert legend.startswith("Bold: the best (highest) mean") and "backbone, prompt set and step" in legend


def test_per_subject_page_marks_the_best_method_per_subject(pages):
    page = pages["per_subject"]
    keys = [KEY_LABELS[k] for k in ("backbone", "prompt_set", "step", "method", "subject", "subject_kind")]
    assert page.headers == [*keys, METRIC_HEADERS["dino"], METRIC_HEADERS["clip_t"]]
    cells = shown(page, len(keys))
    marked = {(key[0], key[4], metric, key[3]) for key, row in cells.items()
              for metric, (_, best, _) in row.items() if best}
    blocks = {(b, s, METRIC_HEADERS[metric]): {m: value(b, m, s, metric) for m in METHODS}
              for (b, metric) in MEANS for s in SUBJECTS}
    assert marked == expected_best(blocks)
    assert ("sana", "clock", "DINO", "DTI") in marked  # not the summary's CrossInit: per subject, it differs
    assert ("sana", "can", "DINO", "CrossInit") in marked
    assert cells[("sana", "object", str(STEP), "CrossInit", "clock", "object")]["DINO"][0] == f"{0.72 - 0.06:.3f}"


def test_a_backbone_with_one_method_marks_nothing(tmp_path):
    from dti.report import table_html
    from dti.tables import build_tables

    scores = score_rows()
    summary = build_tables(scores[scores["method"] == "dti"], None, n_boot=N_BOOT)["summary"]
    page = Page(table_html(summary, title="summary"))
    assert len(page.rows) == 2 and not any(best for row in page.rows for _, best, _ in row)
    assert "<strong>" not in page.text.replace("<strong>Bold</strong>", "")


@pytest.mark.parametrize("name", ["norms", "cost"])
def test_tables_that_are_no_scores_mark_nothing(pages, name):
    page = pages[name]
    assert "<strong>" not in page.text and "legend" not in page.paragraphs
    assert not any(best for row in page.rows for _, best, _ in row)


def test_norm_and_cost_headers_are_the_latex_ones_in_plain_text(pages, tables_dir):
    norms = pages["norms"]
    assert norms.headers == [*(KEY_LABELS[k] for k in ("backbone", "method", "step", "encoder")), "Learned mean",
                             "Min", "Max", "Vocab. mean ± std", "Ratio"]
    assert len(_NORM_HEADERS) == 5
    table = pd.read_parquet(tables_dir / "norms.parquet")
    assert not set(table.columns) & set(norms.headers)
    ti = shown(norms, 4)[("sana", "TI", str(STEP), "clip_l")]
    assert ti["Vocab. mean ± std"][0] == "0.400 ± 0.050" and ti["Ratio"][0] == f"{2.0 / 0.4:.3f}"
    cost = pages["cost"]
    assert cost.headers == [KEY_LABELS["backbone"], KEY_LABELS["method"], *_COST_HEADERS.values(),
                            METRIC_HEADERS["dino"], METRIC_HEADERS["clip_t"]]
    row = shown(cost, 2)[("sana", "DTI")]
    assert row["Token"][0] == "2,048" and row["Peak GiB"][0] == "--" and row["DINO"][0] == "0.700"
    for page in pages.values():  # no LaTeX left in any header
        assert not any(ch in header for header in page.headers for ch in "\\$")


def test_ablation_page_never_marks_the_norm_ratio(pages):
    page = pages["ablation"]
    ratio = display_name("norm_ratio")
    assert page.headers[-1] == ratio and "norm_ratio" not in page.headers
    cells = shown(page, 4)
    assert {key[3] for key in cells} == {"DTI", "DTI (m = max)"}
    assert not any(row[ratio][1] for row in cells.values())
    marked = {(key[0], metric, key[3]) for key, row in cells.items() for metric, (_, best, _) in row.items() if best}
    ablated = {(b, METRIC_HEADERS[metric]): {m: v for m, v in means.items() if m in ("dti", "dti_m_max")}
               for (b, metric), means in MEANS.items()}
    assert marked == expected_best(ablated)
    assert f"{ratio}: no score, never bold." in page.paragraphs["legend"]


def test_every_page_marks_as_many_cells_as_its_latex_bolds(pages, tables_dir):
    for name, page in pages.items():
        marked = sum(best for row in page.rows for _, best, _ in row)
        assert marked == (tables_dir / f"{name}.tex").read_text().count("\\textbf{"), name
    assert sum(best for row in pages["over_steps"].rows for _, best, _ in row) > 0


def test_every_page_has_its_latex_caption(pages, tables_dir):
    scores = score_rows()
    assert set(pages) == set(table_names(METHODS))
    for name, page in pages.items():
        table = pd.read_parquet(tables_dir / f"{name}.parquet")
        caption = caption_for(scores, name, n_boot=N_BOOT, table=table)
        assert page.paragraphs["caption"] == caption, name
    # Each its own: the norms' caption promises no interval, the summary's does; the model keeps its "_".
    assert "bootstrap" not in pages["norms"].paragraphs["caption"]
    assert "bootstrap" in pages["summary"].paragraphs["caption"] and DINO in pages["summary"].paragraphs["caption"]
    assert len({page.paragraphs["caption"] for page in pages.values()}) == len(pages)


def test_interpolation_page_has_its_latex_headers_and_caption(tmp_path):
    from dti.analysis.interpolation import interpolation_tables, summary_latex
    from dti.io import write_parquet
    from dti.report import latex_caption, write_html_tables

    blends = pd.DataFrame([{"backbone": "tiny_sd", "pair": "a+b", "method": m, "scheme": "slerp", "t": t,
                            "prompt_id": 0, "seed": 0, "image": f"{m}{t}.png", "sim_a": 1 - t, "sim_b": t,
                            "text": 0.3, "norm_ratio": 1.0, "image_metric": "dino (timm:x_y@random)",
                            "text_metric": "clip_t (open_clip:ViT-B-32@random)"}
                           for m in ("dti", "ti") for t in (0.0, 0.5, 1.0)])
    summary = interpolation_tables(blends)["summary"]
    write_parquet(tmp_path / "summary.parquet", summary)
    tex = summary_latex(summary)
    (tmp_path / "summary.tex").write_text(tex)
    write_html_tables({"interpolation": str(tmp_path / "summary.parquet")}, str(tmp_path / "out"),
                      notes={"interpolation": "a note"})
    page = Page((tmp_path / "out" / "interpolation.html").read_text())
    assert page.headers == ["Backbone", "Method", "Path", "Sim. A @0 ↑", "Sim. B @1 ↑", "Max jump ↓", "Mono. A ↑",
                            "Mono. B ↑", "Text ↑", "Text dip ↓", "|e(0.5)|/m"]
    caption = page.paragraphs["caption"]
    assert caption == latex_caption(tex) and caption.startswith("Concept interpolation: mean over pairs")
    assert "dino (timm:x_y@random)" in caption and "\\" not in caption and "$" not in caption
    assert "a note" not in page.text  # a table with a LaTeX caption shows that, not its note
    assert {row[1][0] for row in page.rows} == {"DTI", "TI"}


def test_a_table_without_latex_shows_its_note_and_a_latex_file_without_caption_fails(tmp_path):
    from dti.errors import DtiError
    from dti.io import write_parquet
    from dti.report import write_html_tables

    write_parquet(tmp_path / "extra.parquet", pd.DataFrame({"backbone": ["sd"], "method": ["dti"], "x": [0.5]}))
    write_html_tables({"extra": str(tmp_path / "extra.parquet")}, str(tmp_path / "out"), notes={"extra": "a <note>"})
    page = Page((tmp_path / "out" / "extra.html").read_text())
    assert page.paragraphs[""] == "a <note>" and "caption" not in page.paragraphs
    assert page.headers == ["Backbone", "Method", "x"] and page.rows == [[("sd", False, None), ("DTI", False, None),
                                                                         ("0.500", False, None)]]
    (tmp_path / "extra.tex").write_text("\\begin{table}\\end{table}\n")
    with pytest.raises(DtiError, match="caption"):
        write_html_tables({"extra": str(tmp_path / "extra.parquet")}, str(tmp_path / "out"))


def test_latex_text_undoes_the_escaping():
    from dti.latex import escape
    from dti.report import latex_caption, latex_text

    text = "a_b & 95% {x} $5 #1 ~^ \\ ± end"
    assert latex_text(escape(text)) == text
    assert latex_caption(f"\\caption{{{escape(text)}}}\n\\label{{tab:x}}") == text


# --- the order of the pages ------------------------------------------------------------------------------------
def table_pages(methods, *, interpolation: bool) -> dict[str, str]:
    """rules/common_report.smk's table_pages() (plain Python: functions and assignments only), on stubs."""
    namespace = {"run_path": lambda path: f"results/runs/r/{path}", "table_names": table_names,
                 "METHODS": {m: {} for m in methods}, "PAIRS": {"a+b": None} if interpolation else {},
                 "INTERPOLATION_BACKBONES": ["sd"] if interpolation else []}
    source = Path(__file__).parents[1] / "rules" / "common_report.smk"
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    return namespace["table_pages"]()


def test_the_summary_comes_first_then_the_reading_order():
    pages = table_pages(METHODS, interpolation=True)
    assert list(pages) == PAGE_ORDER
    assert pages["summary"] == "results/runs/r/tables/summary.parquet"
    assert pages["interpolation"] == "results/runs/r/interpolation/summary.parquet"
    assert list(table_pages(["dti", "ti"], interpolation=False)) == [n for n in PAGE_ORDER
                                                                     if n not in ("ablation", "interpolation")]
    # The report lists a section's results by their labels' text: report_tables numbers them in this order.
    rule = (Path(__file__).parents[1] / "rules" / "report.smk").read_text().split("rule report_tables:")[1]
    rule = rule.split("\nrule ")[0]
    assert "for number, name in enumerate(table_pages(), start=1)" in rule
    labels = [eval(re.search(r"labels=(\{.*\}),\n", rule).group(1), {}, {"number": number, "name": name})["table"]
              for number, name in enumerate(pages, start=1)]
    assert sorted(labels) == labels and labels[0] == "01 summary"
    assert all(name.replace("_", " ") in label for name, label in zip(pages, labels, strict=True))
