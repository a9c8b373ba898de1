"""Reading the YAML (and JSON) files a user hands the workflow, bounded and strict.

A config file, every config it `extends`, is read here before anything validates it:
- its size: at most MAX_FILE_BYTES (read at most that many bytes, whatever the file system says);
- its expanded size: YAML aliases repeat what they point to, so a few kilobytes of `&a [x, x, ...]`,
  `&b [*a, *a, ...]`, ... stand for billions of values, and anything that walks the config (Snakemake's
  validation, a deep copy) runs for minutes and grows without bound. The values are counted as the file
  is composed, each alias as the size of what it repeats, and reading stops past MAX_NODES;
- its depth: at most MAX_DEPTH nested levels (the parser recurses per level);
- a key given twice in one mapping: YAML keeps the last one silently; here it is an error naming the file,
  the key and both lines.
Every problem is a one-line DtiError naming the file. `check_tree` bounds a value already in memory the
same way (the config Snakemake loaded and merged, a JSON file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from dti.errors import DtiError

MAX_FILE_BYTES = 10 * 2**20  # 10 MB: a config or subject table is kilobytes; the paper's 30 subjects ~3 KB
MAX_NODES = 200_000  # values (scalars, lists, mappings) after aliases are expanded
MAX_DEPTH = 64  # nested levels; configs use about six
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_bounded(path: str | os.PathLike, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of `path`, refused (one line naming it) past `limit` bytes, before reading them when the
    file system tells its size, else after reading `limit` + 1 (a pipe, /dev/zero)."""
    path = Path(path)
    size = path.stat().st_size
    if size > limit:
        raise DtiError(f"{what} {path}: {size} bytes, more than the {limit} a {what} may have")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise DtiError(f"{what} {path}: more than the {limit} bytes a {what} may have")
    return data


def _too_many(where: str, what: str) -> DtiError:
    return DtiError(f"{where}: expands to more than {MAX_NODES} values (YAML aliases repeat what they point to); "
                    f"a {what} holds far fewer")


def _too_deep(where: str, line: int | None = None) -> DtiError:
    at = f" (line {line})" if line is not None else ""
    return DtiError(f"{where}: nested more than {MAX_DEPTH} levels deep{at}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that counts what it composes (aliases at their expanded size), limits the nesting, and
    refuses a key given twice in one mapping."""

    def __init__(self, stream, where: str, what: str):
        super().__init__(stream)
        self._where, self._what = where, what
        self._depth = 0
        self._composed = 0  # nodes composed so far (an alias composes none: it counts in _sizes, expanded)
        self._sizes: dict[int, int] = {}  # id(node) -> its size with every alias in it expanded

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            line = self.peek_event().start_mark.line + 1
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:  # an alias inside the value it names: a recursive structure
                raise DtiError(f"{self._where}: line {line}: an alias refers to a value that contains it")
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _too_deep(self._where, self.peek_event().start_mark.line + 1)
        self._composed += 1
        if self._composed > MAX_NODES:
            raise _too_many(self._where, self._what)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size = 1 + sum(self._sizes[id(child)] for child in children)
        if size > MAX_NODES:
            raise _too_many(self._where, self._what)
        self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict[object, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                    seen.setdefault(key, line)
                except TypeError:  # an unhashable key: SafeConstructor refuses it below
                    continue
                if first is not None:
                    raise DtiError(f"{self._where}: key {key!r} is given twice in one mapping (lines {first} and "
                                   f"{line}); YAML would keep the second silently, remove one")
        return super().construct_mapping(node, deep=deep)


def _json_pairs(where: str):
    def hook(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DtiError(f"{where}: key {key!r} is given twice in one object; JSON readers would keep one "
                               "silently, remove one")
            seen.add(key)
        return dict(pairs)
    return hook


def parse_yaml(text: str, where: str, what: str = "config file"):
    """The value of YAML (or JSON) `text`, bounded and strict (module docstring); errors name `where`."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):  # JSON first, as Snakemake reads a config file
        try:
            value = json.loads(text, object_pairs_hook=_json_pairs(where))
        except ValueError:
            pass  # YAML flow style, read below
        except RecursionError:
            raise _too_deep(where) from None
        else:
            check_tree(value, where, what)
            return value
    loader = _StrictLoader(text, where, what)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise DtiError(f"{where}: cannot read: {' '.join(str(err).split())}") from err
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike, what: str = "config file"):
    """The value of the YAML (or JSON) file `path`: at most MAX_FILE_BYTES, UTF-8 (a byte-order mark is
    skipped), bounded and strict as the module docstring says. FileNotFoundError is left to the caller
    (it knows how the file was named); every other problem is a one-line DtiError naming the file."""
    where = f"{what} {path}"
    try:
        data = read_bounded(path, what)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise DtiError(f"{where}: cannot read: {err.strerror or err}") from err
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DtiError(f"{where}: cannot read: not UTF-8 text ({err.reason} at byte {err.start})") from err
    return parse_yaml(text, where, what)


def check_tree(value, where: str, what: str = "config") -> None:
    """A DtiError naming `where` if `value` (nested dicts and lists) holds more than MAX_NODES values or
    nests deeper than MAX_DEPTH; it stops counting there, so an aliased or recursive structure of any
    expanded size is refused at once."""
    count = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise _too_many(where, what)
        if depth > MAX_DEPTH:
            raise _too_deep(where)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
            count += len(item)  # the keys
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
