"""Reading /metrics in tests as Prometheus does: scraped with the bearer token the
`metrics_token` fixture sets, parsed with prometheus-client's own parser, and compared before
and after a scenario."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from .engine import wait_until

# {(sample name, sorted labels): value}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: Client | None = None, **headers: Any) -> Samples:
    """/metrics as Prometheus sees it: with the bearer token the `metrics_token` fixture set
    (modules that scrape use it for every test)."""
    assert settings.SPARKOPS_METRICS_TOKEN, "use the metrics_token fixture to scrape"
    headers.setdefault("HTTP_AUTHORIZATION", f"Bearer {settings.SPARKOPS_METRICS_TOKEN}")
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return round(value(after, name, **labels) - value(before, name, **labels), 9)


def total(samples: Samples, name: str) -> float:
    """A counter's total, a histogram's count or a gauge's value, over all label sets."""
    wanted = {name, f"{name}_count"}
    return sum(amount for (sample, _), amount in samples.items() if sample in wanted)


def scrape_until(before: Samples, name: str, **labels: str) -> Samples:
    """Scrape until `name{labels}` moved: engine metrics are recorded after commit, in the
    worker thread, so the run's row may be read a moment before they are."""

    def moved() -> Samples | None:
        samples = scrape()
        return samples if delta(before, samples, name, **labels) else None

    result: Samples = wait_until(moved, what=f"{name}{labels} to move")
    return result
