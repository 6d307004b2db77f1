from rest_framework.routers import SimpleRouter

from . import trigger_views, views

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("workflows", views.WorkflowViewSet, basename="workflow")
# Only the `clone` action: the rest of /projects/ is routed by projects/urls.py.
router.register("projects", views.ProjectCloneViewSet, basename="project")
router.register("schedules", trigger_views.ScheduleViewSet, basename="schedule")
router.register("webhook-triggers", trigger_views.WebhookTriggerViewSet, basename="webhook-trigger")
router.register("event-triggers", trigger_views.EventTriggerViewSet, basename="event-trigger")
urlpatterns = router.urls
