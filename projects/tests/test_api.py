from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import User
from conftest import client_for
from policies.models import AuditEvent
from projects.models import Invitation, Membership, Project, Role
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


def invitations_url(project) -> str:
    return f"{detail(project)}invitations/"


RECEIVED = "/api/v1/invitations/"


def invite(cast, email: str, role: str = "developer", actor: str = "admin"):
    return cast.client(actor).post(invitations_url(cast.project), {"email": email, "role": role})


def test_members_cannot_be_added_without_consent(cast):
    """The old route added any existing user by email: it is gone (405), and people join by
    accepting an invitation."""
    response = cast.client("admin").post(
        members_url(cast.project), {"email": "outsider@example.com", "role": "developer"}
    )
    assert response.status_code == 405
    assert response.json()["type"]
    assert cast.client("outsider").get(detail(cast.project)).status_code == 404


def test_an_invitation_joins_the_project_only_when_accepted(cast):
    response = invite(cast, "OUTSIDER@example.com")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["email"] == "outsider@example.com"
    assert body["status"] == "pending" and body["role"] == "developer"
    # Not a member yet: the project stays invisible to the invited person.
    assert cast.client("outsider").get(detail(cast.project)).status_code == 404

    received = cast.client("outsider").get(RECEIVED).json()["results"]
    assert [(i["id"], i["project_name"]) for i in received] == [(body["id"], cast.project.name)]
    accepted = cast.client("outsider").post(
        f"{RECEIVED}{body['id']}/accept", {"token": body["token"]}
    )
    assert accepted.status_code == 201, accepted.json()
    assert accepted.json()["role"] == "developer"
    assert cast.client("outsider").get(detail(cast.project)).json()["role"] == "developer"
    # Used once.
    again = cast.client("outsider").post(f"{RECEIVED}{body['id']}/accept", {"token": body["token"]})
    assert again.status_code == 409
    listed = cast.client("admin").get(invitations_url(cast.project)).json()["results"]
    assert [i["status"] for i in listed] == ["accepted"]


def test_inviting_answers_the_same_whether_an_account_exists(cast):
    known = invite(cast, "outsider@example.com")
    unknown = invite(cast, "nobody-here@example.com")
    assert known.status_code == unknown.status_code == 201
    strip = {"id", "email", "created_at", "expires_at", "token"}
    assert {k: v for k, v in known.json().items() if k not in strip} == {
        k: v for k, v in unknown.json().items() if k not in strip
    }


def test_an_invitation_waits_for_an_account_registered_later(cast, api):
    invitation = invite(cast, "Later@Example.com").json()
    registered = api.post(
        "/api/v1/auth/register",
        {"email": "later@example.com", "password": "a-long-unusual-passphrase-9"},
        format="json",
    )
    assert registered.status_code == 201, registered.json()
    client = client_for(User.objects.get(email="later@example.com"))
    assert [i["id"] for i in client.get(RECEIVED).json()["results"]] == [invitation["id"]]
    token = {"token": invitation["token"]}
    assert client.post(f"{RECEIVED}{invitation['id']}/accept", token).status_code == 201


def test_declined_revoked_and_expired_invitations_cannot_be_accepted(cast):
    declined = invite(cast, "outsider@example.com").json()
    response = cast.client("outsider").post(f"{RECEIVED}{declined['id']}/decline")
    assert response.status_code == 200 and response.json()["status"] == "declined"
    token = {"token": declined["token"]}
    assert (
        cast.client("outsider").post(f"{RECEIVED}{declined['id']}/accept", token).status_code == 409
    )

    revoked = invite(cast, "outsider@example.com").json()
    url = f"{invitations_url(cast.project)}{revoked['id']}/"
    assert cast.client("admin").delete(url).status_code == 204
    assert cast.client("admin").get(url).json()["status"] == "revoked"
    token = {"token": revoked["token"]}
    assert (
        cast.client("outsider").post(f"{RECEIVED}{revoked['id']}/accept", token).status_code == 409
    )
    assert cast.client("admin").delete(url).status_code == 409

    expired = invite(cast, "outsider@example.com").json()
    Invitation.objects.filter(pk=expired["id"]).update(expires_at=timezone.now())
    assert (
        cast.client("admin")
        .get(f"{invitations_url(cast.project)}{expired['id']}/")
        .json()["status"]
        == "expired"
    )
    response = cast.client("outsider").post(
        f"{RECEIVED}{expired['id']}/accept", {"token": expired["token"]}
    )
    assert response.status_code == 409
    assert "expired" in response.json()["detail"]
    assert not Membership.objects.filter(project=cast.project, user=cast.outsider).exists()


