"""The paper's findings beyond the score table: fidelity probes, norm and direction analysis, the
magnitude sweep. Library code only; the workflow's rules call it through thin scripts."""


def pick_backbones(value, known, where: str) -> list[str]:
    """The backbones an analysis runs on: all of them (None), or the named ones, each checked."""
    from dti.errors import DtiError

    if value is None:
        return list(known)
    if not value:
        raise DtiError(f"{where}: the list is empty; leave it out (or null) for every backbone")
    for i, name in enumerate(value):
        if name not in known:
            raise DtiError(f"{where}[{i}]: unknown backbone {name!r}; known: {sorted(known)}")
    return list(dict.fromkeys(value))
