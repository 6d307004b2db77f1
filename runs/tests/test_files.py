"""Files in runs (issue #18): an input property can be a file (`"format": "file"`), checked at
run creation and expanded to the file's metadata that templates read; an agent node's `files`
reach the model through the real SDKs in each one's native format (images as images, text
files and PDFs as text, within the caps), with policies applied."""

from __future__ import annotations

import base64
import io
import json
from email import policy
from email.parser import BytesParser
from typing import Any

import pytest
from django.db import transaction

from accounts.tests.factories import UserFactory
from agents import services as agent_services
from agents.attachments import attachment_for
from policies.tests.factories import make_policy
from projects import files
from projects import services as project_services
from projects.models import File
from runs import services
from runs.models import Run
from runs.tests.conftest import Raw, drive, events_of
from runs.tests.factories import make_workflow, transform
from sparkops.errors import InvalidInput
from sparkops.testing.engine import wait_for_run
from tools import services as tool_services

URL = "/api/v1/runs/"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + b"\0" * 32
FILE = {"type": "object", "format": "file"}


@pytest.fixture(autouse=True)
def _local(local_files: Any) -> Any:
    return local_files


def file_workflow(cast: Any) -> Any:
    return make_workflow(
        cast.project,
        cast.owner,
        [
            transform(
                "describe",
                {
                    "line": "{{ input.doc.name }} ({{ input.doc.content_type }}, "
                    "{{ input.doc.size }} bytes)",
                    "first": "{{ input.pages[0].name }}",
                },
            )
        ],
        input_schema={
            "type": "object",
            "properties": {
                "doc": FILE,
                "pages": {"type": "array", "items": FILE},
                "title": {"type": "string"},
            },
            "required": ["doc"],
        },
        name="files",
    )


# --- input file references ------------------------------------------------------------------


@pytest.mark.django_db
def test_a_file_input_is_expanded_to_its_metadata_that_templates_read(cast: Any) -> None:
    doc = files.file_save(project=cast.project, name="notes.txt", content=b"hello")
    page = files.file_save(project=cast.project, name="p1.png", content=PNG)
    response = cast.client("developer").post(
        URL,
        {
            "workflow": file_workflow(cast).pk,
            "input": {"doc": {"file": str(doc.pk)}, "pages": [{"file": str(page.pk)}]},
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["input"]["doc"] == {
        **files.file_ref(doc),
        "url": f"http://testserver/api/v1/files/{doc.pk}/content/",
    }
    run = drive(Run.objects.get(pk=response.json()["id"]))
    assert run.status == "succeeded", run.error
    assert run.input == {"doc": files.file_ref(doc), "pages": [files.file_ref(page)]}
    assert run.steps.get().output == {"line": "notes.txt (text/plain, 5 bytes)", "first": "p1.png"}


@pytest.mark.django_db
def test_an_optional_file_may_be_null_or_left_out(cast: Any) -> None:
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [transform("t", {"doc": "{{ input.doc | default(none) }}"})],
        input_schema={
            "type": "object",
            "properties": {"doc": {"type": ["object", "null"], "format": "file"}},
        },
        name="optional",
    )
    for input in ({"doc": None}, {}):
        run = drive(services.run_create(workflow=workflow, input=input, actor=cast.owner))
        assert run.status == "succeeded", run.error
        assert run.input == input
        assert run.steps.get().output == {"doc": None}


@pytest.mark.django_db
def test_a_retried_run_checks_its_files_again(cast: Any) -> None:
    doc = files.file_save(project=cast.project, name="notes.txt", content=b"hello")
    run = services.run_create(
        workflow=file_workflow(cast), input={"doc": {"file": str(doc.pk)}}, actor=cast.owner
    )
    run = drive(run)
    again = services.run_retry(run=run, actor=cast.owner)
    assert again.input == run.input
    files.file_delete(doc)
    response = cast.client("developer").post(f"{URL}{run.pk}/retry/", format="json")
    assert response.status_code == 400, response.json()
    assert "input.doc" in response.json()["errors"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        ({"file": "not-a-uuid"}, "input.doc", "No file 'not-a-uuid' in this project."),
        ({"file": "0b6c3e8e-4a53-4f0e-9a57-1f1f5e1f0a11"}, "input.doc", "No file"),
        ({"file": 12}, "input.doc", 'Must be a file reference: {"file": "<id>"}.'),
        ({"name": "x"}, "input.doc", "Must be a file reference"),
        ("just-a-string", "input.doc", "object"),  # the schema's own check
    ],
)
def test_a_bad_file_reference_is_a_400_naming_the_field(
    cast: Any, value: Any, field: str, message: str
) -> None:
    response = cast.client("developer").post(
        URL, {"workflow": file_workflow(cast).pk, "input": {"doc": value}}, format="json"
    )
    assert response.status_code == 400, response.json()
    errors = response.json()["errors"]
    assert message in " ".join(errors[field]), errors
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_a_file_of_another_project_is_not_found(cast: Any) -> None:
    theirs = files.file_save(project=cast.other_project, name="secret.txt", content=b"theirs")
    ok = files.file_save(project=cast.project, name="ok.txt", content=b"ours")
    response = cast.client("developer").post(
        URL,
        {
            "workflow": file_workflow(cast).pk,
            "input": {"doc": {"file": str(ok.pk)}, "pages": [{"file": str(theirs.pk)}]},
        },
        format="json",
    )
    assert response.status_code == 400, response.json()
    assert response.json()["errors"] == {
        "input.pages[0]": [f"No file {str(theirs.pk)!r} in this project."]
    }
    assert not Run.objects.exists()


