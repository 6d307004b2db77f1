"""Raw Celery baselines: a task that does nothing but mark that it ran (bench/engine.py), and
one that makes one model call and marks it (bench/inflight.py)."""

from __future__ import annotations

from pathlib import Path

from celery import shared_task


@shared_task(name="bench.noop", acks_late=True, ignore_result=True)
def noop(marker_dir: str | None = None, name: str | None = None) -> None:
    if marker_dir and name:
        (Path(marker_dir) / name).touch()


@shared_task(name="bench.llm_call", acks_late=True, ignore_result=True)
def llm_call(base_url: str, marker_dir: str, name: str) -> None:
    """One chat completion through the OpenAI SDK on the egress client, as an
    `openai_compatible` agent makes it (a client per call), then a marker."""
    import openai

    from sparkops import egress

    client = openai.OpenAI(
        api_key="not-needed",
        base_url=base_url,
        http_client=egress.sdk_http_client(timeout=60),
        max_retries=0,
        timeout=60,
    )
    with client:
        client.chat.completions.create(model="bench", messages=[{"role": "user", "content": "Hi"}])
    (Path(marker_dir) / name).touch()
