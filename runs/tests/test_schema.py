"""The engine's tables carry the indexes their hot statements use, and no index that only
costs writes (migration 0009)."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("table", "constraint"),
    [("runs_runstep", ["run_id", "node_id"]), ("runs_runevent", ["run_id", "seq"])],
)
def test_lookups_by_run_use_the_unique_constraint_and_no_index_of_their_own(table, constraint):
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, table)
    # What is indexed by the run first: a plain index, or the index behind a unique constraint.
    by_run = [
        (c["columns"], c["unique"])
        for c in found.values()
        if (c["index"] or c["unique"]) and c["columns"][:1] == ["run_id"]
    ]
    assert by_run == [(constraint, True)]
