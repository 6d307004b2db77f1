from __future__ import annotations

from typing import Any

from django.db.models import Exists
from django.utils.translation import gettext_lazy as _
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework_simplejwt import authentication as simplejwt
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import Token
from rest_framework_simplejwt.utils import get_md5_hash_password

from .models import DeniedAccessToken, User


class JWTAuthentication(simplejwt.JWTAuthentication):
    """simplejwt's, also refusing access tokens denied at logout. The denial is read in the
    same query as the user (an EXISTS on the denied jti's primary key), so a JWT request still
    costs one query; the checks after it are simplejwt's `get_user`, in the same order."""

    def get_user(self, validated_token: Token) -> User:
        try:
            user_id = validated_token[jwt_settings.USER_ID_CLAIM]
        except KeyError as exc:
            raise InvalidToken(_("Token contained no recognizable user identification")) from exc
        # No expiry filter: a denied row outliving its token is harmless, the token's own `exp`
        # was checked before this.
        denied = DeniedAccessToken.objects.filter(jti=validated_token.get(jwt_settings.JTI_CLAIM))
        user = (
            User.objects.annotate(access_denied=Exists(denied))
            .filter(**{jwt_settings.USER_ID_FIELD: user_id})
            .first()
        )
        if user is None:
            raise AuthenticationFailed(_("User not found"), code="user_not_found")
        if user.access_denied:  # type: ignore[attr-defined]
            raise AuthenticationFailed("Token has been revoked.", code="token_revoked")
        if jwt_settings.CHECK_USER_IS_ACTIVE and not user.is_active:
            raise AuthenticationFailed(_("User is inactive"), code="user_inactive")
        if jwt_settings.CHECK_REVOKE_TOKEN and validated_token.get(
            jwt_settings.REVOKE_TOKEN_CLAIM
        ) != get_md5_hash_password(user.password):
            raise AuthenticationFailed(
                _("The user's password has been changed."), code="password_changed"
            )
        return user


class JWTAuthenticationScheme(SimpleJWTScheme):
    target_class = "accounts.authentication.JWTAuthentication"


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
        # DRF imports this class while sparkops.errors loads (rest_framework.views reads its
        # settings), and the services import sparkops.errors: so they load at call time.
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
