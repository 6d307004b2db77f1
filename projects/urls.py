from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"  # both `/projects` and `/projects/` (the seed routes had none)
router.register("projects", views.ProjectViewSet, basename="project")
router.register(
    rf"projects/(?P<project_pk>{views.UUID_RE})/members", views.MembershipViewSet, basename="member"
)
router.register("secrets", views.SecretViewSet, basename="secret")
urlpatterns = router.urls