# --- agents read files (real worker, real SDKs, the fake provider server) -------------------

KEY = "sk-fake-files-never-recorded"
MODELS = {"openai": "gpt-test-1", "anthropic": "claude-test-1"}
EMAIL = "jane.doe@example.com"


def pdf(*pages: str) -> bytes:
    """A small PDF whose pages show `pages` in Helvetica (pypdf extracts them back)."""
    count = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(count))
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {count} >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n{body}\nendobj\n".encode())
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def make_agent(cast: Any, fake_llm: Any, provider: str) -> Any:
    project_services.secret_create(
        project=cast.project, actor=cast.owner, name="llm_key", value=KEY
    )
    base_url = fake_llm.openai_base_url if provider == "openai" else fake_llm.anthropic_base_url
    return agent_services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="Reader",
        slug="reader",
        provider=provider,
        model=MODELS[provider],
        base_url=base_url,
        credentials_secret="llm_key",
        system_prompt="You read files.",
    )


def reading_workflow(cast: Any, files_field: list[str] | None = None) -> Any:
    return make_workflow(
        cast.project,
        cast.owner,
        [
            {
                "id": "read",
                "type": "agent",
                "agent": "reader",
                "prompt": "Describe {{ input.image.name }} and summarise the rest.",
                "files": files_field or ["{{ input.image }}", "{{ input.docs }}"],
            }
        ],
        input_schema={
            "type": "object",
            "properties": {"image": FILE, "docs": {"type": "array", "items": FILE}},
        },
        output={"answer": "{{ steps.read.output.text }}"},
        name="reader",
    )


def file_input(image: Any, *docs: Any) -> dict[str, Any]:
    return {"image": {"file": str(image.pk)}, "docs": [{"file": str(d.pk)} for d in docs]}


