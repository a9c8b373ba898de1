"""The house: the library's import graph has no loop, counting every arrow a run can take (imports inside
functions, and modules named by string for a lazy import: a registry's "module:Class"), and what the
workflow imports to plan stays free of torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MODULE_STRING = re.compile(r"dti(\.\w+)+(:\w+)?")


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the dti modules it may import}: `import`/`from` statements anywhere in it (relative ones
    resolved), string constants naming a dti module (lazy imports by name), and the packages above each
    target (importing dti.a.b runs dti/a/__init__.py first)."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {owner(a.name) for a in node.names if a.name.startswith("dti")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                if base.startswith("dti"):
                    targets |= {owner(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else owner(base)
                                for a in node.names}
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.fullmatch(node.value):
                targets.add(owner(node.value.split(":")[0]))
        for target in list(targets):
            parts = (target or "").split(".")
            targets |= {".".join(parts[:k]) for k in range(2, len(parts)) if ".".join(parts[:k]) in modules}
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_loop_through_a_lazy_import_by_name():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_library_has_no_import_loop():
    graph = import_graph()
    assert len(graph) > 50 and "dti.train" in graph["dti.cli"] | {m for t in graph["dti.cli"] for m in graph[t]}
    loops = cycles(graph)
    details = [{m: sorted(graph[m] & set(loop)) for m in loop} for loop in loops]
    assert loops == [], details


def test_what_planning_imports_is_free_of_torch():
    """The modules rules/common.smk and the Snakefile import, and the registries they read."""
    smk = "\n".join(p.read_text() for p in (SRC.parent / "rules").glob("*.smk")) + (SRC.parent / "Snakefile").read_text()
    planned = sorted(set(re.findall(r"^\s*(?:from|import) (dti(?:\.\w+)*)", smk, re.M)))
    assert "dti.benchmark_config" in planned and "dti.methods" in planned
    code = f"import sys; import {', '.join(planned)}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SRC.parent)
    assert out.stdout.strip() == "[]", planned
