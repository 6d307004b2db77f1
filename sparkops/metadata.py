"""The API's answer to OPTIONS: DRF's SimpleMetadata (name, description, renders, parses, and
the fields a POST or PUT accepts), except that a view declaring no serializer (an action such as
`POST /workflows/{id}/run`, whose body its own serializer checks inside the action) describes
no fields instead of failing on the missing `serializer_class`. The OpenAPI schema at
/api/v1/schema/ is where every request body is described."""

from __future__ import annotations

from typing import Any

from rest_framework.metadata import SimpleMetadata


class Metadata(SimpleMetadata):
    def determine_actions(self, request: Any, view: Any) -> dict[str, Any]:
        try:
            view.get_serializer_class()
        except AssertionError:  # GenericAPIView's "should include a serializer_class"
            return {}
        return super().determine_actions(request, view)