def user_message(kind: str, request: Any) -> dict[str, Any]:
    return next(m for m in request.body["messages"] if m["role"] == "user")


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_an_agent_is_sent_images_and_text_in_its_sdks_native_format(
    cast: Any, fake_llm: Any, kind: str
) -> None:
    image = files.file_save(project=cast.project, name="cat.png", content=PNG)
    notes = files.file_save(project=cast.project, name="notes.md", content=b"# Notes\nOtters.")
    report = files.file_save(
        project=cast.project, name="q3.pdf", content=pdf("Revenue grew", "Costs fell")
    )
    make_agent(cast, fake_llm, kind)
    fake_llm.enqueue(kind, {"content": "A cat; otters.", "input_tokens": 900, "output_tokens": 7})
    run = wait_for_run(
        services.run_create(
            workflow=reading_workflow(cast),
            input=file_input(image, notes, report),
            actor=cast.owner,
        ).pk
    )
    assert run.status == "succeeded", run.error
    assert run.output == {"answer": "A cat; otters."}
    (request,) = fake_llm.requests_for(kind)
    content = user_message(kind, request)["content"]
    prompt = "Describe cat.png and summarise the rest."
    data = base64.b64encode(PNG).decode()
    notes_text = 'File "notes.md" (text/markdown):\n# Notes\nOtters.'
    pdf_text = 'File "q3.pdf" (application/pdf):\nRevenue grew\n\nCosts fell'
    if kind == "openai":
        assert content == [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
            {"type": "text", "text": notes_text},
            {"type": "text", "text": pdf_text},
        ]
    else:
        assert content == [
            {"type": "text", "text": prompt},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": data},
            },
            {"type": "text", "text": notes_text},
            {"type": "text", "text": pdf_text},
        ]
    step = run.steps.get()
    assert step.input["files"] == [files.file_ref(f) for f in (image, notes, report)]
    # tokens and cost come from the provider's usage, images included, as for any call
    (call,) = events_of(run, "llm.call")
    assert (call.payload["input_tokens"], call.payload["output_tokens"]) == (900, 7)
    assert (step.input_tokens, step.output_tokens) == (900, 7)
    assert data not in json.dumps([step.input, step.output, step.state], default=str)


@pytest.mark.usefixtures("engine")
def test_text_and_pdf_pages_are_cut_at_the_caps(cast: Any, fake_llm: Any, settings: Any) -> None:
    settings.SPARKOPS_AGENT_FILE_MAX_CHARS = 10
    settings.SPARKOPS_AGENT_FILE_MAX_PAGES = 2
    image = files.file_save(project=cast.project, name="cat.png", content=PNG)
    long = files.file_save(project=cast.project, name="long.txt", content=b"abcdefghij" * 50)
    report = files.file_save(project=cast.project, name="r.pdf", content=pdf("One", "Two", "3"))
    make_agent(cast, fake_llm, "openai")
    run = wait_for_run(
        services.run_create(
            workflow=reading_workflow(cast), input=file_input(image, long, report), actor=cast.owner
        ).pk
    )
    assert run.status == "succeeded", run.error
    texts = [p["text"] for p in user_message("openai", fake_llm.requests[0])["content"][2:]]
    assert texts == [
        'File "long.txt" (text/plain):\nabcdefghij\n[truncated: the file has 500 bytes]',
        'File "r.pdf" (application/pdf):\nOne\n\nTwo\n[truncated: the first 2 of 3 pages]',
    ]


@pytest.mark.usefixtures("engine")
def test_a_file_the_model_cannot_read_fails_the_step_clearly(cast: Any, fake_llm: Any) -> None:
    image = files.file_save(project=cast.project, name="cat.png", content=PNG)
    blob = files.file_save(project=cast.project, name="data.bin", content=b"\x00\x01\xff" * 9)
    make_agent(cast, fake_llm, "anthropic")
    run = wait_for_run(
        services.run_create(
            workflow=reading_workflow(cast), input=file_input(image, blob), actor=cast.owner
        ).pk
    )
    assert run.status == "failed"
    error = run.steps.get().error
    assert error["type"] == "unreadable_file", error
    assert error["message"] == (
        "File 'data.bin' (application/octet-stream) cannot be sent to a model: it reads PNG, "
        "JPEG, GIF and WebP images, text files and PDFs."
    )
    assert fake_llm.requests_for("anthropic") == []


