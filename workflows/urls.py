from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("workflows", views.WorkflowViewSet, basename="workflow")
urlpatterns = router.urls
