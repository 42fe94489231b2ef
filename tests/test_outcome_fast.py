"""The pool's fast ``Outcome`` builder makes the same object as ``Outcome(...)``."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from workerkit import Outcome
from workerkit.outcome import new_outcome


def test_new_outcome_equals_the_dataclass_built_one() -> None:
    error = ValueError("boom")
    for args in [(0, "in", 4, None, "w1", 0.5), (3, ("a", 1), None, error, 7, 0.0)]:
        fast, slow = new_outcome(*args), Outcome(*args)
        assert fast == slow and hash(fast) == hash(slow)
        assert repr(fast) == repr(slow)
        names = [f.name for f in dataclasses.fields(Outcome)]
        assert [getattr(fast, n) for n in names] == list(args)
        assert fast.ok == slow.ok


def test_new_outcome_is_frozen_and_behaves_like_an_outcome() -> None:
    outcome = new_outcome(1, 2, 3, None, "w", 0.25)
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.value = 5  # type: ignore[misc]
    assert outcome.result() == 3
    assert dataclasses.replace(outcome, value=9).value == 9
    assert pickle.loads(pickle.dumps(outcome)) == outcome
    failed = new_outcome(1, 2, None, KeyError("k"), "w", 0.25)
    assert not failed.ok
    with pytest.raises(KeyError):
        failed.result()


def test_new_outcome_knows_every_field() -> None:
    # new_outcome writes the fields itself: a new field or a __post_init__ must update it.
    names = [f.name for f in dataclasses.fields(Outcome)]
    assert names == ["index", "input", "value", "error", "worker_id", "duration"]
    assert not hasattr(Outcome, "__post_init__")
    assert sorted(vars(new_outcome(0, 1, 2, None, 3, 0.5))) == sorted(names)
