from django.urls import re_path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("policies", views.PolicyViewSet, basename="policy")
router.register("policy-decisions", views.PolicyDecisionViewSet, basename="policy-decision")
router.register("budgets", views.BudgetViewSet, basename="budget")
router.register(
    rf"projects/(?P<project_pk>{views.UUID_RE})/audit",
    views.ProjectAuditViewSet,
    basename="project-audit",
)
urlpatterns = [
    *router.urls,
    re_path(
        rf"^projects/(?P<project_pk>{views.UUID_RE})/usage/?$",
        views.ProjectUsageView.as_view(),
        name="project-usage",
    ),
]
