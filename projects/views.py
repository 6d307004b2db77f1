from __future__ import annotations

from typing import Any

from django.db.models import Q
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import User
from projects.api import InvalidInput, ProjectScopedGenericViewSet, ProjectScopedViewSet

from . import services
from .filters import ProjectFilter
from .models import (
    Invitation,
    Membership,
    Project,
    Role,
    Secret,
    project_ensure_writable,
    role_at_least,
    with_caller_role,
)
from .serializers import (
    InvitationAcceptSerializer,
    InvitationCreatedSerializer,
    InvitationSerializer,
    MembershipSerializer,
    MembershipUpdateSerializer,
    ProjectSerializer,
    ReceivedInvitationSerializer,
    SecretSerializer,
    SecretValueSerializer,
    TransferSerializer,
)

UUID_RE = "[0-9a-fA-F-]{36}"
CONFLICT = OpenApiResponse(description="Conflict (JSON error with `type`, `detail`).")


@extend_schema(tags=["projects"])
@extend_schema_view(
    destroy=extend_schema(
        parameters=[
            OpenApiParameter("cascade", OpenApiTypes.BOOL, description="Also delete the content.")
        ],
        responses={204: None, 409: CONFLICT},
    )
)
class ProjectViewSet(ProjectScopedViewSet):
    queryset = Project.objects.select_related("owner")
    serializer_class = ProjectSerializer
    filterset_class = ProjectFilter
    search_fields = ["name", "slug", "description"]
    ordering_fields = ["name", "created_at", "updated_at", "status"]
    ordering = ["-created_at"]
    lookup_value_regex = UUID_RE
    write_role = Role.ADMIN
    action_roles = {
        "create": Role.VIEWER,  # any signed-in user may create; they become its owner
        "destroy": Role.OWNER,
        "transfer": Role.OWNER,
    }
    # The project row itself stays writable when archived (restore, rename, transfer, delete).
    archived_actions = frozenset(
        {"archive", "restore", "update", "partial_update", "destroy", "transfer"}
    )

    def get_queryset(self):  # type: ignore[override]
        return with_caller_role(super().get_queryset(), self.request.user)

    def project_of(self, obj: Project) -> Project:
        return obj

    def perform_create(self, serializer: ProjectSerializer) -> None:
        serializer.instance = services.project_create(
            actor=self.request.user, **serializer.validated_data
        )
        serializer.instance.caller_role = Role.OWNER

    def perform_update(self, serializer: ProjectSerializer) -> None:
        project = services.project_update(
            project=serializer.instance, actor=self.request.user, **serializer.validated_data
        )
        serializer.instance = project

    def perform_destroy(self, instance: Project) -> None:
        cascade = self.request.query_params.get("cascade", "").lower() in {"1", "true", "yes"}
        services.project_delete(project=instance, actor=self.request.user, cascade=cascade)

    @extend_schema(
        parameters=[OpenApiParameter("q", OpenApiTypes.STR, description="Text to search for.")],
        responses={200: ProjectSerializer(many=True)},
    )
    @action(detail=False, methods=["get"], url_path="search")
    def search(self, request: Request) -> Response:
        """Seed-compatible search: `?q=` matches name, slug and description."""
        queryset = self.filter_queryset(self.get_queryset())
        q = request.query_params.get("q", "").strip()
        if q:
            queryset = queryset.filter(
                Q(name__icontains=q) | Q(slug__icontains=q) | Q(description__icontains=q)
            )
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(responses={200: ProjectSerializer(many=True)})
    @action(detail=False, methods=["get"])
    def templates(self, request: Request) -> Response:
        """Template projects the caller can see (members, or public templates)."""
        queryset = self.filter_queryset(self.get_queryset()).filter(is_template=True)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(request=None, responses={200: ProjectSerializer})
    @action(detail=True, methods=["post"])
    def archive(self, request: Request, pk: Any = None) -> Response:
        project = services.project_set_status(
            project=self.get_object(), actor=request.user, status=Project.Status.ARCHIVED
        )
        return Response(self.get_serializer(project).data)

    @extend_schema(request=None, responses={200: ProjectSerializer})
    @action(detail=True, methods=["post"])
    def restore(self, request: Request, pk: Any = None) -> Response:
        project = services.project_set_status(
            project=self.get_object(), actor=request.user, status=Project.Status.ACTIVE
        )
        return Response(self.get_serializer(project).data)

    @extend_schema(request=TransferSerializer, responses={200: ProjectSerializer})
    @action(detail=True, methods=["post"])
    def transfer(self, request: Request, pk: Any = None) -> Response:
        project = self.get_object()
        body = TransferSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        # Looked up among the members only: "no such user" and "not a member" are one answer,
        # or anyone could create a project and probe addresses with this route.
        new_owner = User.objects.filter(
            email__iexact=body.validated_data["email"], memberships__project=project
        ).first()
        if new_owner is None:
            raise InvalidInput(
                "Invalid input.", errors={"email": ["The new owner must already be a member."]}
            )
        project = services.project_transfer(
            project=project, actor=request.user, new_owner=new_owner
        )
        return Response(self.get_serializer(project).data)


