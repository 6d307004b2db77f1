from rest_framework.routers import SimpleRouter

from . import views, webhook_views

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
urlpatterns = router.urls