def test_someone_elses_invitation_is_not_found(cast):
    invitation = invite(cast, "outsider@example.com").json()
    for who in ("viewer", "owner"):
        client = cast.client(who)
        assert client.get(f"{RECEIVED}{invitation['id']}/").status_code == 404
        # The token alone lets nobody else in.
        token = {"token": invitation["token"]}
        assert client.post(f"{RECEIVED}{invitation['id']}/accept", token).status_code == 404
        assert client.get(RECEIVED).json()["results"] == []


def test_one_open_invitation_per_address_and_members_are_409(cast):
    assert invite(cast, "outsider@example.com").status_code == 201
    assert invite(cast, "Outsider@example.com").status_code == 409
    assert invite(cast, "viewer@example.com").status_code == 409


def test_developer_cannot_manage_members_or_invitations(cast):
    client = cast.client("developer")
    assert client.get(members_url(cast.project)).status_code == 200
    assert client.get(invitations_url(cast.project)).status_code == 403
    assert invite(cast, "outsider@example.com", actor="developer").status_code == 403


def test_admin_cannot_invite_an_owner(cast):
    assert invite(cast, "outsider@example.com", role="owner").status_code == 403
    assert invite(cast, "outsider@example.com", role="owner", actor="owner").status_code == 201


def test_accepting_needs_the_token(cast):
    body = invite(cast, "outsider@example.com").json()
    url = f"{RECEIVED}{body['id']}/accept"
    client = cast.client("outsider")
    missing = client.post(url, {})
    assert missing.status_code == 400 and "token" in missing.json()["errors"]
    wrong = client.post(url, {"token": "spi_guess"})
    assert wrong.status_code == 400 and "token" in wrong.json()["errors"]
    assert not Membership.objects.filter(project=cast.project, user=cast.outsider).exists()
    assert Invitation.objects.get(pk=body["id"]).status == "pending"


def test_registering_an_invited_address_is_not_enough_to_join(cast, api):
    """Registration verifies no address: whoever registers an invited one first holds its
    account, but only the address's owner received the token."""
    invitation = invite(cast, "ceo@example.com").json()
    api.post(
        "/api/v1/auth/register",
        {"email": "ceo@example.com", "password": "a-long-unusual-passphrase-9"},
        format="json",
    )
    impostor = client_for(User.objects.get(email="ceo@example.com"))
    assert impostor.post(f"{RECEIVED}{invitation['id']}/accept").status_code == 400
    assert not Membership.objects.filter(project=cast.project, user__email="ceo@example.com")


def test_the_token_is_shown_once_and_stored_hashed(cast):
    from projects.services import invitation_token_hash

    body = invite(cast, "outsider@example.com").json()
    assert body["token"].startswith("spi_")
    stored = Invitation.objects.get(pk=body["id"])
    assert stored.token_hash == invitation_token_hash(body["token"]) != body["token"]
    listed = cast.client("admin").get(invitations_url(cast.project)).json()["results"]
    fetched = cast.client("admin").get(f"{invitations_url(cast.project)}{body['id']}/").json()
    received = cast.client("outsider").get(RECEIVED).json()["results"]
    for seen in (listed, fetched, received):
        assert body["token"] not in str(seen) and stored.token_hash not in str(seen)
    events = str(list(AuditEvent.objects.values()))
    assert body["token"] not in events and stored.token_hash not in events


