from __future__ import annotations

import pytest

from conftest import client_for
from projects.models import Membership, Project, Role
from projects.tests.factories import MembershipFactory, ProjectFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/projects/"


def detail(project) -> str:
    return f"{URL}{project.pk}/"


def test_create_makes_the_caller_owner(cast):
    response = cast.client("outsider").post(URL, {"name": "New things"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["slug"] == "new-things"
    assert body["role"] == "owner"
    project = Project.objects.get(pk=body["id"])
    assert Membership.objects.get(project=project).role == Role.OWNER


def test_slug_collision_gets_a_suffix(cast):
    response = cast.client("owner").post(URL, {"name": "Acme"}, format="json")
    assert response.status_code == 201
    assert response.json()["slug"].startswith("acme-")


def test_explicit_duplicate_slug_is_409(cast):
    response = cast.client("owner").post(URL, {"name": "X", "slug": "acme"}, format="json")
    assert response.status_code == 409
    assert response.json()["type"] == "conflict"


def test_list_shows_only_member_projects_and_public_ones(cast):
    public = ProjectFactory(name="Open", is_public=True)
    response = cast.client("viewer").get(URL)
    assert response.status_code == 200
    ids = {p["id"] for p in response.json()["results"]}
    assert ids == {str(cast.project.pk), str(public.pk)}
    roles = {p["id"]: p["role"] for p in response.json()["results"]}
    assert roles[str(cast.project.pk)] == "viewer"
    assert roles[str(public.pk)] == "viewer"


def test_public_project_is_readable_not_writable_by_non_members(cast):
    public = ProjectFactory(name="Open", is_public=True)
    client = cast.client("outsider")
    assert client.get(detail(public)).status_code == 200
    assert client.patch(detail(public), {"name": "Mine"}, format="json").status_code == 403


def test_list_routes_without_trailing_slash(cast):
    assert cast.client("owner").get("/api/v1/projects").status_code == 200
    assert cast.client("owner").get(f"/api/v1/projects/{cast.project.pk}").status_code == 200


def test_filters_ordering_and_pagination(cast):
    for i in range(5):
        p = ProjectFactory(name=f"Bulk item{i}x", status="draft" if i % 2 else "active")
        MembershipFactory(project=p, user=cast.viewer)
    client = cast.client("viewer")
    body = client.get(URL, {"status": "draft"}).json()
    assert body["count"] == 2
    body = client.get(URL, {"page_size": 2, "ordering": "name"}).json()
    assert body["count"] == 6 and len(body["results"]) == 2
    assert body["results"][0]["name"] == "Acme"
    assert client.get(URL, {"page_size": 1000}).status_code == 200  # capped, not an error
    # one term, so factory slugs with the same digits cannot match too
    assert client.get(URL, {"search": "item3x"}).json()["count"] == 1


def test_seed_search_route(cast):
    ProjectFactory(name="Hidden gem", owner=cast.outsider)
    client = cast.client("owner")
    response = client.get(f"{URL}search", {"q": "acm"})
    assert response.status_code == 200
    assert [p["slug"] for p in response.json()["results"]] == ["acme"]
    assert client.get(f"{URL}search", {"q": "gem"}).json()["count"] == 0


def test_update_needs_admin(cast):
    assert cast.client("developer").patch(detail(cast.project), {"name": "Z"}).status_code == 403
    response = cast.client("admin").patch(
        detail(cast.project), {"name": "Z", "settings": {"tz": "UTC"}}
    )
    assert response.status_code == 200
    assert response.json()["name"] == "Z"
    assert response.json()["settings"] == {"tz": "UTC"}


def test_settings_must_be_an_object(cast):
    response = cast.client("admin").patch(detail(cast.project), {"settings": [1]}, format="json")
    assert response.status_code == 400
    assert "settings" in response.json()["errors"]


def test_archive_and_restore(cast):
    client = cast.client("admin")
    assert client.post(f"{detail(cast.project)}archive").json()["status"] == "archived"
    assert client.post(f"{detail(cast.project)}restore").json()["status"] == "active"
    assert cast.client("developer").post(f"{detail(cast.project)}archive").status_code == 403


def test_delete_is_owner_only(cast):
    assert cast.client("admin").delete(detail(cast.project)).status_code == 403
    assert cast.client("owner").delete(detail(cast.project)).status_code == 204
    assert not Project.objects.filter(pk=cast.project.pk).exists()


def test_outsider_gets_404_everywhere(cast):
    client = cast.client("outsider")
    url = detail(cast.project)
    assert client.get(url).status_code == 404
    assert client.patch(url, {"name": "x"}).status_code == 404
    assert client.delete(url).status_code == 404
    assert client.post(f"{url}archive").status_code == 404
    assert client.get(f"{url}members/").status_code == 404
    assert client.get(f"{URL}{cast.other_project.pk}/").status_code == 200


def test_unknown_and_malformed_ids_are_json_404(cast):
    client = cast.client("owner")
    for url in (f"{URL}00000000-0000-0000-0000-000000000000/", f"{URL}not-a-uuid/"):
        response = client.get(url)
        assert response.status_code == 404
        assert response.json()["type"] == "not_found"


def test_anonymous_is_401_json(api):
    response = api.get(URL)
    assert response.status_code == 401
    assert response.json()["type"] == "not_authenticated"


# --- members ------------------------------------------------------------------------------------


def members_url(project) -> str:
    return f"{detail(project)}members/"


def test_admin_adds_member_by_email(cast):
    response = cast.client("admin").post(
        members_url(cast.project), {"email": "OUTSIDER@example.com", "role": "developer"}
    )
    assert response.status_code == 201, response.json()
    assert response.json()["user"]["email"] == "outsider@example.com"
    assert cast.client("outsider").get(detail(cast.project)).status_code == 200


def test_adding_unknown_email_is_field_error(cast):
    response = cast.client("admin").post(members_url(cast.project), {"email": "nobody@x.io"})
    assert response.status_code == 400
    assert "email" in response.json()["errors"]


def test_adding_existing_member_is_409(cast):
    response = cast.client("admin").post(members_url(cast.project), {"email": "viewer@example.com"})
    assert response.status_code == 409


def test_developer_cannot_manage_members(cast):
    client = cast.client("developer")
    assert client.get(members_url(cast.project)).status_code == 200
    response = client.post(members_url(cast.project), {"email": "outsider@example.com"})
    assert response.status_code == 403


def test_admin_cannot_grant_owner(cast):
    response = cast.client("admin").post(
        members_url(cast.project), {"email": "outsider@example.com", "role": "owner"}
    )
    assert response.status_code == 403


def test_change_and_remove_member(cast):
    membership = Membership.objects.get(project=cast.project, user=cast.viewer)
    url = f"{members_url(cast.project)}{membership.pk}/"
    client = cast.client("admin")
    assert client.patch(url, {"role": "developer"}).json()["role"] == "developer"
    assert client.delete(url).status_code == 204
    assert cast.client("viewer").get(detail(cast.project)).status_code == 404


def test_last_owner_cannot_be_removed_or_demoted(cast):
    membership = Membership.objects.get(project=cast.project, user=cast.owner)
    url = f"{members_url(cast.project)}{membership.pk}/"
    client = cast.client("owner")
    response = client.patch(url, {"role": "admin"})
    assert response.status_code == 409
    assert response.json()["type"] == "conflict"
    assert client.delete(url).status_code == 409
    # with a second owner, demotion works
    other = Membership.objects.get(project=cast.project, user=cast.admin)
    assert (
        client.patch(f"{members_url(cast.project)}{other.pk}/", {"role": "owner"}).status_code
        == 200
    )
    assert client.patch(url, {"role": "admin"}).status_code == 200


def test_members_of_other_project_are_404(cast):
    membership = Membership.objects.get(project=cast.other_project)
    url = f"{members_url(cast.project)}{membership.pk}/"
    assert cast.client("owner").get(url).status_code == 404


def test_transfer(cast):
    url = f"{detail(cast.project)}transfer"
    assert cast.client("admin").post(url, {"email": "admin@example.com"}).status_code == 403
    assert cast.client("owner").post(url, {"email": "outsider@example.com"}).status_code == 400
    response = cast.client("owner").post(url, {"email": "admin@example.com"})
    assert response.status_code == 200
    cast.project.refresh_from_db()
    assert cast.project.owner == cast.admin
    assert Membership.objects.get(project=cast.project, user=cast.admin).role == Role.OWNER
    # the new owner can now delete; the previous owner keeps owner rights too
    assert Membership.objects.get(project=cast.project, user=cast.owner).role == Role.OWNER


def test_project_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    # auth user, count, page of projects (role annotated by subquery, owner joined)
    with django_assert_num_queries(3):
        assert client.get(URL).status_code == 200
    for i in range(10):
        MembershipFactory(project=ProjectFactory(name=f"More {i}"), user=cast.viewer)
    with django_assert_num_queries(3):
        assert len(client.get(URL).json()["results"]) == 11


def test_member_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.owner)
    url = members_url(cast.project)
    # auth user, project lookup, role check, count, page of members with users joined
    with django_assert_num_queries(5):
        assert client.get(url).status_code == 200
    for _ in range(10):
        MembershipFactory(project=cast.project)
    with django_assert_num_queries(5):
        assert client.get(url).json()["count"] == 14
