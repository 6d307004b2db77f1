"""Model prices: the most specific `ModelPrice` pattern valid at call time prices a call (a
project's own rows first)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

from django.db.models import Q
from django.utils import timezone

from .models import ModelPrice

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None
    pattern: str

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> Decimal:
        cached_rate = self.cached_input_per_million
        if cached_rate is None:
            cached_rate = self.input_per_million
        fresh = max(input_tokens - cached_input_tokens, 0)
        total = (
            fresh * self.input_per_million
            + cached_input_tokens * cached_rate
            + output_tokens * self.output_per_million
        ) / MILLION
        return total.quantize(Decimal("0.000001"))


def _specificity(pattern: str) -> tuple[int, int]:
    # An exact name beats any pattern; among patterns, more literal characters win.
    wildcards = sum(pattern.count(c) for c in "*?[")
    return (0 if wildcards else 1, len(pattern) - wildcards)


def price_for(
    provider: str, model: str, at: datetime | None = None, *, project_id: Any = None
) -> Price | None:
    """The price of `model` at `at`: among the rows valid then (the newest of each pattern),
    a row of `project_id` beats every global row; within one scope, the most specific pattern
    wins."""
    at = at or timezone.now()
    scope = Q(project__isnull=True)
    if project_id is not None:
        scope |= Q(project_id=project_id)
    rows = ModelPrice.objects.filter(scope, provider=provider, valid_from__lte=at).order_by(
        "-valid_from"
    )
    best: tuple[tuple[int, int, int], ModelPrice] | None = None
    seen: set[tuple[Any, str]] = set()
    for row in rows:
        key = (row.project_id, row.model_pattern)
        if key in seen:  # an older price of the same pattern
            continue
        seen.add(key)
        if fnmatchcase(model, row.model_pattern):
            rank = (1 if row.project_id is not None else 0, *_specificity(row.model_pattern))
            if best is None or rank > best[0]:
                best = (rank, row)
    if best is None:
        return None
    row = best[1]
    return Price(
        row.input_per_million,
        row.output_per_million,
        row.cached_input_per_million,
        row.model_pattern,
    )