def test_a_lapsed_invitation_does_not_block_a_new_one(cast):
    first = invite(cast, "outsider@example.com").json()
    assert invite(cast, "outsider@example.com").status_code == 409  # still open
    Invitation.objects.filter(pk=first["id"]).update(expires_at=timezone.now())
    second = invite(cast, "outsider@example.com")
    assert second.status_code == 201, second.json()
    assert Invitation.objects.get(pk=first["id"]).status == "expired"
    token = {"token": second.json()["token"]}
    accepted = cast.client("outsider").post(f"{RECEIVED}{second.json()['id']}/accept", token)
    assert accepted.status_code == 201


def test_members_see_each_others_id_email_and_name_only(cast):
    response = cast.client("viewer").get(members_url(cast.project))
    users = [member["user"] for member in response.json()["results"]]
    assert len(users) == 4
    assert all(set(user) == {"id", "email", "name"} for user in users)


def test_transfer_does_not_tell_whether_an_address_has_an_account(cast):
    # Anyone can create a project and own it: a different answer would be an address oracle.
    url = f"{detail(ProjectFactory(owner=cast.outsider))}transfer"
    client = cast.client("outsider")
    taken = client.post(url, {"email": "viewer@example.com"})
    free = client.post(url, {"email": "nobody@example.com"})
    assert taken.status_code == free.status_code == 400
    assert taken.json() == free.json()


def test_a_public_projects_readers_do_not_see_its_members(cast):
    cast.project.is_public = True
    cast.project.save(update_fields=["is_public"])
    outsider = cast.client("outsider")
    assert outsider.get(detail(cast.project)).status_code == 200
    response = outsider.get(members_url(cast.project))
    assert response.status_code == 403
    assert "@" not in response.content.decode()
    assert outsider.get(invitations_url(cast.project)).status_code == 403
    assert cast.client("viewer").get(members_url(cast.project)).status_code == 200


def test_invitation_writes_are_audited(cast):
    invitation = invite(cast, "outsider@example.com").json()
    cast.client("outsider").post(
        f"{RECEIVED}{invitation['id']}/accept", {"token": invitation["token"]}
    )
    revoked = invite(cast, "other@example.com").json()
    cast.client("admin").delete(f"{invitations_url(cast.project)}{revoked['id']}/")
    declined = invite(cast, "viewer2@example.com").json()
    Invitation.objects.filter(pk=declined["id"]).update(email=cast.developer.email)
    cast.client("developer").post(f"{RECEIVED}{declined['id']}/decline")
    actions = set(
        AuditEvent.objects.filter(action__startswith="invitation.").values_list("action", flat=True)
    )
    assert actions == {
        "invitation.create",
        "invitation.accept",
        "invitation.revoke",
        "invitation.decline",
    }


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


def test_invitation_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.owner)
    url = invitations_url(cast.project)
    invite(cast, "first@example.com", actor="owner")
    # auth user, project lookup, role check, count, page of invitations
    with django_assert_num_queries(5):
        assert client.get(url).status_code == 200
    for i in range(9):
        invite(cast, f"guest{i}@example.com", actor="owner")
    with django_assert_num_queries(5):
        assert client.get(url).json()["count"] == 10


def test_received_invitation_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.outsider)
    invite(cast, "outsider@example.com")
    # auth user, count, page of invitations with their projects joined
    with django_assert_num_queries(3):
        assert client.get(RECEIVED).json()["count"] == 1
    for i in range(5):
        Invitation.objects.create(
            project=ProjectFactory(name=f"Inviting {i}"),
            email=cast.outsider.email,
            expires_at=timezone.now() + timedelta(days=1),
        )
    with django_assert_num_queries(3):
        assert client.get(RECEIVED).json()["count"] == 6
