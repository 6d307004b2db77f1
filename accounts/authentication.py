from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions


class APIKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Api-Key <key>` or `X-API-Key: <key>`."""

    keyword = "Api-Key"

    def _raw_key(self, request: Any) -> str | None:
        header = authentication.get_authorization_header(request).decode(errors="replace")
        if header:
            parts = header.split()
            if parts and parts[0].lower() == self.keyword.lower():
                if len(parts) != 2:
                    raise exceptions.AuthenticationFailed("Malformed API key header.")
                return parts[1]
            return None
        return request.META.get("HTTP_X_API_KEY") or None

    def authenticate(self, request: Any) -> tuple[Any, Any] | None:
        raw_key = self._raw_key(request)
        if raw_key is None:
            return None
        from accounts.services import api_key_authenticate

        key = api_key_authenticate(raw_key=raw_key)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API key.")
        return key.user, key

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.APIKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "Or `Authorization: Api-Key <key>`.",
        }
