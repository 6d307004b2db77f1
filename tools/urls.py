from rest_framework.routers import SimpleRouter

from .mcp_views import McpServerViewSet
from .views import ToolViewSet

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("tools", ToolViewSet, basename="tool")
router.register("mcp-servers", McpServerViewSet, basename="mcp-server")
urlpatterns = router.urls