@pytest.mark.usefixtures("engine")
def test_a_deleted_file_fails_the_step(cast: Any, fake_llm: Any) -> None:
    image = files.file_save(project=cast.project, name="cat.png", content=PNG)
    make_agent(cast, fake_llm, "openai")
    workflow = reading_workflow(cast, ["{{ input.image }}", "{{ input.docs }}"])
    with transaction.atomic():  # deleted after the run checked it, before its first task
        run = services.run_create(workflow=workflow, input=file_input(image), actor=cast.owner)
        files.file_delete(image)
    run = wait_for_run(run.pk)
    assert run.status == "failed"
    assert run.steps.get().error["type"] == "file_not_found"
    assert fake_llm.requests == []


@pytest.mark.usefixtures("engine")
def test_content_rules_and_token_limits_apply_to_a_files_text(cast: Any, fake_llm: Any) -> None:
    image = files.file_save(project=cast.project, name="cat.png", content=PNG)
    notes = files.file_save(project=cast.project, name="n.txt", content=f"mail {EMAIL}".encode())
    make_agent(cast, fake_llm, "openai")
    make_policy(cast.project, cast.owner, "pii", {"apply_to": ["prompt"]})
    run = wait_for_run(
        services.run_create(
            workflow=reading_workflow(cast), input=file_input(image, notes), actor=cast.owner
        ).pk
    )
    assert run.status == "succeeded", run.error
    sent = json.dumps(fake_llm.requests_for("openai")[0].body)
    assert EMAIL not in sent and "mail [REDACTED_EMAIL]" in sent

    big = files.file_save(project=cast.project, name="big.txt", content=b"word " * 2000)
    policy = make_policy(
        cast.project,
        cast.owner,
        "max_tokens_per_call",
        {"max_tokens": 256, "max_input_tokens": 500},
        name="short prompts",
    )
    run = wait_for_run(
        services.run_create(
            workflow=reading_workflow(cast), input=file_input(image, big), actor=cast.owner
        ).pk
    )
    assert run.status == "failed"
    error = run.steps.get().error
    assert error["type"] == "policy_denied" and error["policy"]["id"] == policy.pk
    assert "input tokens" in error["message"]
    assert len(fake_llm.requests_for("openai")) == 1  # the refused call was never made


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("files_field", "where"),
    [
        ("{{ input.image }}", "definition.nodes[0].files"),
        ([7], "definition.nodes[0].files[0]"),
        (["{{ steps.nowhere.output }}"], "definition.nodes[0].files[0]"),
        (["x"] * 21, "definition.nodes[0].files"),
    ],
)
def test_an_agents_files_are_checked_when_the_workflow_is_saved(
    cast: Any, fake_llm: Any, settings: Any, files_field: Any, where: str
) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    make_agent(cast, fake_llm, "openai")
    node = {"id": "read", "type": "agent", "agent": "reader", "prompt": "Hi", "files": files_field}
    response = cast.client("developer").post(
        "/api/v1/workflows/",
        {"project": str(cast.project.pk), "name": "bad", "definition": {"nodes": [node]}},
        format="json",
    )
    assert response.status_code == 400, response.json()
    assert where in response.json()["errors"], response.json()


# --- HTTP tools send and save files ---------------------------------------------------------


def file_tool(cast: Any, name: str, url: str, **config: Any) -> Any:
    return tool_services.tool_create(
        actor=cast.owner,
        project=cast.project,
        name=name,
        kind="http",
        parameters={"type": "object", "properties": {"file": {"type": "object"}}},
        config={"method": "POST", "url": url, **config},
    )


def tool_run(cast: Any, tool: str, args: dict[str, Any], doc: Any = None) -> Run:
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [{"id": "send", "type": "tool", "tool": tool, "args": args}],
        input_schema={"type": "object", "properties": {"doc": FILE}},
        output={"sent": "{{ steps.send.output }}"},
        name=f"send-{tool}",
    )
    input = {"doc": {"file": str(doc.pk)}} if doc is not None else {}
    return wait_for_run(services.run_create(workflow=workflow, input=input, actor=cast.owner).pk)


