from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("runs", views.RunViewSet, basename="run")
urlpatterns = router.urls
