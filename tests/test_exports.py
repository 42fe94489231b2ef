"""The public surface of API.md sections 1 (input sources), 2 (workers and pools), 5 (errors).

Channel and util names (sections 3 and 4) are checked by the tests of those parts.
"""

from __future__ import annotations

import importlib.resources
import typing
from pathlib import Path

import pytest

import workerkit

pytestmark = pytest.mark.timeout(60)

SECTION_1_INPUT = ["InputSource", "IterableInputSource", "DynamicIterator"]
SECTION_2_POOL = ["Worker", "WorkPool", "Outcome", "ProcessSummary", "PoolStats"]
SECTION_5_ERRORS = [
    "WorkerKitError",
    "ChannelClosedError",
    "RemoteError",
    "WorkPoolError",
    "PoolClosedError",
    "WorkTimeoutError",
]
PUBLIC_NAMES = SECTION_1_INPUT + SECTION_2_POOL + SECTION_5_ERRORS


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_is_importable_from_the_package(name: str) -> None:
    namespace: dict = {}
    exec(f"from workerkit import {name}", namespace)
    assert namespace[name] is getattr(workerkit, name)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_is_listed_in_dunder_all(name: str) -> None:
    assert name in workerkit.__all__


def test_dunder_all_names_all_exist() -> None:
    missing = [name for name in workerkit.__all__ if not hasattr(workerkit, name)]
    assert missing == []


def test_errors_derive_from_workerkit_error() -> None:
    for name in SECTION_5_ERRORS:
        cls = getattr(workerkit, name)
        assert issubclass(cls, Exception)
        assert issubclass(cls, workerkit.WorkerKitError), name


def test_error_attributes_named_in_the_contract() -> None:
    assert workerkit.ChannelClosedError("gone", exitcode=3).exitcode == 3
    summary = workerkit.ProcessSummary(submitted=1, completed=0, failed=1)
    assert workerkit.WorkPoolError("failed", summary).summary is summary


def test_package_ships_py_typed_marker() -> None:
    marker = Path(workerkit.__file__).parent / "py.typed"
    assert marker.is_file()
    if hasattr(importlib.resources, "files"):
        assert importlib.resources.files("workerkit").joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    "alias",
    [
        lambda: workerkit.WorkPool[int, int],
        lambda: workerkit.DynamicIterator[int],
        lambda: workerkit.Outcome[int, int],
        lambda: workerkit.Worker[int, int],
        lambda: workerkit.IterableInputSource[int],
        lambda: workerkit.InputSource[int],
    ],
    ids=["WorkPool", "DynamicIterator", "Outcome", "Worker", "IterableInputSource", "InputSource"],
)
def test_generic_classes_are_subscriptable(alias: typing.Callable[[], object]) -> None:
    subscripted = alias()
    assert typing.get_origin(subscripted) is not None
    assert typing.get_args(subscripted)[0] is int


def test_input_source_is_a_protocol() -> None:
    assert getattr(workerkit.InputSource, "_is_protocol", False)
