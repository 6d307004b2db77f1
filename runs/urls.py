from django.urls import re_path
from rest_framework.routers import SimpleRouter

from . import views
from .triggers import views as trigger_views

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("runs", views.RunViewSet, basename="run")
# Only the `run` action: the rest of /workflows/ is routed by workflows/urls.py.
router.register("workflows", views.WorkflowRunViewSet, basename="workflow")
# Only pause, resume and backfill: the rest of /schedules/ is routed by workflows/urls.py.
router.register("schedules", trigger_views.ScheduleTriggerViewSet, basename="schedule")
urlpatterns = [
    *router.urls,
    # The project's workflows as MCP tools (runs/triggers/mcp.py).
    re_path(
        r"^projects/(?P<pk>[0-9a-fA-F-]{36})/mcp/?$",
        trigger_views.McpView.as_view(),
        name="project-mcp",
    ),
]
