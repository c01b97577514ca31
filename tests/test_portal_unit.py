"""Pure portal code: request validation, scope narrowing, password hashing, the login delay, sealing secrets (no network)."""

from __future__ import annotations

import pytest

from hub.deliver.transport import ssrf
from portal import security
from portal.validation import Scope, check_narrowing, check_url, split_list, validate_request, validate_signup

SITES = {"default", "campus"}


def req(**kw):
    base = {"name": "Engine", "protocol": "xapi", "delivery": "webhook", "url": "https://hooks.example.org/x",
            "courses": "course-v1:edX+DemoX+Demo_Course"}
    base.update(kw)
    return validate_request(base, SITES)


def test_valid_webhook_request():
    spec, errors = req(orgs="edX, MITx", event_types="edx.video.played\nproblem_check")
    assert errors == {}
    assert spec.scope.orgs == ["edX", "MITx"] and spec.scope.event_types == ["edx.video.played", "problem_check"]
    assert spec.url == "https://hooks.example.org/x" and spec.auth_kind == "none"


def test_url_errors_are_clear():
    for bad in ("ftp://x.org/", "not a url", "https://", "javascript:alert(1)", "http://x.org:99999/",
                "https://" + "a" * 3000 + ".org"):
        errors: dict[str, str] = {}
        assert check_url(bad, errors) is None, bad
        assert errors["url"]
    errors = {}
    assert check_url("https://user:pw@lrs.example.org/", errors) is None
    assert "credentials" in errors["url"]


def test_lrs_needs_credentials_and_matching_protocol():
    _, errors = req(delivery="lrs", url="https://lrs.example.org/xapi")
    assert "basic_auth" in errors
    spec, errors = req(delivery="lrs", url="https://lrs.example.org/xapi", basic_auth="key:secret")
    assert errors == {} and spec.auth_kind == "basic" and spec.auth_value == "key:secret"
    _, errors = req(delivery="lrs", protocol="caliper", url="https://lrs.example.org/", bearer="t")
    assert "protocol xapi" in errors["delivery"]
    _, errors = req(delivery="caliper", protocol="caliper", url="https://c.example.org/")
    assert "bearer" in errors


def test_direct_needs_no_url_and_unknown_sites_are_named():
    spec, errors = req(delivery="direct", url="")
    assert errors == {} and spec.url is None
    _, errors = req(sites=["default", "mars"])
    assert "'mars'" in errors["sites"] and "campus" in errors["sites"]


def test_scope_required_and_malformed_keys_rejected():
    _, errors = req(courses="")
    assert "at least one" in errors["scope"]
    _, errors = req(courses="course-v1:edX+Demo<script>+x")
    assert "course key" in errors["courses"]
    _, errors = req(orgs="ed X;drop")
    assert "organisation" in errors["orgs"]


def test_hostile_text():
    _, errors = req(name="x" * 101)
    assert "At most 100" in errors["name"]
    _, errors = req(name="evil\u202egnp.exe")
    assert "text-direction" in errors["name"]
    _, errors = req(name="nul\x00byte")
    assert "control" in errors["name"]
    spec, errors = req(name="<script>alert('x')</script> 學習 🎓")
    assert errors == {} and spec.name.startswith("<script>")
    _, errors = validate_request({"name": "x", "reason": "r" * 5000}, SITES, max_text=2000)
    assert "At most 2000" in errors["reason"]


def test_narrowing_only():
    asked = Scope(sites=["default"], courses=["course-v1:a+b+c", "course-v1:a+b+d"])
    assert check_narrowing(asked, Scope(sites=["default"], courses=["course-v1:a+b+c"])) == {}
    assert "not requested" in check_narrowing(asked, Scope(sites=["default"], courses=["course-v1:x+y+z"]))["courses"]
    assert "widen" in check_narrowing(asked, Scope(sites=["default"]))["courses"]
    # "any" requested: the administrator may restrict it
    assert check_narrowing(Scope(orgs=["edX"]), Scope(orgs=["edX"], event_types=["edx.video.played"])) == {}


def test_split_list_and_signup():
    assert split_list("a, b\nb  c") == ["a", "b", "c"]
    assert split_list(["x", " x ", ""]) == ["x"]
    values, errors = validate_signup({"email": "A@Example.ORG", "name": "A", "password": "short"})
    assert values["email"] == "a@example.org" and "10 characters" in errors["password"]
    _, errors = validate_signup({"email": "nope", "name": "A", "password": "long enough pw"})
    assert "e-mail" in errors["email"]


def test_password_hash_roundtrip_and_secrets_format():
    stored = security.hash_password("correct horse battery", n=2**12)
    assert stored.startswith("scrypt$4096$") and "correct" not in stored
    assert security.verify_password("correct horse battery", stored)
    assert not security.verify_password("wrong", stored)
    assert not security.verify_password("x", "garbage")
    secret = security.new_webhook_secret()
    import base64

    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24
    key = security.new_integration_key()
    assert key[0] == "i" and len(key) == 17


def test_login_delay_grows_then_caps():
    from portal.ratelimit import delay_after

    assert [delay_after(n, 3, 5, 900) for n in range(1, 10)] == [0, 0, 5, 10, 20, 40, 80, 160, 320]
    assert delay_after(40, 3, 5, 900) == 900 and delay_after(10**6, 3, 5, 900) == 900