@pytest.mark.usefixtures("engine")
def test_an_http_tool_sends_a_file_as_the_body(cast: Any, tool_server: Any) -> None:
    doc = files.file_save(project=cast.project, name="cat.png", content=PNG)
    url = tool_server.url + "/upload"
    file_tool(cast, "put_file", url, body_file="{{ args.file }}")
    run = tool_run(cast, "put_file", {"file": "{{ input.doc }}"}, doc)
    assert run.status == "succeeded", run.error
    (hit,) = tool_server.calls("/upload")
    assert hit.raw == PNG
    assert hit.headers["content-type"] == "image/png"


@pytest.mark.usefixtures("engine")
def test_an_http_tool_sends_a_file_as_a_multipart_part(cast: Any, tool_server: Any) -> None:
    doc = files.file_save(project=cast.project, name="notes.md", content=b"# Notes\nOtters.")
    file_tool(
        cast,
        "form_post",
        tool_server.url + "/form",
        multipart={"document": "{{ args.file }}", "title": "Notes of {{ args.file.name }}"},
    )
    run = tool_run(cast, "form_post", {"file": "{{ input.doc }}"}, doc)
    assert run.status == "succeeded", run.error
    (hit,) = tool_server.calls("/form")
    assert hit.headers["content-type"].startswith("multipart/form-data; boundary=")
    head = f"Content-Type: {hit.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=policy.default).parsebytes(head + hit.raw)
    parts = {
        part.get_param("name", header="content-disposition"): part for part in message.iter_parts()
    }
    assert parts["document"].get_filename() == "notes.md"
    assert parts["document"].get_content_type() == "text/markdown"
    assert parts["document"].get_payload(decode=True) == b"# Notes\nOtters."
    assert parts["title"].get_payload(decode=True) == b"Notes of notes.md"


@pytest.mark.usefixtures("engine")
def test_a_multipart_body_of_fields_only_is_still_multipart(cast: Any, tool_server: Any) -> None:
    file_tool(cast, "form_post", tool_server.url + "/form", multipart={"n": "{{ args.file.n }}"})
    run = tool_run(cast, "form_post", {"file": {"n": 7}})
    assert run.status == "succeeded", run.error
    (hit,) = tool_server.calls("/form")
    assert hit.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'Content-Disposition: form-data; name="n"\r\n\r\n7\r\n' in hit.raw


@pytest.mark.usefixtures("engine")
def test_an_http_tool_saves_its_response_as_a_file_without_secrets(
    cast: Any, tool_server: Any
) -> None:
    token = "tok-4f1e0c9a-very-secret"
    project_services.secret_create(
        project=cast.project, actor=cast.owner, name="api_token", value=token
    )
    body = f"report for bearer {token}\n".encode() + PNG
    tool_server.route(
        "/report",
        lambda hit: (
            200,
            Raw(
                body,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Disposition": 'attachment; filename="report.bin"',
                },
            ),
        ),
    )
    file_tool(
        cast,
        "get_report",
        tool_server.url + "/report",
        body={"q": "all"},
        auth={"type": "bearer", "secret": "api_token"},
        save_response_as_file=True,
    )
    run = tool_run(cast, "get_report", {})
    assert run.status == "succeeded", run.error
    output = run.steps.get().output
    assert output is not None
    saved = File.objects.get(pk=output["file"])
    assert output == files.file_ref(saved)
    assert run.output == {"sent": output}
    assert (saved.name, saved.source, saved.run_id, saved.node_id) == (
        "report.bin",
        "run",
        run.pk,
        "send",
    )
    assert files.file_read(saved) == b"report for bearer ***\n" + PNG
    assert tool_server.calls("/report")[0].headers["authorization"] == f"Bearer {token}"


