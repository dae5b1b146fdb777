"""tests/conftest.py's tiered: which parametrised cases run in the fast tier."""

import pytest

from .conftest import tiered


def test_tiered_marks_the_cases_it_is_given_slow_and_passes_every_case_through():
    params = tiered([(1, "a"), (2, "b"), (3, "c")], {1}, ids=["x", "y", "z"])
    assert [p.values for p in params] == [(1, "a"), (2, "b"), (3, "c")] and [p.id for p in params] == ["x", "y", "z"]
    assert [[m.name for m in p.marks] for p in params] == [[], ["slow"], []]
    for cases, slow, ids in (([(1,), (2,)], {2}, None), ([(1,), (2,)], set(), ["only one"])):
        with pytest.raises(ValueError, match="2 cases"):
            tiered(cases, slow, ids)