class _ProjectChildViewSet(viewsets.GenericViewSet):
    """Rows of one project (its members, its invitations): only its members read them (a
    public project's readers are not shown who works on it); admins and owners write."""

    read_role = Role.VIEWER

    def _project(self) -> Project:
        if not hasattr(self, "_project_cache"):
            self._project_cache = get_object_or_404(
                Project.objects.for_user(self.request.user), pk=self.kwargs["project_pk"]
            )
        return self._project_cache

    def check_permissions(self, request: Request) -> None:
        super().check_permissions(request)
        if getattr(self, "swagger_fake_view", False):
            return
        read = request.method in ("GET", "HEAD", "OPTIONS")
        required = self.read_role if read else Role.ADMIN
        project = self._project()
        role = (
            Membership.objects.filter(user=request.user, project=project)
            .values_list("role", flat=True)
            .first()
        )
        if not role_at_least(role, required):
            self.permission_denied(
                request,
                message="Only project members see this."
                if role is None
                else "Only project admins can manage members and invitations.",
            )
        if not read:
            project_ensure_writable(project)


@extend_schema(tags=["projects"])
@extend_schema_view(
    partial_update=extend_schema(request=MembershipUpdateSerializer),
    update=extend_schema(request=MembershipUpdateSerializer),
)
class MembershipViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    _ProjectChildViewSet,
):
    """Members of one project. Readable by its members; admins and owners change roles and
    remove members. People join by accepting an invitation (`.../invitations/`), never by being
    added."""

    serializer_class = MembershipSerializer
    filterset_fields = ["role"]
    search_fields = ["user__email", "user__name"]
    ordering_fields = ["created_at", "role"]
    lookup_value_regex = r"\d+"
    queryset = Membership.objects.none()

    def get_queryset(self):  # type: ignore[override]
        if getattr(self, "swagger_fake_view", False):
            return Membership.objects.none()
        return Membership.objects.filter(project=self._project()).select_related("user")

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        membership = self.get_object()
        body = MembershipUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        membership = services.membership_update(
            membership=membership, actor=request.user, role=body.validated_data["role"]
        )
        return Response(MembershipSerializer(membership).data, status=status.HTTP_200_OK)

    def perform_destroy(self, instance: Membership) -> None:
        services.membership_remove(membership=instance, actor=self.request.user)


