"""Learner groups that follow the LMS: edx-enterprise's links, and Open edX user retirement.

When edx-enterprise links a learner to an enterprise customer (``EnterpriseCustomerUser`` saved with
``linked=True``) the learner joins group ``enterprise-<customer uuid>``; unlinked (``linked=False``, edx-enterprise's
soft delete) or deleted, the learner leaves it. Open edX's retirement (``USER_RETIRE_LMS_CRITICAL``) publishes
that the learner is retired: the hub then forgets the learner everywhere. Each change is a raw event
(``rthub.group.member_added``, ``rthub.group.member_removed``, ``rthub.learner.retired``) published through the
rthub tracking backend already configured in the LMS (its queue, spool and site; never through the other
tracking backends, so the e-mail goes nowhere else). The hub applies them to its own site's groups only.

Install it in the LMS settings (the Tutor plugin does)::

    INSTALLED_APPS += ["lms_publisher.groups.RthubGroupsConfig"]
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from hub.core.groups import LEARNER_RETIRED, MEMBER_ADDED, MEMBER_REMOVED

log = logging.getLogger("rthub.lms.groups")
Sink = Callable[[dict[str, Any]], None]
_sink: Sink | None = None


def enterprise_group(customer_uuid: Any) -> str:
    """The group of an enterprise customer: ``enterprise-<uuid>`` (a group name: letters, digits and ``-``)."""
    return f"enterprise-{customer_uuid}"


def membership_event(
    name: str,
    user_id: int | str,
    group: str | None = None,
    username: str | None = None,
    email: str | None = None,
    when: dt.datetime | None = None,
) -> dict[str, Any]:
    """A membership event in the tracking backend's shape; the learner is in ``data`` (``context`` belongs to
    whoever made the request, e.g. an administrator)."""
    data: dict[str, Any] = {"user_id": int(user_id)}
    if group is not None:
        data["group"] = group
    if username:
        data["username"] = username
    if email:
        data["email"] = email
    return {
        "name": name,
        "timestamp": (when or dt.datetime.now(dt.UTC)).isoformat(),
        "context": {},
        "data": data,
    }


def set_sink(sink: Sink | None) -> None:
    """Where events go (tests, or an LMS wiring its own); default: the rthub tracking backend."""
    global _sink
    _sink = sink


def _rthub_backends() -> list[Any]:
    """The rthub backends among event-tracking's (also inside routing backends)."""
    from eventtracking import tracker

    from lms_publisher.backend import NatsBackend

    found, todo = [], list(getattr(tracker.get_tracker(), "backends", {}).values())
    while todo:
        backend = todo.pop()
        if isinstance(backend, NatsBackend):
            found.append(backend)
        todo.extend(
            getattr(backend, "backends", {}).values()
            if isinstance(getattr(backend, "backends", None), dict)
            else []
        )
    return found


def emit(event: dict[str, Any]) -> None:
    """Hand one membership event to the sink; never raises into the LMS."""
    try:
        if _sink is not None:
            _sink(event)
            return
        backends = _rthub_backends()
        if not backends:
            log.warning("rthub: no rthub tracking backend configured; %s not published", event["name"])
        for backend in backends:
            backend.send(event)
    except Exception:  # noqa: BLE001 - the LMS must never see our failures
        log.exception("rthub: could not publish %s", event.get("name"))


# ---- receivers ------------------------------------------------------------------------------------------
def enterprise_user_saved(sender, instance, created: bool = False, **kwargs) -> None:
    """``post_save`` of ``EnterpriseCustomerUser``: linked -> member (with username and e-mail), unlinked -> not."""
    group = enterprise_group(instance.enterprise_customer_id)
    if instance.linked:
        user = instance.user
        emit(
            membership_event(
                MEMBER_ADDED,
                instance.user_id,
                group,
                getattr(user, "username", None),
                getattr(user, "email", None),
            )
        )
    else:
        emit(membership_event(MEMBER_REMOVED, instance.user_id, group))


def enterprise_user_deleted(sender, instance, **kwargs) -> None:
    """``post_delete`` of ``EnterpriseCustomerUser``: the learner leaves the enterprise's group."""
    emit(
        membership_event(MEMBER_REMOVED, instance.user_id, enterprise_group(instance.enterprise_customer_id))
    )


def user_retired(sender, user=None, **kwargs) -> None:
    """Open edX's ``USER_RETIRE_LMS_CRITICAL``: the hub forgets the learner (groups and identity)."""
    if user is not None:
        emit(membership_event(LEARNER_RETIRED, user.id))


def connect() -> list[str]:
    """Connect the receivers to what this LMS has (edx-enterprise, edx-platform's retirement signal); returns
    what was connected."""
    from django.db.models.signals import post_delete, post_save

    connected = []
    try:
        from enterprise.models import EnterpriseCustomerUser
    except ImportError:
        EnterpriseCustomerUser = None  # noqa: N806 - edx-enterprise not installed: nothing to follow
    if EnterpriseCustomerUser is not None:
        post_save.connect(enterprise_user_saved, sender=EnterpriseCustomerUser, dispatch_uid="rthub-ecu-save")
        post_delete.connect(
            enterprise_user_deleted, sender=EnterpriseCustomerUser, dispatch_uid="rthub-ecu-del"
        )
        connected.append("enterprise")
    try:
        from openedx.core.djangoapps.user_api.accounts.signals import USER_RETIRE_LMS_CRITICAL
    except ImportError:
        USER_RETIRE_LMS_CRITICAL = None  # noqa: N806 - outside edx-platform
    if USER_RETIRE_LMS_CRITICAL is not None:
        USER_RETIRE_LMS_CRITICAL.connect(user_retired, dispatch_uid="rthub-retire")
        connected.append("retirement")
    return connected


try:
    from django.apps import AppConfig

    class RthubGroupsConfig(AppConfig):
        """Add ``lms_publisher.groups.RthubGroupsConfig`` to ``INSTALLED_APPS``: connects the receivers."""

        name = "lms_publisher"
        label = "rthub_groups"
        verbose_name = "rthub learner groups"

        def ready(self) -> None:
            log.info("rthub learner groups follow: %s", ", ".join(connect()) or "nothing (no edx-enterprise)")
except ImportError:  # no Django: the functions above still work
    pass
