"""The files the library reads at run time, shipped inside the package (pyproject.toml's package-data), so
`dti` works from an installed wheel as from the checkout. Each file has this one home; the workflow reads
the same files (rules/common.smk, config/schema.yaml, the paper configs' subject_table).

- prompts/: the prompt sets a name in `prompt_sets` stands for (dti.prompts);
- subject.schema.yaml: one subject's schema and the naming rule (dti.subject_schema; config/schema.yaml
  refers to it);
- dreambooth_manifest.tsv: path, sha256 and size of every file of the pinned DreamBooth release
  (dti.dreambooth);
- subjects/dreambooth.tsv: the 30 DreamBooth subjects with their class words and the DTI authors'
  initialization phrases (the paper configs' subject_table; dti.tiny trains its small tokenizers on the
  class words).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_root = files(__name__)
# The readers open these as plain files (glob, sizes, file URIs): an import from a zip archive cannot serve.
if not isinstance(_root, Path):
    raise ImportError(f"dti's data files must be installed as files, not inside an archive: {_root}")
DATA_DIR: Path = _root
