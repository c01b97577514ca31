# ruff: noqa: F811 - the portal fixtures are imported from test_portal_api
"""Learner groups in the portal (Litestar app, real nats-server, SQLite, real SMTP): the admin JSON API and pages,
a consumer's group-restricted request with identity fields, and an approval that grants identity only when the
administrator names it (audited, in the approval mail, on the integration page)."""

from __future__ import annotations

from hub.core.grants import decode_grant
from hub.core.subjects import GRANTS_BUCKET
from tests.helpers import unique
from tests.mailbox import body
from tests.test_portal_api import (  # noqa: F401 - fixtures
    admin,
    app,
    kv_get,
    mailbox,
    make_token,
    new_consumer,
    post,
    request_access,
    settings,
)


async def test_admin_groups_api_and_pages(app, admin):
    token = await make_token(admin)
    auth = {"Authorization": f"Bearer {token}"}
    name = unique("ent-")
    made = await admin.post(
        "/api/v1/admin/groups",
        headers=auth,
        json={"name": name, "site": "campus", "users": "7,8", "description": "Acme"},
    )
    assert made.status_code == 201, made.text
    assert made.json() == {
        "name": name,
        "site": "campus",
        "size": 2,
        "description": "Acme",
        "members": ["7", "8"],
    }
    changed = await admin.post(
        f"/api/v1/admin/groups/{name}/members", headers=auth, json={"add": ["9"], "remove": "7"}
    )
    assert changed.json()["members"] == ["8", "9"]
    imported = await admin.post(
        f"/api/v1/admin/groups/{name}/import",
        headers=auth,
        json={"csv": "user_id,username\n20,ada\n21,bob\n"},
    )
    assert imported.json()["size"] == 4
    listed = (await admin.get("/api/v1/admin/groups", headers=auth)).json()
    assert {"name": name, "site": "campus", "size": 4, "description": "Acme"} in listed
    bad = await admin.post(
        "/api/v1/admin/groups", headers=auth, json={"name": "a.b", "site": "nowhere", "users": "x"}
    )
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"name", "site", "users"}
    retired = await admin.post(
        "/api/v1/admin/learners/retire", headers=auth, json={"site": "campus", "user_id": "20"}
    )
    assert retired.json() == {"known": True}
    assert (await admin.get(f"/api/v1/admin/groups/{name}", headers=auth)).json()["size"] == 3

    # consumers: no group API at all
    consumer = await new_consumer(app)
    ctoken = await make_token(consumer)
    for path in ("/api/v1/admin/groups", f"/api/v1/admin/groups/{name}"):
        assert (await consumer.get(path, headers={"Authorization": f"Bearer {ctoken}"})).status_code == 403
    assert (await consumer.get("/admin/groups")).status_code in (401, 403)

    # the admin pages
    page = await admin.get("/admin/groups")
    assert name in page.text and "Learner groups" in page.text
    await post(admin, f"/admin/groups/{name}/members", {"add": "30, 31", "remove": ""})
    shown = await admin.get(f"/admin/groups/{name}")
    assert '<strong id="group-size">5</strong>' in shown.text and "31" in shown.text
    created = await post(admin, "/admin/groups", {"name": name + "-b", "site": "default", "users": "1"})
    assert created.status_code == 200 and name + "-b" in created.text
    refused = await post(admin, "/admin/groups", {"name": "bad name", "site": "default", "users": ""})
    assert refused.status_code == 400 and 'id="err-name"' in refused.text
    gone = await post(admin, f"/admin/groups/{name}-b/delete", {})
    assert gone.status_code == 200 and f"{name}-b" not in (await admin.get("/admin/groups")).text


async def test_group_request_identity_needs_an_explicit_approval(app, admin, js, mailbox):
    token = await make_token(admin)
    name = unique("ent-")
    await admin.post(
        "/api/v1/admin/groups",
        headers={"Authorization": f"Bearer {token}"},
        json={"name": name, "site": "default", "users": "7,8,9"},
    )
    consumer = await new_consumer(app)
    plain = await request_access(consumer, name="Plain", learner_groups=name, identity=["username", "email"])
    named = await request_access(consumer, name="Named", learner_groups=name, identity=["username", "email"])
    assert plain != named

    # approved as requested, without naming identity fields: groups kept, identity not granted
    await post(admin, f"/admin/integrations/{plain}/approve")
    grant = decode_grant(await kv_get(js, GRANTS_BUCKET, plain))
    assert grant.learner_groups == [name] and grant.identity == []
    assert grant.filter_subjects()[0].endswith(f".{name}")
    mail = body(await mailbox.wait(consumer.email, "approved"))
    assert f"group(s): {name}" in mail and "Identities stay anonymized" in mail

    # the approval form: the administrator ticks one of the two requested fields
    page = await admin.get(f"/admin/integrations/{named}")
    assert 'name="identity" value="username"' in page.text and 'name="identity" value="email"' in page.text
    await post(
        admin,
        f"/admin/integrations/{named}/approve",
        {
            "sites": "default",
            "orgs": "",
            "courses": "course-v1:edX+DemoX+Demo_Course, course-v1:MITx+6.002x+2024_T1",
            "event_types": "",
            "learner_groups": name,
            "identity": "username",
        },
    )
    grant = decode_grant(await kv_get(js, GRANTS_BUCKET, named))
    assert grant.identity == ["username"] and grant.learner_groups == [name]
    mail = body(await mailbox.wait(consumer.email, "approved", count=2))
    assert "Identity fields approved by an administrator: username" in mail
    audit = (await admin.get(f"/admin/integrations/{named}")).text
    assert "identity.approve" in audit and "identity fields approved: username" in audit

    # the consumer's page: group name and size, identity fields, never the member list
    mine = (await consumer.get(f"/integrations/{named}")).text
    assert f"{name} (3 learners)" in mine and "username" in mine
    assert ">7, 8, 9<" not in mine and "7,8,9" not in mine

    # widening a group restriction away is not a narrowing: the API refuses it at approval
    widen = await request_access(consumer, name="Widen", learner_groups=name)
    refused = await post(
        admin,
        f"/admin/integrations/{widen}/approve",
        {
            "sites": "default",
            "orgs": "",
            "courses": "course-v1:edX+DemoX+Demo_Course",
            "event_types": "",
            "learner_groups": "",
        },
    )
    assert refused.status_code == 400 and 'id="err-learner_groups"' in refused.text
    # and asking identity that was not requested is refused too
    other = await request_access(consumer, name="Other", learner_groups=name)
    refused = await post(
        admin,
        f"/admin/integrations/{other}/approve",
        {
            "sites": "default",
            "orgs": "",
            "courses": "course-v1:edX+DemoX+Demo_Course",
            "event_types": "",
            "learner_groups": name,
            "identity": "email",
        },
    )
    assert refused.status_code == 400 and 'id="err-identity"' in refused.text
