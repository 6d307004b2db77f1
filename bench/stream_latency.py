"""First streamed token at the SSE client vs the model sending it (issue #16, `llm.delta`).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/stream_latency.py --runs 20     # uses database x_inflight

Starts the workers `make run` starts (bench/inflight.py's start_workers) on a database of its
own and a fake OpenAI-compatible server streaming --chunks pieces --chunk-delay s apart. For
each of --runs one-agent runs, one after another: opens the run's event stream (the real SSE
view, `GET /api/v1/runs/{id}/stream`, through Django's test client in this process), lets the
model answer, and reads the stream to its end. For each `llm.delta` it takes the wall time it
reached the client minus the time the fake server wrote that chunk. Prints JSON (ms): the first
token's latency per run (median, max) and every token's (median, p95, max). Nothing asserted;
the target is the first token within 100 ms."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench import inflight  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--chunk-delay", type=float, default=0.05)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sparkops-stream-"))
    inflight.configure_environment(workdir)
    inflight.django_ready()
    from django.test import Client

    from agents.services import agent_create
    from runs import services as runs
    from runs.models import Run
    from sparkops.testing.engine import purge_queues
    from sparkops.testing.fake_llm import FakeLLMServer
    from workflows.services import workflow_create

    model = FakeLLMServer(chunk_delay=args.chunk_delay).start()
    user, project = inflight.bench_owner()
    agent_create(
        actor=user,
        project=project,
        name="Bench model",
        slug="bench-model",
        provider="openai_compatible",
        model="bench",
        base_url=model.openai_base_url,
    )
    workflow = workflow_create(
        actor=user,
        project=project,
        name="one agent step",
        definition={
            "nodes": [{"id": "answer", "type": "agent", "agent": "bench-model", "prompt": "Hi"}]
        },
    )
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    answer = " ".join(f"token{n}" for n in range(args.chunks))
    purge_queues()
    workers = inflight.start_workers(workdir, None)
    first: list[float] = []
    every: list[float] = []
    try:
        for number in range(args.runs + 1):  # the first run warms the workers up, not counted
            model.gate.clear()
            model.enqueue("openai", {"content": answer})
            run = runs.run_create(workflow=workflow, input={}, actor=user)
            inflight.wait(lambda: model.requests_for("openai"), 60, "the model call")
            model.requests.clear()
            response = client.get(f"/api/v1/runs/{run.pk}/stream")
            chunks = iter(response.streaming_content)
            next(chunks)  # `retry:`: the stream has subscribed to the run's deltas
            model.gate.set()
            arrived: list[tuple[int, float]] = []
            for chunk in chunks:
                text = chunk.decode()
                if text.startswith("event: llm.delta"):
                    data = json.loads(text.split("data: ", 1)[1])
                    arrived.append((data["index"], time.time()))
                if text.startswith("event: end"):
                    break
            response.close()  # gives the stream's slot back (4 per user)
            sent = model.chunk_times[1:]  # after the role chunk, one chunk per piece
            if number == 0:
                continue
            latencies = [(at - sent[index]) * 1000 for index, at in arrived]
            if len(latencies) != args.chunks:
                raise SystemExit(f"run {run.pk}: {len(latencies)} of {args.chunks} deltas")
            first.append(latencies[0])
            every.extend(latencies)
            assert Run.objects.get(pk=run.pk).status == "succeeded"
    finally:
        model.stop()
        for proc in workers.values():
            proc.terminate()
        for proc in workers.values():
            try:
                proc.wait(timeout=60)
            except Exception:
                proc.kill()
    every.sort()
    print(
        json.dumps(
            {
                "runs": args.runs,
                "chunks_per_run": args.chunks,
                "chunk_delay_ms": args.chunk_delay * 1000,
                "first_token_ms": {
                    "median": round(statistics.median(first), 1),
                    "max": round(max(first), 1),
                },
                "every_token_ms": {
                    "median": round(statistics.median(every), 1),
                    "p95": round(every[int(len(every) * 0.95) - 1], 1),
                    "max": round(every[-1], 1),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