@pytest.mark.usefixtures("engine")
def test_a_response_larger_than_the_file_limit_fails_clearly(
    cast: Any, tool_server: Any, settings: Any
) -> None:
    settings.SPARKOPS_FILE_MAX_BYTES = 100
    tool_server.route("/big", lambda hit: (200, Raw(b"x" * 1000)))
    file_tool(
        cast,
        "get_big",
        tool_server.url + "/big",
        save_response_as_file=True,
        response_file_name="big-{{ args.file.name }}.txt",
    )
    run = tool_run(cast, "get_big", {"file": {"name": "one"}})
    assert run.status == "failed"
    error = run.steps.get().error
    assert error is not None and error["type"] == "tool_error"
    assert "larger than the file limit of 100 bytes" in error["message"], error
    assert not File.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"body": "{{ args }}", "body_file": "{{ args.file }}"}, "config.body_file", "one body"),
        ({"method": "GET", "body_file": "{{ args.file }}"}, "config.body_file", "no body"),
        ({"multipart": {"f": "{{ nope.file }}"}}, "config.multipart.f", "Unknown name"),
        ({"multipart": {}}, "config.multipart", ""),
        ({"response_file_name": "x.txt"}, "config.response_file_name", "Only a tool"),
        ({"save_response_as_file": "yes"}, "config.save_response_as_file", ""),
    ],
)
def test_file_settings_of_an_http_tool_are_checked_on_save(
    cast: Any, config: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        file_tool(cast, "bad", "https://example.com/x", **config)
    errors = raised.value.errors or {}
    assert message in " ".join(errors[field]), errors


# --- outputs that are files show as links ---------------------------------------------------


def passing_workflow(cast: Any) -> Any:
    return make_workflow(
        cast.project,
        cast.owner,
        [transform("pick", {"chosen": "{{ input.doc }}", "note": "kept"})],
        input_schema={"type": "object", "properties": {"doc": FILE}},
        output="{{ steps.pick.output.chosen }}",
        name="passing",
    )


@pytest.mark.django_db
def test_file_references_in_the_api_carry_a_download_url(cast: Any) -> None:
    doc = files.file_save(project=cast.project, name="notes.txt", content=b"hello")
    run = drive(
        services.run_create(
            workflow=passing_workflow(cast), input={"doc": {"file": str(doc.pk)}}, actor=cast.owner
        )
    )
    assert run.status == "succeeded", run.error
    url = f"http://testserver/api/v1/files/{doc.pk}/content/"
    linked = {**files.file_ref(doc), "url": url}
    client = cast.client("viewer")
    detail = client.get(f"{URL}{run.pk}/").json()
    assert detail["input"] == {"doc": linked}
    assert detail["output"] == linked
    (listed,) = client.get(URL).json()["results"]
    assert listed["output"] == linked
    (step,) = client.get(f"{URL}{run.pk}/steps/").json()
    assert step["output"] == {"chosen": linked, "note": "kept"}
    # stored as it was: the URL is the API's, not the run's
    assert Run.objects.get(pk=run.pk).output == files.file_ref(doc)


@pytest.mark.django_db
def test_the_console_run_page_links_the_files(cast: Any, client: Any) -> None:
    doc = files.file_save(project=cast.project, name="notes.txt", content=b"hello")
    run = drive(
        services.run_create(
            workflow=passing_workflow(cast), input={"doc": {"file": str(doc.pk)}}, actor=cast.owner
        )
    )
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    link = f'<a href="/api/v1/files/{doc.pk}/content/" download>notes.txt</a>'
    html = client.get(f"/admin/runs/run/{run.pk}/change/").content.decode()
    assert html.count(link) == 1, html  # input, step output and run output: one file
    assert "text/plain, 5 bytes" in html
    step = run.steps.get()
    html = client.get(f"/admin/runs/runstep/{step.pk}/change/").content.decode()
    assert link in html


# --- what the README promises besides -------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_a_paused_agent_loop_keeps_no_image_and_sends_it_again_on_resume(
    cast: Any, fake_llm: Any, tool_server: Any
) -> None:
    image = files.file_save(project=cast.project, name="cat.png", content=PNG)
    url = tool_server.route("/send", lambda hit: (200, {"ok": True}))
    send = tool_services.tool_create(
        actor=cast.owner,
        project=cast.project,
        name="send",
        kind="http",
        parameters={"type": "object", "properties": {}},
        config={"method": "POST", "url": url, "body": "{{ args }}"},
    )
    agent = make_agent(cast, fake_llm, "anthropic")
    agent_services.agent_update(agent=agent, actor=cast.owner, tools=[send.pk])
    make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["send"]})
    call = {"id": "call_s", "name": "send", "arguments": {}}
    fake_llm.enqueue("anthropic", {"tool_calls": [call]})
    fake_llm.enqueue("anthropic", {"content": "Sent."})
    run = services.run_create(
        workflow=reading_workflow(cast), input=file_input(image), actor=cast.owner
    )
    run = wait_for_run(run.pk, ("waiting_approval",))
    step = run.steps.get()
    data = base64.b64encode(PNG).decode()
    assert step.state and data not in json.dumps(step.state)
    response = cast.client("developer").post(
        f"{URL}{run.pk}/steps/read/approve", {"comment": ""}, format="json"
    )
    assert response.status_code == 200, response.json()
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    first, second = fake_llm.requests_for("anthropic")
    assert user_message("anthropic", first) == user_message("anthropic", second)
    assert user_message("anthropic", second)["content"][1]["source"]["data"] == data


