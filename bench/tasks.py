"""Raw Celery baseline for bench/engine.py: a task that does nothing but mark that it ran."""

from __future__ import annotations

from pathlib import Path

from celery import shared_task


@shared_task(name="bench.noop", acks_late=True, ignore_result=True)
def noop(marker_dir: str | None = None, name: str | None = None) -> None:
    if marker_dir and name:
        (Path(marker_dir) / name).touch()
