"""What an agent sends a model of a file it reads (`files` of an agent node): images as
images, in each SDK's native form (agents.providers); text files, and PDFs through pypdf, as
text, within the caps of settings (SPARKOPS_AGENT_FILE_MAX_CHARS, _MAX_PAGES, _IMAGE_MAX_BYTES).
"""

from __future__ import annotations

import base64

from django.conf import settings

from projects.files import IMAGE_TYPES, PDF_TYPE, file_read, file_text, is_text
from projects.models import File
from sparkops.errors import InvalidInput

from .providers import Attachment


def attachment_for(file: File) -> Attachment:
    """The attachment for `file`, or InvalidInput saying why it cannot be sent (a type models
    do not read, an image over the cap, a PDF that does not parse)."""
    if file.content_type in IMAGE_TYPES:
        limit = int(settings.SPARKOPS_AGENT_IMAGE_MAX_BYTES)
        if file.size > limit:
            detail = (
                f"Image '{file.name}' has {file.size} bytes; a model is sent images of at most "
                f"{limit} bytes."
            )
            raise InvalidInput(detail, errors={"file": [detail]})
        data = base64.b64encode(file_read(file)).decode("ascii")
        return Attachment(name=file.name, media_type=file.content_type, kind="image", data=data)
    if not (is_text(file.content_type) or file.content_type == PDF_TYPE):
        detail = (
            f"File '{file.name}' ({file.content_type}) cannot be sent to a model: it reads PNG, "
            "JPEG, GIF and WebP images, text files and PDFs."
        )
        raise InvalidInput(detail, errors={"file": [detail]})
    text = file_text(
        file,
        max_chars=int(settings.SPARKOPS_AGENT_FILE_MAX_CHARS),
        max_pages=int(settings.SPARKOPS_AGENT_FILE_MAX_PAGES),
    )
    return Attachment(name=file.name, media_type=file.content_type, kind="text", text=text)