@pytest.mark.usefixtures("engine")
def test_null_files_are_skipped_and_a_value_that_is_no_file_fails_the_step(
    cast: Any, fake_llm: Any
) -> None:
    image = files.file_save(project=cast.project, name="cat.png", content=PNG)
    make_agent(cast, fake_llm, "openai")
    workflow = reading_workflow(cast, ["{{ input.image }}", "{{ input.docs | default(none) }}"])
    only_image = {"image": {"file": str(image.pk)}}  # docs left out
    run = wait_for_run(
        services.run_create(workflow=workflow, input=only_image, actor=cast.owner).pk
    )
    assert run.status == "succeeded", run.error
    assert len(user_message("openai", fake_llm.requests[0])["content"]) == 2  # text and image

    workflow = reading_workflow(cast, ["{{ input.image.name }}"])
    run = wait_for_run(
        services.run_create(workflow=workflow, input=file_input(image), actor=cast.owner).pk
    )
    assert run.status == "failed"
    error = run.steps.get().error
    assert error["type"] == "invalid_file" and '"cat.png"' in error["message"], error


@pytest.mark.django_db
def test_images_over_the_cap_and_broken_pdfs_are_refused_with_the_reason(
    cast: Any, settings: Any
) -> None:
    settings.SPARKOPS_AGENT_IMAGE_MAX_BYTES = 10
    image = files.file_save(project=cast.project, name="cat.png", content=PNG)
    with pytest.raises(InvalidInput, match=r"Image 'cat\.png' has 48 bytes; .* at most 10 bytes"):
        attachment_for(image)
    broken = files.file_save(project=cast.project, name="x.pdf", content=b"%PDF-1.4\n" + PNG)
    assert broken.content_type == "application/pdf"
    with pytest.raises(InvalidInput, match=r"File 'x\.pdf' is not a PDF that can be read"):
        attachment_for(broken)


@pytest.mark.usefixtures("engine")
def test_an_http_tool_file_from_another_project_fails_naming_the_field(
    cast: Any, tool_server: Any
) -> None:
    theirs = files.file_save(project=cast.other_project, name="t.txt", content=b"theirs")
    file_tool(cast, "put_file", tool_server.url + "/upload", body_file="{{ args.file }}")
    run = tool_run(cast, "put_file", {"file": {"file": str(theirs.pk)}})
    assert run.status == "failed"
    error = run.steps.get().error
    assert error is not None
    assert error["message"] == f"config.body_file: No file {str(theirs.pk)!r} in this project."
    assert tool_server.calls("/upload") == []


