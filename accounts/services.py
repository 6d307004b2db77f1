"""Writes for accounts: registration, profile, passwords and API keys."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken, Token
from rest_framework_simplejwt.utils import datetime_from_epoch

from sparkops.audit import audit_record
from sparkops.errors import InvalidInput, NotFound

from .models import APIKey, DeniedAccessToken, User

API_KEY_PREFIX = "spk_"


def _password_errors(password: str, user: User | None) -> list[str]:
    try:
        password_validation.validate_password(password, user)
    except DjangoValidationError as exc:
        return list(exc.messages)
    return []


# Registration cannot both succeed for new addresses and hide which are taken without email
# verification, so a taken address gets one generic refusal (no "exists"), after the password
# checks, and the auth throttles bound how fast anyone can probe (README, Access model).
REGISTRATION_REFUSED = (
    "This address cannot be registered. If you have an account, sign in or ask an operator "
    "to reset your password."
)


@transaction.atomic
def user_register(*, email: str, password: str, name: str = "") -> User:
    email = User.objects.normalize_email(email).lower()
    errors = _password_errors(password, User(email=email, name=name))
    if errors:
        raise InvalidInput("Invalid input.", errors={"password": errors})
    if User.objects.filter(email__iexact=email).exists():
        make_password(password)  # as long as a registration: the timing tells nothing either
        raise InvalidInput("Invalid input.", errors={"email": [REGISTRATION_REFUSED]})
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, password=password, name=name)
    except IntegrityError:  # a concurrent registration of the same email won the race
        raise InvalidInput("Invalid input.", errors={"email": [REGISTRATION_REFUSED]}) from None
    audit_record(actor=user, project=None, action="auth.register", obj=user)
    return user


@transaction.atomic
def user_update(
    *, user: User, name: str | None = None, settings: dict[str, Any] | None = None
) -> User:
    fields = []
    if name is not None:
        user.name = name
        fields.append("name")
    if settings is not None:
        user.settings = settings
        fields.append("settings")
    if fields:
        user.save(update_fields=fields)
        audit_record(
            actor=user,
            project=None,
            action="user.update",
            obj=user,
            changes={name: getattr(user, name) for name in fields},
        )
    return user


def tokens_revoke_all(*, user: User) -> int:
    """Blacklist every outstanding refresh token of the user (logout everywhere)."""
    outstanding = OutstandingToken.objects.filter(user=user, expires_at__gt=timezone.now()).exclude(
        blacklistedtoken__isnull=False
    )
    BlacklistedToken.objects.bulk_create(
        [BlacklistedToken(token=token) for token in outstanding], ignore_conflicts=True
    )
    return len(outstanding)


@transaction.atomic
def user_logout(*, refresh: RefreshToken, access: Token | None = None) -> None:
    """Blacklist the refresh token and deny the access token presented with the request (if
    any) until it expires: logging out ends the session now, not at the access token's expiry."""
    refresh.blacklist()
    if access is not None:
        access_token_deny(token=access)
    user = User.objects.filter(pk=refresh.payload.get(jwt_settings.USER_ID_CLAIM)).first()
    audit_record(actor=user, project=None, action="auth.logout", obj=user)


def access_token_deny(*, token: Token) -> None:
    """Refuse `token` (by its jti) until it expires. Purges rows whose tokens have expired, so
    the table holds only tokens that would otherwise still work."""
    jti = token.get(jwt_settings.JTI_CLAIM)
    exp = token.get("exp")
    if not jti or exp is None:  # simplejwt always sets both; a token without them is no access
        return
    DeniedAccessToken.objects.filter(expires_at__lte=timezone.now()).delete()
    DeniedAccessToken.objects.bulk_create(
        [DeniedAccessToken(jti=jti, expires_at=datetime_from_epoch(exp))], ignore_conflicts=True
    )


@transaction.atomic
def user_change_password(*, user: User, old_password: str, new_password: str) -> User:
    if not user.check_password(old_password):
        raise InvalidInput(
            "Invalid input.", errors={"old_password": ["The current password is not correct."]}
        )
    errors = _password_errors(new_password, user)
    if errors:
        raise InvalidInput("Invalid input.", errors={"new_password": errors})
    user.set_password(new_password)
    user.save(update_fields=["password"])
    tokens_revoke_all(user=user)
    audit_record(actor=user, project=None, action="auth.password_change", obj=user)
    return user


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@transaction.atomic
def api_key_create(
    *, user: User, name: str, expires_at: datetime | None = None
) -> tuple[APIKey, str]:
    """Returns the key row and the raw key; the raw key exists only in this return value."""
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("Invalid input.", errors={"expires_at": ["Must be in the future."]})
    prefix = secrets.token_hex(4)
    raw_key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = APIKey.objects.create(
        user=user,
        name=name,
        prefix=f"{API_KEY_PREFIX}{prefix}",
        hashed_key=hash_api_key(raw_key),
        expires_at=expires_at,
    )
    audit_record(actor=user, project=None, action="api_key.create", obj=key, changes={"name": name})
    return key, raw_key


@transaction.atomic
def api_key_revoke(*, user: User, key_id: Any) -> APIKey:
    key = APIKey.objects.filter(user=user, pk=key_id, revoked_at__isnull=True).first()
    if key is None:
        raise NotFound("API key not found.")
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    audit_record(actor=user, project=None, action="api_key.revoke", obj=key)
    return key


@transaction.atomic
def api_key_replace_default(*, user: User) -> tuple[APIKey, str]:
    """The seed route's single key named "default": issuing one revokes the previous one."""
    api_key_revoke_default(user=user)
    return api_key_create(user=user, name="default")


@transaction.atomic
def api_key_revoke_default(*, user: User) -> int:
    revoked = APIKey.objects.filter(user=user, name="default", revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    audit_record(actor=user, project=None, action="api_key.revoke", changes={"name": "default"})
    return revoked


def api_key_authenticate(*, raw_key: str) -> APIKey | None:
    """The active key for `raw_key`, or None. Touches `last_used_at` at most once a resolution
    window, with a conditional UPDATE so concurrent requests write once."""
    key = (
        APIKey.objects.active()
        .select_related("user")
        .filter(hashed_key=hash_api_key(raw_key))
        .first()
    )
    if key is None or not key.user.is_active:
        return None
    now = timezone.now()
    window = timedelta(seconds=settings.API_KEY_LAST_USED_RESOLUTION)
    if key.last_used_at is None or key.last_used_at < now - window:
        APIKey.objects.filter(pk=key.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - window)
        ).update(last_used_at=now)
        key.last_used_at = now
    return key
