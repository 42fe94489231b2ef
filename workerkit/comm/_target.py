"""Child targets: a callable, or a ``"package.module:function"`` string.

The parent validates a target before starting anything, so mistakes fail at ``spawn``
with a clear :class:`~workerkit.errors.WorkerKitError` rather than as a traceback in a
child; the child resolves a string target again on its side.
"""

from __future__ import annotations

import importlib
import pickle
from typing import Any, Callable, Tuple, Union

from ..errors import WorkerKitError

__all__ = ["Target", "check_target", "resolve_target"]

Target = Union[Callable[..., Any], str]


def _split(spec: str) -> Tuple[str, str]:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"target string {spec!r} must look like 'package.module:function'")
    return module, attr


def resolve_target(target: Target) -> Callable[..., Any]:
    """The callable ``target`` names (imports the module of a string target)."""
    if not isinstance(target, str):
        return target
    module_name, attr = _split(target)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"target {target!r} is not callable")
    return obj  # type: ignore[no-any-return]


def check_target(target: Target, start_method: str) -> None:
    """Fail early, in the parent, for a target the child could not run."""
    if isinstance(target, str):
        _check_string(target)
    elif not callable(target):
        raise TypeError(f"target must be a callable or a 'module:function' string, not {target!r}")
    elif start_method != "fork":
        _check_picklable(target, start_method)


def _check_string(spec: str) -> None:
    module_name, attr = _split(spec)  # ValueError for a string without ":"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise WorkerKitError(
            f"target {spec!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise WorkerKitError(f"target {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise WorkerKitError(f"target {spec!r}: {attr!r} is not callable")


def _check_picklable(target: Callable[..., Any], start_method: str) -> None:
    try:
        pickle.dumps(target)
    except Exception as exc:
        raise WorkerKitError(
            f"cannot send target {target!r} to a child started with {start_method!r}: "
            f"it cannot be pickled ({type(exc).__name__}: {exc}); "
            "use fork or a module-level function (or a 'module:function' string)"
        ) from exc