@pytest.mark.usefixtures("engine")
def test_headers_set_the_sent_files_type_and_an_unnamed_response_is_response(
    cast: Any, tool_server: Any
) -> None:
    doc = files.file_save(project=cast.project, name="cat.png", content=PNG)
    file_tool(
        cast,
        "put_file",
        tool_server.url + "/upload",
        body_file="{{ args.file }}",
        headers={"content-type": "application/x-custom"},
        save_response_as_file=True,
    )
    run = tool_run(cast, "put_file", {"file": "{{ input.doc }}"}, doc)
    assert run.status == "succeeded", run.error
    (hit,) = tool_server.calls("/upload")
    assert hit.headers["content-type"] == "application/x-custom" and hit.raw == PNG
    output = run.steps.get().output
    assert output is not None
    saved = File.objects.get(pk=output["file"])
    # the type is sniffed from the bytes, never the server's word: JSON without an extension
    assert (saved.name, saved.content_type) == ("response", "text/plain")
    assert json.loads(files.file_read(saved))["path"] == "/upload"


@pytest.mark.usefixtures("engine")
def test_content_rules_of_tool_outputs_apply_to_a_saved_text_file(
    cast: Any, tool_server: Any
) -> None:
    tool_server.route("/contacts", lambda hit: (200, Raw(f"name,mail\nJane,{EMAIL}\n".encode())))
    make_policy(cast.project, cast.owner, "pii", {"apply_to": ["tool_output"]})
    file_tool(
        cast,
        "export",
        tool_server.url + "/contacts",
        save_response_as_file=True,
        response_file_name="contacts.csv",
    )
    run = tool_run(cast, "export", {})
    assert run.status == "succeeded", run.error
    output = run.steps.get().output
    assert output is not None
    saved = File.objects.get(pk=output["file"])
    assert files.file_read(saved) == b"name,mail\nJane,[REDACTED_EMAIL]\n"
    assert saved.size == len(b"name,mail\nJane,[REDACTED_EMAIL]\n")


@pytest.mark.usefixtures("engine")
def test_a_saved_text_file_a_content_rule_denies_fails_the_step(
    cast: Any, tool_server: Any
) -> None:
    tool_server.route("/plans", lambda hit: (200, Raw(b"PROJECT X launches in May\n")))
    policy = make_policy(
        cast.project,
        cast.owner,
        "blocked_patterns",
        {"patterns": ["project x"], "apply_to": ["tool_output"]},
    )
    file_tool(cast, "plans", tool_server.url + "/plans", save_response_as_file=True)
    run = tool_run(cast, "plans", {})
    assert run.status == "failed"
    error = run.steps.get().error
    assert error is not None and error["type"] == "policy_denied", error
    assert error["policy"]["id"] == policy.pk
    assert not File.objects.exists()


@pytest.mark.usefixtures("engine")
def test_an_agent_cannot_read_another_projects_file_by_its_id(cast: Any, fake_llm: Any) -> None:
    theirs = files.file_save(project=cast.other_project, name="t.png", content=PNG)
    make_agent(cast, fake_llm, "openai")
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [
            {
                "id": "read",
                "type": "agent",
                "agent": "reader",
                "prompt": "Look",
                "files": [f"{{{{ {{'file': '{theirs.pk}'}} }}}}"],
            }
        ],
        name="peek",
    )
    run = wait_for_run(services.run_create(workflow=workflow, input={}, actor=cast.owner).pk)
    assert run.status == "failed"
    error = run.steps.get().error
    assert error is not None and error["type"] == "file_not_found", error
    assert error["message"] == f"No file {str(theirs.pk)!r} in this project."
    assert fake_llm.requests == []
