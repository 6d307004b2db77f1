"""Content-Security-Policy on every answer (django-csp; README, "Security headers").

HTML pages (the admin, the operator console, the browsable API, Swagger UI and ReDoc) get
`CONTENT_SECURITY_POLICY`: everything from this origin, no inline script at all, `<style>` only
with the response's nonce, no plugins, no framing. Anything else (JSON, the event stream,
metrics, files) is never a document a browser should run or style, so it gets the strictest
policy: `default-src 'none'; frame-ancestors 'none'`. DRF's browsable API also allows inline
styles (its templates are full of them; never inline script). A view may still adjust its
policy with django-csp's decorators (ReDoc's, in sparkops/urls.py)."""

from __future__ import annotations

from typing import Any

from csp.constants import NONE, SELF, UNSAFE_INLINE
from csp.middleware import CSPMiddleware, PolicyParts
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from rest_framework.renderers import BrowsableAPIRenderer

NOT_A_PAGE: dict[str, Any] = {"default-src": [NONE], "frame-ancestors": [NONE]}


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if report_only or parts.config is not None:
            return parts
        if not response.get("Content-Type", "").startswith("text/html"):
            parts.config = NOT_A_PAGE
        elif isinstance(getattr(response, "accepted_renderer", None), BrowsableAPIRenderer):
            # DRF's browsable API writes style="" attributes and a <style> of highlighting
            # rules into its own templates; its scripts are files, so script-src stays 'self'.
            parts.replace = {**(parts.replace or {}), "style-src": [SELF, UNSAFE_INLINE]}
        return parts
