from rest_framework.routers import SimpleRouter

from .views import ToolViewSet

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("tools", ToolViewSet, basename="tool")
urlpatterns = router.urls
