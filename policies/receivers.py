"""Where governance listens: logins, for the audit log."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

from sparkops.audit import audit_record


@receiver(user_logged_in, dispatch_uid="policies.user_logged_in")
def on_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Session logins (the operator console); the JWT login view records its own."""
    audit_record(
        actor=user, project=None, action="auth.login", obj=user, changes={"via": "session"}
    )


@receiver(user_login_failed, dispatch_uid="policies.user_login_failed")
def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
) -> None:
    email = str(credentials.get("username") or credentials.get("email") or "")[:254]
    audit_record(actor=None, project=None, action="auth.login_failed", changes={"email": email})
