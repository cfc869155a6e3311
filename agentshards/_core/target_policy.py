"""Which stored targets may be imported: a ``module:function`` read from a replica or a shard is code the
bucket chose.

``recover`` and ``retry`` start agents from the target recorded in the manifest or in the shard, and
importing a module runs it: whoever can write the bucket could name ``os:system``, or a module of an
installed package that does harm at import. So a stored target is imported only when its module file lies
under the app dir (not in a virtualenv or a ``site-packages`` inside it, not the standard library, not an
installed package), or when it matches a pattern the operator allowed explicitly. Anything else is refused
with InvalidTarget before anything is imported.

The module is located by walking the app dir, not with ``importlib.util.find_spec``: for a dotted name
that imports the parent packages, which is the very import this check exists to prevent.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import site
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._base.errors import InvalidTarget
from .target import AgentFn, resolve

_INSTALLED_DIRS = ("site-packages", "dist-packages")


@dataclass(frozen=True)
class TargetPolicy:
    """Stored targets must live under ``app_dir``; ``allow`` holds fnmatch patterns, matched against the
    whole ``module:function`` and against the module name, that admit anything else (``os:system``,
    ``mylib.*``)."""

    app_dir: Path
    allow: tuple[str, ...] = ()

    @classmethod
    def of(cls, app_dir: str | os.PathLike[str] | None, allow: Sequence[str] = ()) -> TargetPolicy:
        if isinstance(allow, str):  # a lone pattern, not its characters
            allow = (allow,)
        return cls(Path(app_dir if app_dir is not None else ".").resolve(), tuple(allow))

    def allowed(self, target: str) -> bool:
        module = target.partition(":")[0]
        return any(fnmatch.fnmatchcase(target, p) or fnmatch.fnmatchcase(module, p) for p in self.allow)

    def check(self, target: str, agent_id: str | None = None) -> None:
        """Raise InvalidTarget unless ``target`` may be imported; imports nothing."""
        if self.allowed(target):
            return
        module, sep, attr = target.partition(":")
        parts = module.split(".")
        if not sep or not attr.isidentifier() or not all(p.isidentifier() for p in parts):
            raise InvalidTarget(f"stored target {target!r} is not 'module:function'", agent_id=agent_id,
                                hint="the manifest or shard holds a malformed target")
        refuse = _refusal(target, agent_id)
        if parts[0] in sys.stdlib_module_names or parts[0] in sys.builtin_module_names:
            raise refuse("names a standard-library module")
        located = _locate(self.app_dir, parts)
        if located is None:
            raise refuse(f"names no module file under the app dir {self.app_dir}")
        for path in located:
            outside = _outside_app(path, self.app_dir)
            if outside:
                raise refuse(f"resolves to {path}, {outside}")
        for i in range(1, len(parts) + 1):  # an already imported module is what an import would return
            loaded = sys.modules.get(".".join(parts[:i]))
            if loaded is not None and not _same_module(loaded, located[i - 1]):
                raise refuse(f"names {'.'.join(parts[:i])}, already imported from outside the app dir")


def resolve_stored(target: str, policy: TargetPolicy, agent_id: str | None = None) -> AgentFn:
    """Check ``target`` against ``policy``, then import it with the app dir first on ``sys.path`` (the
    module imported is the one the check located)."""
    policy.check(target, agent_id)
    with app_dir_first(policy.app_dir):
        return resolve(target)


@contextlib.contextmanager
def app_dir_first(app_dir: Path) -> Iterator[None]:
    entry = str(app_dir)
    saved = list(sys.path)
    sys.path[:] = [entry] + [p for p in saved if p != entry]
    try:
        yield
    finally:
        sys.path[:] = saved


def _refusal(target: str, agent_id: str | None) -> Callable[[str], InvalidTarget]:
    def refuse(why: str) -> InvalidTarget:
        return InvalidTarget(
            f"refusing to import the stored target {target!r}: it {why}", agent_id=agent_id,
            hint=f"targets stored in a replica or shard are imported only from the app dir; if {target!r} is "
                 f"trusted, allow it with --allow-target '{target}' (allow_targets=('{target}',) in Python)")
    return refuse


def _locate(app_dir: Path, parts: list[str]) -> list[Path] | None:
    """The file of each package on the way and of the module itself, found by walking ``app_dir``
    (``pkg/__init__.py`` or ``pkg/`` for a namespace package, ``mod.py`` or ``mod/__init__.py``)."""
    found: list[Path] = []
    here = app_dir
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        package, source = here / part, here / f"{part}.py"
        if (package / "__init__.py").is_file():
            found.append((package / "__init__.py").resolve())
        elif last and source.is_file():
            found.append(source.resolve())
        elif not last and package.is_dir():
            found.append(package.resolve())  # a namespace package: no code of its own
        else:
            return None
        here = package
    return found


def _outside_app(path: Path, app_dir: Path) -> str | None:
    """Why ``path`` (resolved) does not count as the app's own code, or None when it does."""
    if not path.is_relative_to(app_dir):
        return "outside the app dir"
    inside = path.relative_to(app_dir).parts
    if any(part in _INSTALLED_DIRS for part in inside):
        return "in an installed-packages directory"
    here = app_dir
    for part in inside[:-1]:
        here = here / part
        if (here / "pyvenv.cfg").exists():
            return f"in the virtualenv {here}"
    for root in _installed_roots(app_dir):
        if path.is_relative_to(root):
            return f"in the Python installation or its packages ({root})"
    return None


def _installed_roots(app_dir: Path) -> set[Path]:
    """The standard library, every site-packages, and the interpreter's prefixes (unless the app dir is
    itself inside one, as in a container that keeps the app under /usr)."""
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        roots.add(site.getusersitepackages())
    out = {Path(r).resolve() for r in roots if r}
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        resolved = Path(prefix).resolve()
        if not app_dir.is_relative_to(resolved):
            out.add(resolved)
    return out


def _same_module(module: object, located: Path) -> bool:
    file = getattr(module, "__file__", None)
    if file is not None:
        return Path(file).resolve() == located
    paths = getattr(module, "__path__", None) or []  # a namespace package
    return any(Path(p).resolve() == located for p in paths)