@extend_schema(tags=["projects"])
@extend_schema_view(
    destroy=extend_schema(
        description="Revokes a pending invitation (kept, with status `revoked`).",
        responses={204: None, 409: CONFLICT},
    )
)
class InvitationViewSet(
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    _ProjectChildViewSet,
):
    """A project's invitations, for its admins: invite an address (the answer is the same
    whether it has an account), list, revoke. The invited person accepts at
    `/api/v1/invitations/{id}/accept`."""

    serializer_class = InvitationSerializer
    filterset_fields = ["status", "role"]
    search_fields = ["email"]
    ordering_fields = ["created_at", "expires_at", "email"]
    lookup_value_regex = UUID_RE
    read_role = Role.ADMIN
    queryset = Invitation.objects.none()

    def get_queryset(self):  # type: ignore[override]
        if getattr(self, "swagger_fake_view", False):
            return Invitation.objects.none()
        return Invitation.objects.filter(project=self._project())

    @extend_schema(
        request=InvitationSerializer, responses={201: InvitationCreatedSerializer, 409: CONFLICT}
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """The answer carries the token once: pass it on to the person invited."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        invitation, token = services.invitation_create(
            project=self._project(),
            actor=request.user,
            email=serializer.validated_data["email"],
            role=serializer.validated_data.get("role", Role.VIEWER),
        )
        invitation.token = token  # type: ignore[attr-defined]
        body = InvitationCreatedSerializer(invitation, context=self.get_serializer_context())
        return Response(body.data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Invitation) -> None:
        services.invitation_revoke(invitation=instance, actor=self.request.user)


@extend_schema(tags=["auth"])
class ReceivedInvitationViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Invitations addressed to the caller's own email: accept one to join its project, or
    decline it. Everyone else's are not found."""

    serializer_class = ReceivedInvitationSerializer
    filterset_fields = ["status"]
    ordering_fields = ["created_at", "expires_at"]
    lookup_value_regex = UUID_RE
    queryset = Invitation.objects.none()

    def get_queryset(self):  # type: ignore[override]
        if getattr(self, "swagger_fake_view", False):
            return Invitation.objects.none()
        return Invitation.objects.addressed_to(self.request.user).select_related("project")

    @extend_schema(
        request=InvitationAcceptSerializer, responses={201: MembershipSerializer, 409: CONFLICT}
    )
    @action(detail=True, methods=["post"])
    def accept(self, request: Request, pk: str | None = None) -> Response:
        """Join the project. Needs the token the inviter passed on (400 if it is not this
        invitation's): holding an account with the address is not enough."""
        invitation = self.get_object()
        body = InvitationAcceptSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        membership = services.invitation_accept(
            invitation=invitation, actor=request.user, token=body.validated_data["token"]
        )
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: ReceivedInvitationSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def decline(self, request: Request, pk: str | None = None) -> Response:
        invitation = services.invitation_decline(invitation=self.get_object(), actor=request.user)
        return Response(ReceivedInvitationSerializer(invitation).data)


@extend_schema(tags=["secrets"])
class SecretViewSet(
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    ProjectScopedGenericViewSet,
):
    """Project secrets: write-only values; names are visible to developers and up (to reference
    them), managed by admins."""

    queryset = Secret.objects.select_related("project")
    serializer_class = SecretSerializer
    filterset_fields = ["project"]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at", "updated_at", "last_used_at"]
    read_role = Role.DEVELOPER
    write_role = Role.ADMIN

    def perform_create(self, serializer: SecretSerializer) -> None:
        self.check_project_role(serializer.validated_data["project"])
        serializer.instance = services.secret_create(
            actor=self.request.user, **serializer.validated_data
        )

    def perform_destroy(self, instance: Secret) -> None:
        services.secret_delete(secret=instance, actor=self.request.user)

    @extend_schema(request=SecretValueSerializer, responses={200: SecretSerializer})
    @action(detail=True, methods=["put"], url_path="value")
    def replace_value(self, request: Request, pk: Any = None) -> Response:
        secret = self.get_object()
        body = SecretValueSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        secret = services.secret_set(
            project=secret.project, actor=request.user, name=secret.name, **body.validated_data
        )
        return Response(SecretSerializer(secret, context={"request": request}).data)
