"""Where testbeds and method parts come from: one registry each, the one way in for built-ins and plugins.

A name is looked up in this order (the same order for `--testbed` and for each part of `--methods`):

1. a built-in, registered by overopt itself (`summarize`, `kl`, ...);
2. an import path `package.module:attribute` (the user's own module, importable from the working
   directory or an installed package);
3. an entry point of the group (`overopt.testbeds`, `overopt.methods`) declared in an installed
   plugin's pyproject, e.g. ``[project.entry-points."overopt.testbeds"] keyword = "mypkg.tasks:KeywordTestbed"``.

What a plugin provides is its own code, so the stages it builds must go stale when that code changes:
`source_version` is the plugin distribution's version plus a hash of its package's Python sources,
and enters the fingerprints of every stage the plugin influences.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; `resolve` also imports `module:attr` and reads entry points."""

    def __init__(self, kind: str, group: str, adapt: Callable[[str, object], T]):
        self.kind, self.group = kind, group
        self._adapt = adapt  # what a plugin's object (class, instance, factory) becomes in this registry
        self._builtin: dict[str, T] = {}
        self._resolved: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._builtin:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._builtin[name] = entry
        return entry

    def builtin(self) -> list[str]:
        return list(self._builtin)

    def is_builtin(self, name: str) -> bool:
        return name in self._builtin

    def resolve(self, name: str) -> T:
        """The entry called `name`; an unknown name or a plugin that fails to import raises ValueError."""
        if name in self._builtin:
            return self._builtin[name]
        if name not in self._resolved:
            self._resolved[name] = self._adapt(name, self._load(name))
        return self._resolved[name]

    def _load(self, name: str) -> object:
        if ":" in name:
            return import_object(name, self.kind)
        points = {ep.name: ep for ep in metadata.entry_points(group=self.group)}
        if name in points:
            try:
                return points[name].load()
            except Exception as err:  # a plugin's import error is the user's to fix: say which plugin
                raise ValueError(
                    f"{self.kind} {name!r}: its entry point {points[name].value} fails to load ({err})"
                ) from None
        plugins = f"; installed plugins: {', '.join(sorted(points))}" if points else ""
        raise ValueError(
            f"unknown {self.kind} {name!r}; built in: {', '.join(self._builtin)}{plugins}; "
            f"or give your own as module:attribute"
        )


def import_object(path: str, kind: str) -> object:
    """`package.module:attr.subattr` imported; failures raise ValueError naming the path."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{kind} {path!r}: expected module:attribute, e.g. mypkg.tasks:KeywordTestbed")
    if "" not in sys.path and "." not in sys.path:  # `python -m`-like: the working directory's modules
        sys.path.append("")
    try:
        obj = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the module's own error while it runs
        raise ValueError(f"{kind} {path!r}: cannot import {module_name} ({type(err).__name__}: {err})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{kind} {path!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def source_version(obj: object) -> str:
    """The version of the code that defines `obj`: its distribution's version (if installed) and a hash
    of the Python sources of its top-level package (or of its module file), so that editing a plugin
    without bumping its version still makes the stages it built stale."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    if module is None:
        return ""
    top = module.__name__.split(".")[0]
    root = sys.modules.get(top, module)
    paths = getattr(root, "__path__", None)
    files = sorted(f for p in paths for f in Path(p).rglob("*.py")) if paths else [Path(module.__file__ or "")]
    digest = hashlib.sha256()
    for f in files:
        if f.is_file():
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
    try:
        dist = metadata.packages_distributions().get(top, [""])[0]
        version = metadata.version(dist) if dist else ""
    except metadata.PackageNotFoundError:
        version = ""
    return f"{version}+{digest.hexdigest()[:12]}" if version else digest.hexdigest()[:12]
