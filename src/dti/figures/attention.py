"""Figure of the cross-attention maps (dti.analysis.attention): per method and token norm, the sampled
image of each prompt with the denoiser's attention to the learned token laid over it."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from dti.figures import image_axes, method_color, new_figure
from dti.figures.report import LABEL_PT, wrap_label
from dti.prompts import PLACEHOLDER
from dti.terms import display_name

CMAP = "inferno"
ALPHA = 0.6  # enough heat to read the map, enough image left to see what it lies on
COLORBAR_LABEL = "mean attention to the token"
CELL_IN = 1.45
LABEL_IN = 1.7
HEADER_CHARS = 18  # a 1.45-inch column holds about eighteen 9-pt characters
ROW_CHARS = 20


def row_label(method: str, scale: float | None, norm_ratio: float | None = None) -> str:
    """'DTI\\n(trained norm, 1 m)' or 'DTI\\nat 4 m': the method's display name and the token's norm."""
    name = wrap_label(display_name(method), ROW_CHARS, 2)
    if scale is None:
        return name + ("\n(trained norm)" if norm_ratio is None else f"\n(trained norm,\n{norm_ratio:.3g} m)")
    return f"{name}\nat {scale:g} m"


def attention_caption(*, steps: int | None = None, guidance_scale: float | None = None) -> str:
    """What each cell shows, in words a caption can take as is (the map of dti.analysis.attention)."""
    run = ""
    if steps is not None:
        run = f" of the {steps} denoising steps" + (f" (guidance scale {guidance_scale:g})"
                                                   if guidance_scale is not None else "")
    return ("Each cell: the sampled image with the denoiser's cross-attention to the learned token laid over it, "
            "i.e. the softmax probability each image position assigns to the token's text positions, averaged "
            "over attention heads, the token's vectors, every cross-attention layer (each resized to the "
            f"latent grid) and every one{run}, conditional branch only; one colour scale for all cells. "
            "Rows 'at k m': the token's vectors rescaled to k times the vocabulary's mean norm m, "
            "directions kept; 'trained norm': as trained.")


def _rows(cells: list[Mapping]) -> list[tuple[str, float | None]]:
    """(method, scale) pairs: methods in the registry's order (DTI first), the trained norm first, then
    the scales ascending."""
    from dti.methods import METHODS

    rank = {m: i for i, m in enumerate(METHODS)}
    pairs = {(c["method"], c.get("scale")) for c in cells}
    return sorted(pairs, key=lambda p: (rank.get(p[0], len(rank)), p[0], p[1] is not None, p[1] or 0.0))


def attention_grid(cells: Iterable[Mapping], *, title: str, prompts: Sequence[str] | None = None,
                   caption: str | None = None, cmap: str = CMAP, alpha: float = ALPHA):
    """Rows: (method, scale) pairs; columns: `prompts` (default: in the cells' first-seen order). Each cell the image with its
    map over it as a heat map; one colour bar, from 0 to the largest value of any map, for all.

    cells: mappings with method, scale (None for the trained norm), prompt (its label: the template, the
    placeholder slot shown as S*), image (uint8 [H, W, 3]), map (2-d, any size: stretched over the
    image) and optionally norm_ratio (the trained norm in m, for the row label). A missing cell is left
    blank. `caption` (e.g. attention_caption()) is printed under the grid."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    cells = list(cells)
    if not cells:
        raise ValueError("no attention maps to draw")
    rows = _rows(cells)
    prompts = list(dict.fromkeys(c["prompt"] for c in cells) if prompts is None else prompts)
    lookup = {(c["method"], c.get("scale"), c["prompt"]): c for c in cells}
    ratios = {(c["method"], c.get("scale")): c.get("norm_ratio") for c in cells}
    vmax = max(float(np.max(c["map"])) for c in cells) or 1.0
    norm = mcolors.Normalize(0.0, vmax)
    # Constrained layout makes room for the colour bar and the left labels without overlap.
    fig, axes = new_figure(CELL_IN * len(prompts) + LABEL_IN + 0.9, CELL_IN * len(rows) + 0.9 + 0.25 * bool(caption),
                           len(rows), len(prompts), layout="constrained")
    for r, (method, scale) in enumerate(rows):
        for c, prompt in enumerate(prompts):
            ax = axes[r][c]
            image_axes(ax)
            cell = lookup.get((method, scale, prompt))
            if cell is not None:
                image = np.asarray(cell["image"])
                height, width = image.shape[:2]
                ax.imshow(image)
                ax.imshow(np.asarray(cell["map"], dtype=float), cmap=cmap, norm=norm, alpha=alpha,
                          interpolation="bilinear", extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            if r == 0:
                ax.set_title(wrap_label(str(prompt).replace(PLACEHOLDER, "S*"), HEADER_CHARS, 3),
                             fontsize=LABEL_PT)
        label = axes[r][0]
        label.set_ylabel(row_label(method, scale, ratios[(method, scale)]), rotation=0, ha="right", va="center",
                         fontsize=LABEL_PT, labelpad=6, color=method_color(method))
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.8,
                       aspect=25, pad=0.02)
    bar.set_label(COLORBAR_LABEL, fontsize=LABEL_PT)
    fig.suptitle(title, fontsize=11)
    if caption:
        width_chars = int(18 * (CELL_IN * len(prompts) + LABEL_IN + 0.9))  # about 18 6.5-pt chars an inch
        fig.text(0.01, 0.0, "\n".join(textwrap.wrap(caption, max(width_chars, 60))), fontsize=6.5,
                 color="#666666", va="top")
    return fig
