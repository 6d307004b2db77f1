from django.urls import re_path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"  # both `/projects` and `/projects/` (the seed routes had none)
router.register("api-keys", views.APIKeyViewSet, basename="api-key")

urlpatterns = [
    re_path(r"^register/?$", views.RegisterView.as_view(), name="auth-register"),
    re_path(r"^login/?$", views.LoginView.as_view(), name="auth-login"),
    re_path(r"^refresh/?$", views.RefreshView.as_view(), name="auth-refresh"),
    re_path(r"^logout/?$", views.LogoutView.as_view(), name="auth-logout"),
    re_path(r"^me/?$", views.MeView.as_view(), name="auth-me"),
    re_path(r"^password/?$", views.PasswordChangeView.as_view(), name="auth-password"),
    re_path(r"^api-key/?$", views.DefaultAPIKeyView.as_view(), name="auth-api-key"),
    *router.urls,
]
