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


def _endpoint(cast):
    from django.test import override_settings

    from projects import webhooks

    with override_settings(SPARKOPS_OUTBOUND_ALLOW=["127.0.0.1"]):
        endpoint, _ = webhooks.endpoint_create(
            actor=cast.owner, project=cast.project, url="http://127.0.0.1:9/hook"
        )
    return endpoint


def _delivery(cast):
    from projects import webhooks

    endpoint = _endpoint(cast)
    delivery = webhooks.endpoint_ping(endpoint=endpoint, actor=cast.owner)
    return {"pk": endpoint.pk, "delivery_id": delivery.pk}


# Webhook endpoints are for admins and owners: other members do not see them (404).
_ADMINS_ONLY = {"viewer_read": 404, "viewer_write": 404}
ROUTES.update(
    {
        "webhook-endpoint-detail": ObjectRoute(lambda c: {"pk": _endpoint(c).pk}, **_ADMINS_ONLY),
        "webhook-endpoint-rotate-secret": ObjectRoute(
            lambda c: {"pk": _endpoint(c).pk}, **_ADMINS_ONLY
        ),
        "webhook-endpoint-ping": ObjectRoute(lambda c: {"pk": _endpoint(c).pk}, **_ADMINS_ONLY),
        "webhook-endpoint-deliveries": ObjectRoute(
            lambda c: {"pk": _endpoint(c).pk}, **_ADMINS_ONLY
        ),
        "webhook-endpoint-redeliver": ObjectRoute(_delivery, **_ADMINS_ONLY),
    }
)


def _file(cast):
    from projects import files

    return {"pk": files.file_save(project=cast.project, name="m.txt", content=b"x").pk}


# Viewers read and download files; developers and up upload and delete them.
ROUTES.update(
    {
        "file-detail": ObjectRoute(_file),
        "file-content": ObjectRoute(_file),
        "file-url": ObjectRoute(_file),
        # The token is the credential: a token not signed here is 404 for everyone.
        "file-signed-content": ObjectRoute(lambda c: {"token": "not-signed"}, viewer_read=404),
    }
)
