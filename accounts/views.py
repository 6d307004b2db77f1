from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate
from django.contrib.auth.models import update_last_login
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, generics, mixins, permissions, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError
from rest_framework_simplejwt.serializers import TokenRefreshSerializer
from rest_framework_simplejwt.tokens import RefreshToken, Token

from sparkops.audit import audit_record

from . import services
from .models import APIKey, User
from .serializers import (
    AccessRefreshSerializer,
    APIKeyCreatedSerializer,
    APIKeyCreateSerializer,
    APIKeySerializer,
    LoginSerializer,
    PasswordChangeSerializer,
    RefreshSerializer,
    RegisterSerializer,
    TokenPairSerializer,
    UserSerializer,
    UserUpdateSerializer,
)
from .throttles import AuthEmailThrottle, AuthIPThrottle, UserOrKeyRateThrottle


def token_pair(user: User) -> dict[str, Any]:
    refresh = RefreshToken.for_user(user)
    return {
        "access": str(refresh.access_token),
        "refresh": str(refresh),
        "user": UserSerializer(user).data,
    }


class PublicAuthView(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [permissions.AllowAny]
    throttle_classes = [AuthIPThrottle, AuthEmailThrottle]

    def get_authenticate_header(self, request: Request) -> str:
        # Without authentication classes DRF has no challenge to send and turns every 401
        # (bad credentials, bad refresh token) into a 403.
        return 'Bearer realm="api"'


class RegisterView(PublicAuthView):
    @extend_schema(request=RegisterSerializer, responses={201: TokenPairSerializer}, tags=["auth"])
    def post(self, request: Request) -> Response:
        serializer = RegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = services.user_register(**serializer.validated_data)
        AuthEmailThrottle.refund(request.data.get("email"))
        update_last_login(None, user)
        return Response(token_pair(user), status=status.HTTP_201_CREATED)


class LoginView(PublicAuthView):
    @extend_schema(request=LoginSerializer, responses={200: TokenPairSerializer}, tags=["auth"])
    def post(self, request: Request) -> Response:
        serializer = LoginSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(
            request,
            username=serializer.validated_data["email"],
            password=serializer.validated_data["password"],
        )
        if user is None:
            # One message whether or not the email exists.
            raise exceptions.AuthenticationFailed("Invalid email or password.")
        AuthEmailThrottle.refund(request.data.get("email"))
        update_last_login(None, user)
        audit_record(
            actor=user, project=None, action="auth.login", obj=user, changes={"via": "jwt"}
        )
        return Response(token_pair(user))


class RefreshView(PublicAuthView):
    throttle_classes = [AuthIPThrottle]

    @extend_schema(
        request=RefreshSerializer, responses={200: AccessRefreshSerializer}, tags=["auth"]
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRefreshSerializer(data=request.data)
        try:
            serializer.is_valid(raise_exception=True)
        except TokenError as exc:
            raise InvalidToken(exc.args[0]) from exc
        except User.DoesNotExist:
            # simplejwt looks the token's user up with `.get()`: a deleted user's refresh
            # token would otherwise be a 500.
            raise exceptions.AuthenticationFailed(
                "No active account found for the given token.", "no_active_account"
            ) from None
        return Response(serializer.validated_data)


class LogoutView(APIView):
    permission_classes = [permissions.AllowAny]

    @extend_schema(request=RefreshSerializer, responses={204: None}, tags=["auth"])
    def post(self, request: Request) -> Response:
        serializer = RefreshSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            refresh = RefreshToken(serializer.validated_data["refresh"])
        except TokenError as exc:
            raise InvalidToken(exc.args[0]) from exc
        # The access token that authenticated this request (none with an API key or a session).
        access = request.auth if isinstance(request.auth, Token) else None
        services.user_logout(refresh=refresh, access=access)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    @extend_schema(responses={200: UserSerializer}, tags=["auth"])
    def get(self, request: Request) -> Response:
        return Response(UserSerializer(request.user).data)

    @extend_schema(request=UserUpdateSerializer, responses={200: UserSerializer}, tags=["auth"])
    def patch(self, request: Request) -> Response:
        serializer = UserUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        user = services.user_update(user=request.user, **serializer.validated_data)
        return Response(UserSerializer(user).data)


class PasswordChangeView(APIView):
    throttle_classes = [UserOrKeyRateThrottle, AuthIPThrottle]

    @extend_schema(request=PasswordChangeSerializer, responses={204: None}, tags=["auth"])
    def post(self, request: Request) -> Response:
        serializer = PasswordChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.user_change_password(user=request.user, **serializer.validated_data)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["auth"])
class APIKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The caller's own API keys. The raw key is returned once, by create."""

    serializer_class = APIKeySerializer
    pagination_class = None
    filter_backends: list[Any] = []

    queryset = APIKey.objects.none()

    def get_queryset(self):  # type: ignore[override]
        if getattr(self, "swagger_fake_view", False):
            return APIKey.objects.none()
        return APIKey.objects.filter(user=self.request.user)

    @extend_schema(request=APIKeyCreateSerializer, responses={201: APIKeyCreatedSerializer})
    def create(self, request: Request) -> Response:
        serializer = APIKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, raw_key = services.api_key_create(user=request.user, **serializer.validated_data)
        key.key = raw_key  # type: ignore[attr-defined]
        return Response(APIKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: APIKey) -> None:
        services.api_key_revoke(user=self.request.user, key_id=instance.pk)


class DefaultAPIKeyView(generics.GenericAPIView):
    """Seed-compatible single key: POST issues (and replaces) the key named "default"."""

    serializer_class = APIKeyCreatedSerializer

    @extend_schema(request=None, responses={201: APIKeyCreatedSerializer}, tags=["auth"])
    def post(self, request: Request) -> Response:
        key, raw_key = services.api_key_replace_default(user=request.user)
        key.key = raw_key  # type: ignore[attr-defined]
        return Response(APIKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None}, tags=["auth"])
    def delete(self, request: Request) -> Response:
        services.api_key_revoke_default(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
