"""Files in runs (issue #18): an input property can be a file (`"format": "file"`), checked at
run creation and expanded to the file's metadata that templates read."""

from __future__ import annotations

from typing import Any

import pytest

from projects import files
from runs import services
from runs.models import Run
from runs.tests.conftest import drive
from runs.tests.factories import make_workflow, transform

URL = "/api/v1/runs/"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + b"\0" * 32
FILE = {"type": "object", "format": "file"}


@pytest.fixture(autouse=True)
def local_files(settings: Any, tmp_path: Any) -> Any:
    settings.STORAGES = {
        **settings.STORAGES,
        "files": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    return tmp_path


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
    assert response.json()["input"]["doc"] == files.file_ref(doc)
    run = drive(Run.objects.get(pk=response.json()["id"]))
    assert run.status == "succeeded", run.error
    assert run.input == {"doc": files.file_ref(doc), "pages": [files.file_ref(page)]}
    assert run.steps.get().output == {"line": "notes.txt (text/plain, 5 bytes)", "first": "p1.png"}


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
