from projects import services
from tests.routes import ObjectRoute


def _secret(cast):
    secret = services.secret_set(project=cast.project, actor=cast.owner, name="TOKEN", value="v")
    return {"pk": secret.pk}


# Viewers cannot see secrets at all (names included), so they get 404 like outsiders.
ROUTES = {
    "secret-detail": ObjectRoute(_secret, viewer_read=404, viewer_write=404),
    "secret-replace-value": ObjectRoute(_secret, viewer_read=404, viewer_write=404),
}
