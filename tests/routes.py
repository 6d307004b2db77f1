"""How an app declares its object routes for the cross-tenant test (`<app>/tests/matrix.py`
holds `ROUTES: dict[str, ObjectRoute]`, keyed by URL name)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class ObjectRoute:
    # Builds the URL kwargs for an object in cast.project (created by/for cast.owner).
    kwargs: Callable[[Any], dict[str, Any]]
    # What a viewer of the project gets for writes: 403 for project objects; 404 for objects
    # that belong to one user (API keys), which other members cannot see at all.
    viewer_write: int = 403
    viewer_read: int = 200
    # Methods a viewer may legitimately use (e.g. a dry-run POST); they are checked for 404 only.
    viewer_allowed: tuple[str, ...] = ()
