"""Per-request audit context: the client's IP, for the audit log."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from sparkops.audit import client_ip


def request_ip(request: HttpRequest) -> str | None:
    """REMOTE_ADDR, or with NUM_PROXIES trusted proxies in front, the address the outermost
    trusted proxy saw (the same rule as DRF's throttles)."""
    proxies = settings.REST_FRAMEWORK.get("NUM_PROXIES") or 0
    address = request.META.get("REMOTE_ADDR") or ""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            address = hops[-min(proxies, len(hops))]
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


class GovernanceMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        token = client_ip.set(request_ip(request))
        try:
            return self.get_response(request)
        finally:
            client_ip.reset(token)
