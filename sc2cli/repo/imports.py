"""The repository files a file imports, found with cheap per-language rules over its text (no parser: the
file being edited is often not valid code). Python: `import a.b` and `from .c import d` resolved to modules
of the repository (at its root or under any folder, e.g. src/); JavaScript and TypeScript: relative
`import ... from './x'` and `require('./x')`; C and C++: `#include "x.h"`; Rust: `mod x;`."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable

_PY_IMPORT = re.compile(r"^\s*import\s+([\w.]+(?:\s*,\s*[\w.]+)*)", re.M)
_PY_FROM = re.compile(r"^\s*from\s+(\.*)([\w.]*)\s+import\s+\(?\s*([\w\s,]+)", re.M)
_JS = re.compile(r"""(?:from\s+|require\(\s*|import\s*\(\s*|import\s+)["'](\.{1,2}/[^"']+)["']""")
_C_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_RUST_MOD = re.compile(r"^\s*(?:pub\s+)?mod\s+(\w+)\s*;", re.M)
_JS_SUFFIXES = ("", ".ts", ".tsx", ".js", ".jsx", ".mjs", "/index.ts", "/index.tsx", "/index.js")


def imported_files(path: str, text: str, tracked: Iterable[str]) -> list[str]:
    """Tracked paths `text` (the file at `path`) imports, in the order they appear, without `path` itself."""
    known = set(tracked)
    suffix = posixpath.splitext(path)[1]
    if suffix in (".py", ".pyi"):
        found = _python(path, text, known)
    elif suffix in (".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs", ".vue", ".svelte"):
        found = _relative(path, _JS.findall(text), known, _JS_SUFFIXES)
    elif suffix in (".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".m", ".mm", ".cu"):
        found = _includes(path, _C_INCLUDE.findall(text), known)
    elif suffix == ".rs":
        found = _relative(path, [f"./{m}" for m in _RUST_MOD.findall(text)], known, (".rs", "/mod.rs"))
    else:
        found = []
    return list(dict.fromkeys(p for p in found if p != path))


def _python(path: str, text: str, known: set[str]) -> list[str]:
    """Modules named by `import` and `from` lines, in the order they appear."""
    index = _module_index(known)
    package = posixpath.dirname(path)
    found: list[tuple[int, list[str]]] = []
    for match in _PY_IMPORT.finditer(text):
        modules = [m.strip() for m in match.group(1).split(",")]
        found.append((match.start(), [index[m] for m in modules if m in index]))
    for match in _PY_FROM.finditer(text):
        dots, module, names = match.groups()
        names = [n.strip() for n in names.replace("\n", ",").split(",") if n.strip()]
        if not dots:
            modules = [module, *(f"{module}.{n}" for n in names)]
            found.append((match.start(), [index[m] for m in modules if m in index]))
            continue
        base = package
        for _ in range(len(dots) - 1):
            base = posixpath.dirname(base)
        folder = posixpath.join(base, *module.split(".")) if module else base
        paths = _first([f"{folder}.py", f"{folder}/__init__.py"], known) if module else []
        paths += [p for n in names for p in _first([f"{folder}/{n}.py", f"{folder}/{n}/__init__.py"], known)]
        found.append((match.start(), paths))
    return [p for _, paths in sorted(found, key=lambda item: item[0]) for p in paths]


def _module_index(known: set[str]) -> dict[str, str]:
    """Dotted module name -> file, for every tracked .py file under every folder it could be imported from
    (a/src/pkg/mod.py is `pkg.mod`, `src.pkg.mod`, ...): the shortest path wins."""
    index: dict[str, str] = {}
    for path in sorted(known, key=len):
        if not path.endswith(".py"):
            continue
        parts = path[:-3].split("/")
        if parts[-1] == "__init__":
            parts.pop()
        for i in range(len(parts)):
            index.setdefault(".".join(parts[i:]), path)
    return index


def _relative(path: str, specs: Iterable[str], known: set[str], suffixes: Iterable[str]) -> list[str]:
    folder = posixpath.dirname(path)
    found: list[str] = []
    for spec in specs:
        base = posixpath.normpath(posixpath.join(folder, spec))
        found += _first([base + s for s in suffixes], known)
    return found


def _includes(path: str, names: Iterable[str], known: set[str]) -> list[str]:
    folder = posixpath.dirname(path)
    found: list[str] = []
    for name in names:
        near = posixpath.normpath(posixpath.join(folder, name))
        found += (
            _first([near], known)
            or sorted((p for p in known if p.endswith("/" + name) or p == name), key=len)[:1]
        )
    return found


def _first(candidates: Iterable[str], known: set[str]) -> list[str]:
    return next(([c] for c in candidates if c in known), [])
