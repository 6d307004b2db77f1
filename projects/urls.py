from django.urls import re_path
from rest_framework.routers import SimpleRouter

from . import files_views, views, webhook_views

router = SimpleRouter()
router.trailing_slash = "/?"  # both `/projects` and `/projects/` (the seed routes had none)
router.register("projects", views.ProjectViewSet, basename="project")
router.register(
    rf"projects/(?P<project_pk>{views.UUID_RE})/members", views.MembershipViewSet, basename="member"
)
router.register(
    rf"projects/(?P<project_pk>{views.UUID_RE})/invitations",
    views.InvitationViewSet,
    basename="project-invitation",
)
router.register("invitations", views.ReceivedInvitationViewSet, basename="invitation")
router.register("secrets", views.SecretViewSet, basename="secret")
router.register(
    "webhook-endpoints", webhook_views.WebhookEndpointViewSet, basename="webhook-endpoint"
)
router.register("files", files_views.FileViewSet, basename="file")
urlpatterns = [
    *router.urls,
    # The signed download of GET /files/{id}/url/ (local storage): the token is the credential.
    re_path(
        r"^files/signed/(?P<token>[A-Za-z0-9_:-]{1,200})/?$",
        files_views.SignedFileView.as_view(),
        name="file-signed-content",
    ),
]
