"""Encryption of project secrets at rest with Fernet (AES-128-CBC + HMAC-SHA256).

`SPARKOPS_SECRET_KEYS` is a list of Fernet keys, newest first: the first encrypts, all decrypt,
so a key is rotated by prepending a new one and running `manage.py rotate_secrets`. Without it,
one key is derived from SECRET_KEY so the embedded default works out of the box (set an
explicit key in production: rotating SECRET_KEY would otherwise make secrets unreadable)."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@lru_cache(maxsize=8)
def _fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        digest = hashlib.sha256(f"sparkops-secrets:{secret_key}".encode()).digest()
        keys = (base64.urlsafe_b64encode(digest).decode(),)
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"SPARKOPS_SECRET_KEYS has an invalid key: {exc}") from exc


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.SPARKOPS_SECRET_KEYS), settings.SECRET_KEY)


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A secret cannot be decrypted with the configured SPARKOPS_SECRET_KEYS."
        ) from exc


def rotate(token: str) -> str:
    return fernet().rotate(token.encode()).decode()