def test_scrypt_cost_and_rehash():
    assert (security.SCRYPT_N, security.SCRYPT_R, security.SCRYPT_P) == (2**17, 8, 1)
    current = security.hash_password("correct horse battery")
    old = security.hash_password("correct horse battery", n=2**14)
    assert security.verify_password("correct horse battery", old) and security.verify_password("correct horse battery", current)
    assert security.needs_rehash(old) and not security.needs_rehash(current)
    assert security.needs_rehash("!disabled") and not security.verify_password("x", "!disabled")


def test_secretbox_seals_and_refuses_a_wrong_key(tmp_path):
    from cryptography.fernet import Fernet

    from hub.core.grants import Target
    from hub.core.secretbox import SecretBox, SecretError, load_key

    key = load_key(tmp_path)
    assert oct((tmp_path / "secrets.key").stat().st_mode & 0o777) == "0o600" and load_key(tmp_path) == key
    box = SecretBox(key)
    target = Target(id="i1", kind="lrs", url="https://l.example.org", secrets=["whsec_a"], basic_auth="u:p", bearer=None)
    sealed = box.seal_target(target)
    assert sealed.secrets[0].startswith("fernet:") and sealed.basic_auth.startswith("fernet:") and sealed.bearer is None
    assert "whsec_a" not in repr(sealed) and "u:p" not in repr(sealed)
    assert box.open_target(sealed) == target and box.open_target(target) == target  # plaintext passes through
    assert box.seal_target(sealed) == sealed  # sealing twice changes nothing
    with pytest.raises(SecretError):
        SecretBox(Fernet.generate_key()).open(sealed.basic_auth)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://10.0.0.1/", "http://[::1]/", "http://[2002:a00:1::1]/",
                                 "http://[fec0::1]/", "http://169.254.169.254/latest/meta-data"])
def test_literal_private_endpoints_are_not_allowed(url):
    _, errors = validate_request({"name": "x", "protocol": "xapi", "delivery": "webhook", "url": url, "sites": ["default"]},
                                 SITES)
    assert errors == {"url": "The deliverer will not send there: address not allowed (not a public address)."}
    _, errors = validate_request({"name": "x", "protocol": "xapi", "delivery": "webhook", "url": url.replace("127.0.0.1", "8.8.8.8"),
                                  "sites": ["default"]}, SITES, allowed=ssrf.networks(["0.0.0.0/0", "::/0"]))
    assert errors == {}


async def test_without_smtp_mails_go_to_the_outbox_and_the_link_is_printed(tmp_path, capsys):
    from portal import mail
    from portal.settings import PortalSettings

    settings = PortalSettings(data_dir=str(tmp_path))
    await mail.send(settings, "a@example.org", "Confirm", "Open http://127.0.0.1:8080/verify?token=abc now.\n")
    files = list((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
    assert "To: a@example.org" in files[0].read_text() and "verify?token=abc" in files[0].read_text()
    assert "http://127.0.0.1:8080/verify?token=abc" in capsys.readouterr().out


def test_one_table_says_which_decision_moves_which_status():
    from types import SimpleNamespace

    from portal.services import PortalError
    from portal.services.integrations import TRANSITIONS, check_transition

    moves = {(frm, step.to) for step in TRANSITIONS.values() for frm in step.frm}
    assert moves == {("pending", "approved"), ("pending", "denied"), ("pending", "revoked"),
                     ("approved", "suspended"), ("approved", "revoked"), ("suspended", "approved"),
                     ("suspended", "revoked")}
    for decision, step in TRANSITIONS.items():
        for status in ("pending", "approved", "suspended", "denied", "revoked"):
            row = SimpleNamespace(status=status)
            if status in step.frm:
                assert check_transition(row, decision).to == step.to
            else:
                with pytest.raises(PortalError) as refused:
                    check_transition(row, decision)
                assert refused.value.status == 409 and status in refused.value.message, (decision, status)


def test_every_portal_table_is_defined_in_portal_tables():
    """One module of tables (issue 21): migrations and newcomers find every table in portal/tables.py."""
    import importlib
    import pkgutil

    from piccolo.table import Table

    import portal
    from portal.tables import TABLES

    found = set()
    for info in pkgutil.walk_packages(portal.__path__, "portal."):
        if ".migrations" in info.name or info.name.endswith(("piccolo_conf", "piccolo_app", "cli")):
            continue
        module = importlib.import_module(info.name)
        found |= {(v.__module__, v.__name__) for v in vars(module).values()
                  if isinstance(v, type) and issubclass(v, Table) and v is not Table}
    assert {m for m, _ in found} == {"portal.tables"}, found
    assert {n for _, n in found} == {t.__name__ for t in TABLES}


def test_every_operation_form_has_its_handler():
    """One handler per operation (portal.services.operations.OPERATIONS): every /ops/<name> form of the
    pages names one, and nothing else dispatches on the operation's name."""
    import re

    from portal.services.operations import OPERATIONS
    from tests.helpers import ROOT

    used = set()
    for page in (ROOT / "portal" / "templates").glob("*.html"):
        used |= set(re.findall(r"/ops/([a-z-]+)", page.read_text()))
    assert used and used <= set(OPERATIONS), used - set(OPERATIONS)
    source = (ROOT / "portal" / "services" / "operations.py").read_text()
    assert "if op ==" not in source and "elif op ==" not in source
