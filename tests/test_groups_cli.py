"""``rthub group ...`` and group-restricted integrations from the command line and the portal service, against
the session's nats-server (what an administrator types, run as a subprocess)."""

from __future__ import annotations

import json

import pytest

from hub.core.grants import decode_grant
from hub.core.groups import load_membership
from hub.core.subjects import GRANTS_BUCKET
from tests.helpers import ROOT, rthub, rthub_env, unique


@pytest.fixture(scope="module")
def env(nats_server, tmp_path_factory):
    return rthub_env(nats_server.url, RTHUB_DATA_DIR=str(tmp_path_factory.mktemp("groups-cli")))


def run(*args, env, ok=True, **kw):
    done = rthub(*args, env=env, **kw)
    if ok:
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done


async def test_group_commands(env, js, tmp_path):
    name, site = unique("ent-"), unique("site")
    assert (
        "3 member(s) added"
        in run(
            "group", "add", name, "--site", site, "--users", "7,8", "--users", "12", env=env
        ).stdout.decode()
    )
    run("group", "add-users", name, "--users", "9", env=env)
    run("group", "remove-users", name, "--users", "8", env=env)
    shown = json.loads(run("group", "show", name, "--json", env=env).stdout)
    assert shown == {"name": name, "site": site, "description": "", "size": 3, "members": ["7", "9", "12"]}
    listed = [json.loads(line) for line in run("group", "list", "--json", env=env).stdout.splitlines()]
    assert {"name": name, "site": site, "size": 3} in listed

    csv = tmp_path / "members.csv"
    csv.write_text(
        "user_id,username,email\n" + "".join(f"{1000 + i},user{i},u{i}@acme.example\n" for i in range(2000))
    )
    assert (
        "2000 member(s) imported"
        in run("group", "import", name, str(csv), env=env, timeout=300).stdout.decode()
    )
    members = await load_membership(js)
    assert len([k for k in members.members(name)]) == 2003
    assert members.learners[(site, "1999")].username == "user999"

    assert "retired" in run("group", "retire", "1999", "--site", site, env=env).stdout.decode()
    members = await load_membership(js)
    assert (site, "1999") not in members.learners and len(members.members(name)) == 2002

    bad = run("group", "add-users", name, "--users", "bob", env=env, ok=False)
    assert bad.returncode == 2 and "not an LMS user id" in bad.stderr.decode()
    missing = run("group", "add-users", unique("nope"), "--users", "1", env=env, ok=False)
    assert missing.returncode == 2 and "no group" in missing.stderr.decode()
    clash = run("group", "add", name, "--site", "elsewhere", env=env, ok=False)
    assert clash.returncode == 2 and "exists on site" in clash.stderr.decode()

    assert "2002 membership(s) removed" in run("group", "delete", name, env=env, timeout=300).stdout.decode()
    assert (await load_membership(js)).members(name) == []
    assert name not in run("group", "list", env=env).stdout.decode()


async def test_integration_add_with_group_and_identity(env, js):
    name = unique("ent-")
    run("group", "add", name, "--site", "default", "--users", "7", env=env)
    out = run(
        "integration",
        "add",
        "--name",
        "Acme xAPI",
        "--protocol",
        "xapi",
        "--site",
        "default",
        "--event-type",
        "edx.course.enrollment.activated",
        "--group",
        name,
        "--identity",
        "username",
        "--webhook-url",
        "https://hooks.acme.example/rthub",
        "--owner",
        f"{unique('o')}@acme.example",
        "--allow-unverified-owner",
        env=env,
    ).stdout.decode()
    key = out.split()[1]
    kv = await js.key_value(GRANTS_BUCKET)
    grant = decode_grant((await kv.get(key)).value)
    assert grant.learner_groups == [name] and grant.identity == ["username"]
    assert grant.filter_subjects() == [f"xapi.default.*.*.edx~2Ecourse~2Eenrollment~2Eactivated.{name}"]
    bad = run(
        "integration",
        "add",
        "--name",
        "x",
        "--protocol",
        "xapi",
        "--site",
        "default",
        "--group",
        "a.b",
        "--webhook-url",
        "https://hooks.acme.example/x",
        env=env,
        ok=False,
    )
    assert bad.returncode == 2 and "learner_groups" in bad.stderr.decode()


def readme_commands() -> list[list[str]]:
    """The ``rthub`` commands of the README's worked examples (university and enterprise), as argument lists."""
    import shlex

    text = (ROOT / "README.md").read_text().split("## Worked examples", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("rthub "):
                commands.append(shlex.split(line)[1:])
    return commands


async def test_readme_worked_examples_run_as_written(nats_server, js, tmp_path):
    env = rthub_env(nats_server.url, RTHUB_DATA_DIR=str(tmp_path), RTHUB_SITES='{"campus": "https://lms.campus.example"}',
                    REGISTRAR_TOKEN="t0ken", ACME_KEY="k", ACME_SECRET="s")
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["integration", "add"], ["group", "add"], ["integration", "add"],
                                         ["group", "add-users"], ["group", "remove-users"]]
    keys = []
    for args in commands:
        args = [env.get(a[1:], a) if a.startswith("$") else a.replace("$ACME_KEY:$ACME_SECRET", "k:s") for a in args]
        out = run(*args, env=env).stdout.decode()
        if args[:2] == ["integration", "add"]:
            keys.append(out.split()[1])
    kv = await js.key_value(GRANTS_BUCKET)
    university, enterprise = [decode_grant((await kv.get(k)).value) for k in keys]
    assert (university.protocol, university.sites, university.event_types, university.learner_groups) == (
        "caliper", ["campus"], ["edx.course.enrollment.deactivated"], [])
    assert (enterprise.protocol, enterprise.learner_groups, enterprise.identity) == (
        "xapi", ["enterprise-acme"], ["username"])
    assert set(enterprise.event_types) == {"edx.course.enrollment.activated", "edx.completion.block_completion.changed",
                                           "edx.course.grade.passed.first_time"}
    members = await load_membership(js)
    assert members.members("enterprise-acme") == [("campus", "7"), ("campus", "9")]
