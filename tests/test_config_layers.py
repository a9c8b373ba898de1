"""Config layers (`extends:`): merged as Snakemake merges --configfile files; bad chains are one-line errors."""

from __future__ import annotations

import pytest
import yaml

from dti.config_layers import merged, resolve_extends
from dti.errors import DtiError


def test_merge_is_recursive_for_mappings_and_replaces_everything_else():
    base = {"methods": {"dti": {"lr": 0.04, "kappa": 1e-4}, "ti": {"lr": 0.02}}, "seeds": [0, 1, 2, 3], "a": 1}
    layer = {"methods": {"dti": {"kappa": 5e-5}, "dti_m_max": {}}, "seeds": [0]}
    assert merged(base, layer) == {"methods": {"dti": {"lr": 0.04, "kappa": 5e-5}, "ti": {"lr": 0.02},
                                               "dti_m_max": {}}, "seeds": [0], "a": 1}
    assert base["methods"]["dti"]["kappa"] == 1e-4  # the base is not changed


def test_a_chain_of_layers_resolves_in_order(tmp_path):
    (tmp_path / "root.yaml").write_text(yaml.safe_dump({"run_name": "root", "seeds": [0, 1], "x": {"a": 1}}))
    (tmp_path / "mid.yaml").write_text(yaml.safe_dump({"extends": str(tmp_path / "root.yaml"), "x": {"b": 2}}))
    config = resolve_extends({"extends": "mid.yaml", "run_name": "top"}, tmp_path)  # relative to basedir
    assert config == {"run_name": "top", "seeds": [0, 1], "x": {"a": 1, "b": 2}}
    assert resolve_extends({"seeds": [3]}, tmp_path) == {"seeds": [3]}


@pytest.mark.parametrize("case,files,extends,message", [
    ("missing", {}, "nowhere.yaml", "config file not found: nowhere.yaml"),
    ("cycle", {"a.yaml": {"extends": "b.yaml"}, "b.yaml": {"extends": "a.yaml"}}, "a.yaml", "extends itself"),
    ("self", {"a.yaml": {"extends": "a.yaml"}}, "a.yaml", "extends itself"),
    ("not a mapping", {"a.yaml": [1, 2]}, "a.yaml", "is not a mapping"),
    ("not a path", {}, 3, "must be the path of a config file"),
    ("broken yaml", {"a.yaml": "key: [unclosed"}, "a.yaml", "cannot read"),
])
def test_bad_chains_are_one_line_errors(tmp_path, case, files, extends, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(DtiError, match=message) as err:
        resolve_extends({"extends": extends}, tmp_path)
    assert "\n" not in str(err.value)
