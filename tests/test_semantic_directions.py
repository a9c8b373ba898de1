"""Semantic directions (dti.analysis.directions) on constructed vocabularies whose answers are known: PCA of
unit directions, projections that ignore the norm, nearest words by direction and by raw vector, readable
token text, and a vocabulary sample that its seed fixes. Numpy only: no model is built."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dti.analysis.directions import direction_projection, nearest_words, nearest_words_table
from dti.errors import DtiError
from dti.vocab import Vocabulary

D = 16


def _planar_vocabulary(n: int = 400, noise: float = 1e-3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(table, basis): n rows in the plane spanned by the two orthonormal rows of `basis` (plus a little
    noise off it), at angles spread over the whole circle and norms between 0.5 and 2; row 3 is zero (an
    unused id)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(D, 2)))[0].T  # [2, D], orthonormal
    angles = rng.uniform(0, 2 * np.pi, n)
    norms = rng.uniform(0.5, 2.0, n)
    table = (norms[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)) @ basis
    table += noise * rng.normal(size=table.shape)
    table[3] = 0
    return table.astype(np.float32), basis


def _strings(n: int) -> list[str]:
    return [f"w{i}</w>" for i in range(n)]


def test_planar_vocabulary_is_explained_by_two_components_in_its_own_plane():
    table, basis = _planar_vocabulary()
    proj = direction_projection(table, {"dti": table[10]}, sample=None)
    assert proj.explained_variance_ratio.shape == (2,)
    assert proj.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-4)
    # The two axes span the vocabulary's plane: each lies in it (its projection on the basis has length 1).
    np.testing.assert_allclose(np.linalg.norm(proj.components @ basis.T, axis=1), 1.0, atol=1e-4)
    vocab = proj.points[proj.points["kind"] == "vocabulary"]
    assert len(vocab) == len(table) - 1 and 3 not in set(vocab["token_id"])  # the zero row has no direction
    assert (vocab["in_plane"] > 0.999).all()
    # Directions on a circle about the origin: the projected points keep their distances to one another.
    kept = table[vocab["token_id"].to_numpy()]
    units = kept / np.linalg.norm(kept, axis=1, keepdims=True)
    drawn = vocab[["pc1", "pc2"]].to_numpy()
    for a, b in [(0, 1), (5, 50), (100, 300)]:
        expected = np.linalg.norm(units[a] - units[b])
        assert np.linalg.norm(drawn[a] - drawn[b]) == pytest.approx(expected, abs=1e-3)


def test_a_token_lands_on_its_vocabulary_row_whatever_its_norm():
    table, _ = _planar_vocabulary()
    proj = direction_projection(table, {"same": table[7], "ti": 10 * table[7], "dti": [table[7], -table[9]]},
                                sample=None)
    row7 = proj.points[proj.points["token_id"] == 7][["pc1", "pc2"]].to_numpy()[0]
    row9 = proj.points[proj.points["token_id"] == 9][["pc1", "pc2"]].to_numpy()[0]
    tokens = proj.points[proj.points["kind"] == "token"]
    for label, vector in [("same", 0), ("ti", 0), ("dti", 0)]:
        hit = tokens[(tokens["label"] == label) & (tokens["vector"] == vector)]
        np.testing.assert_allclose(hit[["pc1", "pc2"]].to_numpy()[0], row7, atol=1e-9)
    # The projection discards the norm and says so in its own column.
    ti = tokens[tokens["label"] == "ti"]["norm"].iloc[0]
    assert ti == pytest.approx(10 * np.linalg.norm(table[7].astype(np.float64)))
    # -row9 is the opposite direction: on the circle's far side, mirrored through the mean direction.
    mean2 = proj.mean @ proj.components.T
    opposite = tokens[(tokens["label"] == "dti") & (tokens["vector"] == 1)][["pc1", "pc2"]].to_numpy()[0]
    np.testing.assert_allclose(opposite + mean2, -(row9 + mean2), atol=1e-6)


def test_fit_on_tokens_spans_the_tokens_and_is_refused_with_too_few():
    table, _ = _planar_vocabulary()
    rng = np.random.default_rng(1)
    tokens = {f"t{i}": rng.normal(size=D) for i in range(6)}
    proj = direction_projection(table, tokens, fit_on="tokens", sample=10)
    on_vocab = direction_projection(table, tokens, sample=10)
    # Fit on six random directions, two axes keep much more of the tokens' spread than the vocabulary's
    # plane does, which is the exaggeration the vocabulary fit avoids.
    share = proj.points[proj.points["kind"] == "token"]["in_plane"].mean()
    assert share > on_vocab.points[on_vocab.points["kind"] == "token"]["in_plane"].mean()
    with pytest.raises(DtiError, match="components need more than 2"):
        direction_projection(table, {"one": table[1], "two": table[2]}, fit_on="tokens")
    with pytest.raises(DtiError, match="fit_on"):
        direction_projection(table, tokens, fit_on="both")


def test_bad_tokens_are_refused_naming_the_token():
    table, _ = _planar_vocabulary()
    with pytest.raises(DtiError, match="'short'.*width 16"):
        direction_projection(table, {"short": np.ones(D - 1)})
    with pytest.raises(DtiError, match="'z': vector 1 is zero"):
        direction_projection(table, {"z": np.stack([np.ones(D), np.zeros(D)])})
    with pytest.raises(DtiError, match="'nan'"):
        direction_projection(table, {"nan": np.full(D, np.nan)})


def test_vocabulary_sample_is_fixed_by_its_seed():
    table, _ = _planar_vocabulary()

    def ids(seed):
        proj = direction_projection(table, {"dti": table[0]}, sample=50, seed=seed)
        return proj.points[proj.points["kind"] == "vocabulary"]["token_id"].to_list()

    first = ids(0)
    assert len(first) == 50 and first == sorted(first) and len(set(first)) == 50 and 3 not in first
    assert ids(0) == first
    assert ids(1) != first
    # Ids asked for are drawn whatever the sample; a zero row or an id past the table is refused.
    proj = direction_projection(table, {"dti": table[0]}, sample=50, seed=0, include_ids=[7, 399])
    drawn = proj.points[proj.points["kind"] == "vocabulary"]["token_id"].to_list()
    assert set(drawn) == set(first) | {7, 399} and drawn == sorted(drawn)
    with pytest.raises(DtiError, match=r"include_ids: \[3, 400\]"):
        direction_projection(table, {"dti": table[0]}, sample=50, include_ids=[7, 3, 400])
    # The axes are fit on the whole vocabulary, so the sample moves no point.
    a = direction_projection(table, {"dti": table[0]}, sample=50, seed=0)
    b = direction_projection(table, {"dti": table[0]}, sample=None)
    np.testing.assert_array_equal(a.components, b.components)
    merged = a.points.merge(b.points, on="token_id", suffixes=("_a", "_b"))
    np.testing.assert_allclose(merged["pc1_a"], merged["pc1_b"])


def _nearest_vocabulary() -> tuple[np.ndarray, list[str]]:
    """Row 1 points exactly along x with norm 1; row 2 is 20 degrees off x but has norm ~4.6, so a token at
    5x row 1 is nearer row 2 as a raw vector and row 1 by direction."""
    table = np.zeros((6, D), np.float32)
    table[1, 0] = 1.0  # "cat"
    table[2, :2] = [4.5, 1.0]  # "loud" (a large-norm word)
    table[3, :2] = [0.0, 1.0]  # "dog" piece, not word-final
    table[4, :2] = [-1.0, 0.0]
    table[5, :3] = [0.3, 0.3, 1.0]
    strings = ["<|startoftext|>", "cat</w>", "loud</w>", "dog", "\u0120caf\u00c3\u00a9</w>", "sky</w>"]
    return table, strings


def test_nearest_by_direction_ignores_the_norm_and_by_vector_does_not():
    table, strings = _nearest_vocabulary()
    token = 5 * table[1]
    direction = nearest_words(table, strings, token, k=3, by="direction")
    assert list(direction.columns) == ["vector", "by", "rank", "token", "cosine"]
    assert direction.iloc[0][["rank", "token"]].to_list() == [1, "cat"]
    assert direction.iloc[0]["cosine"] == pytest.approx(1.0)
    assert direction["rank"].to_list() == [1, 2, 3]
    vector = nearest_words(table, strings, token, k=3, by="vector")
    assert vector.iloc[0]["token"] == "loud"  # |5x - (4.5, 1)| = 1.12 < |5x - x| = 4
    assert vector.iloc[0]["distance"] == pytest.approx(np.hypot(0.5, 1.0), rel=1e-6)
    assert vector.iloc[1]["token"] == "cat" and vector.iloc[1]["distance"] == pytest.approx(4.0, rel=1e-6)
    assert vector.iloc[1]["cosine"] == pytest.approx(1.0)
    assert (np.diff(vector["distance"]) >= 0).all()
    # At the vocabulary's own norm the two rankings agree.
    assert nearest_words(table, strings, table[1], k=1, by="vector")["token"].to_list() == ["cat"]


def test_nearest_words_decode_clip_tokens_and_agree_with_dti_inspect():
    from dti.inspect import nearest_tokens

    table, strings = _nearest_vocabulary()
    rows = np.stack([table[3], table[4], table[5]])
    found = nearest_words(table, strings, rows, k=1)
    assert found["token"].to_list() == ["dog-", " café", "sky"]  # </w> stripped, bytes decoded
    assert not found["token"].str.contains("</w>").any()
    vocab = Vocabulary("clip_l", table, strings)
    expected = nearest_tokens(rows, vocab, 2)
    again = nearest_words(vocab, vocab, rows, k=2)
    pairs = list(zip(again["token"], again["cosine"], strict=True))
    assert pairs == [hit for hits in expected for hit in hits]
    # A transformers-style tokenizer gives the same text.
    class Tokenizer:
        def convert_ids_to_tokens(self, ids):
            return [strings[i] for i in ids]

    assert nearest_words(table, Tokenizer(), rows, k=1)["token"].to_list() == found["token"].to_list()
    with pytest.raises(DtiError, match="by must be"):
        nearest_words(table, strings, rows, by="norm")
    with pytest.raises(DtiError, match="2 token strings"):
        nearest_words(table, strings[:2], rows)


def test_nearest_words_table_lists_both_rankings_per_token():
    table, strings = _nearest_vocabulary()
    found = nearest_words_table(table, strings, {"ti": 5 * table[1], "dti": [table[1], table[5]]}, k=2)
    counts = found.groupby(["label", "by"]).size().to_dict()
    assert counts == {("dti", "direction"): 4, ("dti", "vector"): 4,
                      ("ti", "direction"): 2, ("ti", "vector"): 2}
    assert found[found["by"] == "direction"]["distance"].isna().all()
    # In the order the tokens were given, each token's vectors numbered from 0.
    assert list(dict.fromkeys(found["label"])) == ["ti", "dti"]
    assert found[found["label"] == "dti"]["vector"].drop_duplicates().to_list() == [0, 1]
    sky = found[(found["label"] == "dti") & (found["vector"] == 1) & (found["rank"] == 1)]
    assert sky["token"].to_list() == ["sky", "sky"]
    top = found[(found["rank"] == 1) & (found["label"] == "ti")].set_index("by")["token"]
    assert top.to_dict() == {"direction": "cat", "vector": "loud"}
    assert isinstance(found, pd.DataFrame)


def test_projection_gives_vocabulary_points_their_text():
    table, strings = _nearest_vocabulary()
    big = np.concatenate([table, np.random.default_rng(0).normal(size=(20, D)).astype(np.float32)])
    names = strings + [f"x{i}</w>" for i in range(20)]
    proj = direction_projection(big, {"dti": table[1]}, sample=None, tokenizer=names)
    vocab = proj.points[proj.points["kind"] == "vocabulary"].set_index("token_id")
    assert vocab.loc[1, "token"] == "cat" and vocab.loc[3, "token"] == "dog-"
    assert 0 not in vocab.index  # row 0 is zero here


def test_figure_draws_tokens_and_initializer_and_says_what_it_shows(tmp_path):
    from dti.figures import save_figure
    from dti.figures.directions import directions_caption, directions_figure

    table, _ = _planar_vocabulary()
    names = [f"w{i}</w>" for i in range(len(table))]
    tokens = {"initializer/w7": table[7], "dti/toy": table[8], "ti/toy": 30 * table[9]}
    proj = direction_projection(table, tokens, sample=100, tokenizer=names, include_ids=[5])
    caption = directions_caption(proj)
    assert "vocabulary's directions" in caption and "DTI (toy)" in caption and "initializer (w7)" in caption
    fig = directions_figure(proj, title="toy", words=["w5"])
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("PC1 (") and ax.get_xlabel().endswith("% of variance)")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["vocabulary (101 tokens)", "initializer (w7)", "DTI (toy)", "TI (toy)"]
    assert "w5" in [t.get_text() for t in ax.texts]
    save_figure(fig, tmp_path / "d.png", tmp_path / "d.pdf")
    assert (tmp_path / "d.png").stat().st_size > 0 and (tmp_path / "d.pdf").stat().st_size > 0
