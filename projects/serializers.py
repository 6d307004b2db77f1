from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import User

from .models import Invitation, Membership, Project, Role, Secret


class ProjectSerializer(serializers.ModelSerializer):
    owner = serializers.UUIDField(source="owner_id", read_only=True)
    role = serializers.SerializerMethodField(help_text="The caller's role in this project.")

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "slug",
            "description",
            "status",
            "settings",
            "metadata",
            "is_public",
            "is_template",
            "owner",
            "role",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "owner", "role", "created_at", "updated_at"]
        extra_kwargs = {"slug": {"required": False, "validators": []}}

    def get_role(self, obj: Project) -> str | None:
        # Annotated by the viewset's queryset (`caller_role`); public non-member → viewer.
        role = getattr(obj, "caller_role", None)
        if role is None and obj.is_public:
            return Role.VIEWER
        return role

    def _json_object(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value

    validate_settings = _json_object
    validate_metadata = _json_object


class MemberUserSerializer(serializers.ModelSerializer):
    """What members see of each other: no settings, staff flag or login times."""

    class Meta:
        model = User
        fields = ["id", "email", "name"]
        read_only_fields = fields


class MembershipSerializer(serializers.ModelSerializer):
    user = MemberUserSerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "role", "created_at", "updated_at"]
        read_only_fields = fields


class InvitationSerializer(serializers.ModelSerializer):
    """What project admins see of an invitation (and create one with: `email`, `role`)."""

    email = serializers.EmailField(
        max_length=254, help_text="Any address, with or without an account."
    )
    status = serializers.SerializerMethodField()
    invited_by = serializers.UUIDField(source="invited_by_id", read_only=True, allow_null=True)

    class Meta:
        model = Invitation
        fields = [
            "id",
            "project",
            "email",
            "role",
            "status",
            "invited_by",
            "created_at",
            "expires_at",
            "responded_at",
        ]
        read_only_fields = [
            "id",
            "project",
            "status",
            "invited_by",
            "created_at",
            "expires_at",
            "responded_at",
        ]

    @extend_schema_field(serializers.ChoiceField(choices=Invitation.Status.values))
    def get_status(self, obj: Invitation) -> str:
        return "expired" if obj.is_expired else obj.status


class InvitationCreatedSerializer(InvitationSerializer):
    token = serializers.CharField(
        read_only=True,
        help_text="Shown once: pass it on to the person invited, who accepts with it.",
    )

    class Meta(InvitationSerializer.Meta):
        fields = [*InvitationSerializer.Meta.fields, "token"]
        read_only_fields = fields


class InvitationAcceptSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200, help_text="The token the inviter passed on.")


class ReceivedInvitationSerializer(InvitationSerializer):
    """What the invited person sees: the project's name, not its members."""

    project_name = serializers.CharField(source="project.name", read_only=True)

    class Meta(InvitationSerializer.Meta):
        fields = [*InvitationSerializer.Meta.fields, "project_name"]
        read_only_fields = fields


class MembershipUpdateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class CloneSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)


class TransferSerializer(serializers.Serializer):
    email = serializers.EmailField(help_text="The email of an existing member.")


class ProjectField(serializers.PrimaryKeyRelatedField):
    """A project the caller is a member of (public projects excluded: nobody writes into a project
    they only read). Anything else is "does not exist", so nothing leaks."""

    def get_queryset(self):  # type: ignore[override]
        request = self.context.get("request")
        return Project.objects.member_of(getattr(request, "user", None))


class SecretSerializer(serializers.ModelSerializer):
    project = ProjectField()
    value = serializers.CharField(
        write_only=True, trim_whitespace=False, max_length=65536, help_text="Write-only."
    )
    name = serializers.RegexField(Secret.NAME_RE, max_length=100)

    class Meta:
        model = Secret
        fields = [
            "id",
            "project",
            "name",
            "description",
            "value",
            "created_at",
            "updated_at",
            "last_used_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at", "last_used_at"]
        validators: list[Any] = []  # a duplicate name is a 409 from the service


class SecretValueSerializer(serializers.Serializer):
    value = serializers.CharField(trim_whitespace=False, max_length=65536)
    description = serializers.CharField(max_length=300, required=False, allow_blank=True)
