"""User code named as ``module:function`` or ``path/to/file.py:function``.

Importing it *runs the user's code*, with the same rights as autoprune itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from autoprune.errors import ConfigError


def is_user_spec(name: str) -> bool:
    """``module:function`` or ``file.py:function`` (anything with a colon that is not ``torchvision:``,
    ``timm:`` or ``hf:``)."""
    return ":" in name and not name.startswith(("torchvision:", "timm:", "hf:"))


def _split(spec: str, what: str) -> tuple[str, str]:
    """``(module or file, function)`` of a user spec."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"{what} {spec!r}: must look like module:function or path/to/file.py:function")
    return target, attr


def _file(target: str, spec: str, what: str) -> Path | None:
    """The file a ``path/to/file.py`` target names (it must exist); None for a module target."""
    if not (target.endswith(".py") or "/" in target or os.sep in target):
        return None
    path = Path(target)
    if not path.is_file():
        raise ConfigError(f"{what} {spec!r}: file not found: {path.resolve()}")
    return path


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """Import ``module:function`` or ``path/to/file.py:function`` and return the function.

    A module is looked up on ``sys.path`` and, failing that, in the current directory. A file path
    is relative to the current directory.
    """
    target, attr = _split(spec, what)
    path = _file(target, spec, what)
    if path is not None:
        module_name = f"_autoprune_user_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            file_spec = importlib.util.spec_from_file_location(module_name, path)
            if file_spec is None or file_spec.loader is None:
                raise ConfigError(f"{what} {spec!r}: {path} cannot be imported as Python")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[module_name] = module
            try:
                file_spec.loader.exec_module(module)
            except Exception:
                del sys.modules[module_name]
                raise
    else:
        module = _import_module(target, spec, what)
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"{what} {spec!r}: {target} has no function {attr!r}")
    return function


def source_file(spec: str, what: str) -> Path | None:
    """The file that defines a user's ``module:function`` or ``path/to/file.py:function``.

    For a file path it is that file (relative to the current directory, resolved); for a module it
    is the module's source file, which needs the module imported (this runs its code). The function
    itself is not looked up.

    Returns:
        The file, or None for a name that is not a user spec (a built-in, ``torchvision:NAME``) and
        for a module without Python source (a compiled extension).
    """
    if not is_user_spec(spec):
        return None
    target, _attr = _split(spec, what)
    path = _file(target, spec, what)
    if path is not None:
        return path.resolve()
    try:
        found = inspect.getsourcefile(_import_module(target, spec, what))
    except TypeError:  # a built-in module
        return None
    return Path(found).resolve() if found else None


def _import_module(target: str, spec: str, what: str) -> ModuleType:
    for attempt in range(2):
        try:
            return importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (target == exc.name or target.startswith(exc.name + ".")):
                raise  # the user's module imports something that is missing: show that
            if attempt == 0 and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
                continue
            break
    raise ConfigError(f"{what} {spec!r}: no module {target!r} on the Python path or in the current directory")


def call_with_accepted(function: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``function`` with those of ``kwargs`` it accepts (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return function(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return function(**kwargs)
    accepted = {
        k: v
        for k, v in kwargs.items()
        if k in params and params[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return function(**accepted)
