"""Issue #18's "done when", on both file storages (the local filesystem; S3, moto's server over
HTTP) and a worker in its own process: upload
an image and a text file → an agent describes the image and summarises the text (the fake
provider checks each SDK's native format) → an HTTP tool turns the summary into a report file
→ another posts that generated file to a server (the bytes it received checked) → the run's
output file reads back."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from agents import services as agent_services
from projects import files
from projects import services as project_services
from projects.models import File
from runs import services
from runs.tests.conftest import Raw, ToolServer
from sparkops.testing.engine import wait_for_run
from sparkops.testing.fake_llm import FakeLLMServer
from sparkops.testing.processes import RedisServer, WorkerProcess, broker
from sparkops.testing.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server, s3_server
from tools import services as tool_services
from workflows import services as workflow_services

pytestmark = pytest.mark.django_db(transaction=True)

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + b"\0" * 32
NOTES = b"Otters hold hands while they sleep so they do not drift apart.\n"
FILE = {"type": "object", "format": "file"}
KEY = "sk-e2e-files-never-recorded"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def storage(request: Any, settings: Any, tmp_path: Any) -> dict[str, str]:
    """The file storage of this test and of its worker: the same directory, or the same bucket
    (the worker configured from the environment, as production is)."""
    if request.param == "local":
        config = {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "files")},
        }
        env = {"SPARKOPS_VAR_DIR": str(tmp_path)}
    else:
        s3: S3Server = request.getfixturevalue("s3")
        bucket = s3.create_bucket()
        config = s3.storage_config(bucket)
        env = {
            "SPARKOPS_VAR_DIR": str(tmp_path),
            "SPARKOPS_FILES_BACKEND": "s3",
            "AWS_STORAGE_BUCKET_NAME": bucket,
            "AWS_S3_ENDPOINT_URL": s3.endpoint_url,
            "AWS_S3_REGION_NAME": REGION,
            "AWS_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }
    settings.STORAGES = {**settings.STORAGES, "files": config}
    return {"kind": request.param, **env}


@pytest.fixture
def worker(settings: Any, storage: dict[str, str]) -> Iterator[WorkerProcess]:
    """A worker process on this test's file storage and a broker of its own."""
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    env = {key: value for key, value in storage.items() if key != "kind"}
    redis = RedisServer()
    redis.start()
    process = WorkerProcess(redis.url, concurrency=4, extra_env=env)
    try:
        with broker(redis.url):
            process.start()
            yield process
    finally:
        process.stop()
        redis.close()


def build(cast: Any, fake_llm: FakeLLMServer, server: ToolServer, kind: str) -> Any:
    project_services.secret_create(project=cast.project, actor=cast.owner, name="llm", value=KEY)
    agent_services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="Reader",
        slug="reader",
        provider=kind,
        model="gpt-test-1" if kind == "openai" else "claude-test-1",
        base_url=fake_llm.openai_base_url if kind == "openai" else fake_llm.anthropic_base_url,
        credentials_secret="llm",
    )
    tool_services.tool_create(
        actor=cast.owner,
        project=cast.project,
        name="render_report",
        kind="http",
        parameters={"type": "object", "properties": {"summary": {"type": "string"}}},
        config={
            "method": "POST",
            "url": server.url + "/render",
            "body": {"summary": "{{ args.summary }}"},
            "save_response_as_file": True,
            "response_file_name": "report.md",
        },
    )
    tool_services.tool_create(
        actor=cast.owner,
        project=cast.project,
        name="publish",
        kind="http",
        parameters={"type": "object", "properties": {"file": {"type": "object"}}},
        config={"method": "PUT", "url": server.url + "/publish", "body_file": "{{ args.file }}"},
    )
    server.route(
        "/render",
        lambda hit: (200, Raw(f"# Report\n\n{hit.body['summary']}\n".encode())),
    )
    return workflow_services.workflow_create(
        actor=cast.owner,
        project=cast.project,
        name="Describe and publish",
        definition={
            "input_schema": {
                "type": "object",
                "properties": {"photo": FILE, "notes": FILE},
                "required": ["photo", "notes"],
            },
            "nodes": [
                {
                    "id": "read",
                    "type": "agent",
                    "agent": "reader",
                    "prompt": "Describe the image {{ input.photo.name }}, then summarise "
                    "{{ input.notes.name }}.",
                    "files": ["{{ input.photo }}", "{{ input.notes }}"],
                },
                {
                    "id": "render",
                    "type": "tool",
                    "tool": "render_report",
                    "depends_on": ["read"],
                    "args": {"summary": "{{ steps.read.output.text }}"},
                },
                {
                    "id": "publish",
                    "type": "tool",
                    "tool": "publish",
                    "depends_on": ["render"],
                    "args": {"file": "{{ steps.render.output }}"},
                },
            ],
            "output": {
                "summary": "{{ steps.read.output.text }}",
                "report": "{{ steps.render.output }}",
            },
        },
    )


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_upload_describe_summarise_publish_and_read_back(
    cast: Any, storage: dict[str, str], worker: WorkerProcess, tool_server: ToolServer, kind: str
) -> None:
    with FakeLLMServer() as fake_llm:
        workflow = build(cast, fake_llm, tool_server, kind)
        photo = files.file_save(
            project=cast.project, name="otter.png", content=PNG, uploaded_by=cast.owner
        )
        notes = files.file_save(
            project=cast.project, name="otters.txt", content=NOTES, uploaded_by=cast.owner
        )
        answer = "A small grey square. Otters hold hands asleep."
        fake_llm.enqueue(kind, {"content": answer, "input_tokens": 1200, "output_tokens": 11})
        run = services.run_create(
            workflow=workflow,
            input={"photo": {"file": str(photo.pk)}, "notes": {"file": str(notes.pk)}},
            actor=cast.owner,
        )
        run = wait_for_run(run.pk, timeout=60)
        assert run.status == "succeeded", (run.error, worker.output())

        (request,) = fake_llm.requests_for(kind)
    user = next(m for m in request.body["messages"] if m["role"] == "user")
    data = base64.b64encode(PNG).decode()
    image = (
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
        if kind == "openai"
        else {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": data},
        }
    )
    assert user["content"] == [
        {"type": "text", "text": "Describe the image otter.png, then summarise otters.txt."},
        image,
        {"type": "text", "text": f'File "otters.txt" (text/plain):\n{NOTES.decode()}'},
    ]
    assert (run.input_tokens, run.output_tokens) == (1200, 11)

    report = File.objects.get(pk=run.output["report"]["file"])
    expected = f"# Report\n\n{answer}\n".encode()
    assert (report.name, report.source, report.run_id, report.node_id) == (
        "report.md",
        "run",
        run.pk,
        "render",
    )
    (published,) = tool_server.calls("/publish")
    assert published.method == "PUT"
    assert published.raw == expected
    assert published.headers["content-type"] == "text/markdown"
    assert files.file_read(report) == expected
    if storage["kind"] == "s3":  # the worker wrote the report where this process reads it
        s3 = S3Server(endpoint_url=storage["AWS_S3_ENDPOINT_URL"])
        assert report.path in s3.keys(storage["AWS_STORAGE_BUCKET_NAME"])
    assert run.output == {"summary": answer, "report": files.file_ref(report)}
