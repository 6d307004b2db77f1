from rest_framework.routers import SimpleRouter

from projects.views import UUID_RE

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("agents", views.AgentViewSet, basename="agent")
router.register("model-prices", views.ModelPriceViewSet, basename="model-price")
router.register(
    rf"projects/(?P<project_pk>{UUID_RE})/agents",
    views.ProjectAgentViewSet,
    basename="project-agent",
)
urlpatterns = router.urls
