"""Reading files a user hands to luosim: scenarios, traces, blobs.

One loader for ``run``, ``matrix``, ``explore``, ``replay`` and ``inspect``:

* only regular files, opened with ``O_NONBLOCK`` and checked with ``fstat``
  before a byte is read, so a FIFO, ``/dev/zero`` or a tty is refused at
  once instead of hanging or filling memory;
* at most :data:`MAX_FILE_BYTES` (scenarios, traces) or
  :data:`MAX_BLOB_BYTES` (hand-over blobs);
* YAML with no duplicate keys, a bounded alias budget (no "billion laughs")
  and bounded nesting; JSON with bounded nesting too.

Every problem is an :class:`InputError`: one line naming the file and what
is wrong, exit code 2.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # yaml is imported where it parses: `luosim --help` never does
    from yaml.nodes import Node

MAX_FILE_BYTES = 4 << 20
"""Scenario and trace files: the reference host is 3 KB, a big trace ~1 MB."""
MAX_BLOB_BYTES = 64 << 20
"""Hand-over blobs for ``inspect``: a PCI FLB block chain or an FDT."""
MAX_NESTING = 100
"""Nested mappings/lists: a PCI tree 32 bridges deep needs ~70 levels of YAML."""
MAX_ALIASES = 64
"""Alias references (``*name``) per document."""
MAX_NODES = 200_000
"""Nodes after alias expansion (what the document costs once constructed)."""


class InputError(ValueError):
    """A file luosim cannot use: ``source`` and one-line ``problems``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


def read_regular_file(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes."""
    p = str(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise InputError(p, ["no such file"]) from None
    except IsADirectoryError:
        raise InputError(p, ["is a directory, expected a file"]) from None
    except OSError as exc:
        raise InputError(p, [f"cannot open: {exc.strerror or exc}"]) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(p, ["is a directory, expected a file"])
        if not stat.S_ISREG(st.st_mode):
            raise InputError(p, [f"not a regular file ({_kind(st.st_mode)})"])
        if st.st_size > limit:
            raise InputError(p, [f"{st.st_size} bytes is over the {limit} byte limit"])
        chunks: list[bytes] = []
        total = 0
        while True:  # the file may grow between fstat and read
            try:
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            except OSError as exc:
                raise InputError(p, [f"cannot read: {exc.strerror or exc}"]) from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise InputError(p, [f"over the {limit} byte limit"])
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def read_text_file(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    data = read_regular_file(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(str(path), [f"not UTF-8 text (byte {exc.start})"]) from None


# -- YAML ---------------------------------------------------------------------

def _event_scan(text: str, source: str) -> None:
    """Nesting depth and alias count from the event stream (not recursive)."""
    import yaml
    depth = aliases = 0
    for event in yaml.parse(text, Loader=_loader()):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise InputError(source, [f"{_mark(event)}nesting deeper than {MAX_NESTING} "
                                          "levels"])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise InputError(source, [f"{_mark(event)}more than {MAX_ALIASES} aliases"])


def _loader() -> Any:
    """PyYAML's libyaml-backed safe loader when the wheel has it (about ten
    times faster on a large host file), else the pure-Python one; both
    build the same nodes and the same safe constructor."""
    import yaml
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _mark(obj: Any) -> str:
    mark = getattr(obj, "start_mark", None) or getattr(obj, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""


def _check_nodes(root: Node, source: str) -> None:
    """Refuse duplicate mapping keys; bound the size after alias expansion."""
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode
    size: dict[int, int] = {}
    order: list[Node] = []
    stack: list[Node] = [root]
    seen: set[int] = set()
    while stack:  # post-order without recursion; aliases share node objects
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        if isinstance(node, MappingNode):
            keys: dict[Any, Node] = {}
            for k, v in node.value:
                if isinstance(k, ScalarNode):
                    key = (k.tag, k.value)
                    if key in keys:
                        raise InputError(source, [
                            f"{_mark(k)}duplicate key {k.value!r} (first at line "
                            f"{keys[key].start_mark.line + 1})"])
                    keys[key] = k
                stack.extend((k, v))
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
    for node in reversed(order):
        if isinstance(node, MappingNode):
            n = 1 + sum(size.get(id(k), 1) + size.get(id(v), 1) for k, v in node.value)
        elif isinstance(node, SequenceNode):
            n = 1 + sum(size.get(id(c), 1) for c in node.value)
        else:
            n = 1
        size[id(node)] = n
        if n > MAX_NODES:
            raise InputError(source, [f"{_mark(node)}expands to more than {MAX_NODES} nodes "
                                      "(aliases)"])


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with the checks above; one-line InputError on a problem."""
    import yaml
    try:
        _event_scan(text, source)
        loader = _loader()(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_nodes(node, source)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(source, [f"{_mark(exc)}YAML syntax error: {problem}"]) from None


def load_yaml_file(path: str | Path) -> Any:
    return parse_yaml(read_text_file(path), str(path))


# -- JSON ---------------------------------------------------------------------

def json_depth_ok(text: str, limit: int = MAX_NESTING) -> bool:
    """Bracket nesting outside strings is within ``limit`` (a linear scan)."""
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json(text: str, source: str) -> Any:
    if not json_depth_ok(text):
        raise InputError(source, [f"nesting deeper than {MAX_NESTING} levels"])
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(source, [f"not JSON (line {exc.lineno}, column {exc.colno}: "
                                  f"{exc.msg})"]) from None


def data_depth(data: Any) -> int:
    """Nesting depth of decoded dicts/lists, iteratively (for data built in Python)."""
    best = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        obj, d = stack.pop()
        if isinstance(obj, dict | list | tuple):
            d += 1
            best = max(best, d)
            if d > MAX_NESTING:
                return d
            stack.extend((c, d) for c in (obj.values() if isinstance(obj, dict) else obj))
    return best


def host_path_problem(path: Path) -> str | None:
    """Why an output folder cannot be created at ``path`` (None if it can)."""
    p = Path(path)
    for parent in [p, *p.parents]:
        if parent.exists():
            if not parent.is_dir():
                what = "is" if parent == p else f"is under {parent}, which is"
                return f"{what} not a directory ({errno.errorcode[errno.ENOTDIR]})"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{parent} is not writable (EACCES)"
            return None
    return None
