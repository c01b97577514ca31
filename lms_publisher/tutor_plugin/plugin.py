"""The ``rthub`` Tutor plugin: config values, settings and Dockerfile patches, and optionally the hub services.

``tutor plugins enable rthub`` + ``tutor config save`` adds ``lms_publisher.backend.NatsBackend`` to the LMS and
CMS ``EVENT_TRACKING_BACKENDS`` and the ``rthub[lms]`` package to the openedx image; ``RTHUB_RUN_HUB: true``
adds nats-server, hub, deliverer and portal to ``tutor local``. Every value is documented in docs/lms.md.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from tutor import hooks
from tutor.exceptions import TutorError

from lms_publisher.tutor_plugin import values

HERE = Path(__file__).parent

try:
    VERSION = metadata.version("rthub")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0.1.0"

hooks.Filters.CONFIG_DEFAULTS.add_items([
    ("RTHUB_VERSION", VERSION),
    # pip requirement installed into the openedx image: the LMS side only (nats-py, nkeys, msgspec)
    ("RTHUB_LMS_REQUIREMENT", "rthub[lms]=={{ RTHUB_VERSION }}"),
    ("RTHUB_NATS_URL", "nats://rthub-nats:4222"),
    # contents of the LMS's .creds file (operator mode); rendered to env/apps/openedx/config/rthub-lms.creds
    ("RTHUB_NATS_CREDS", ""),
    ("RTHUB_SITE", "{{ LMS_HOST }}"),
    # /openedx/data is the persistent data/lms (data/cms) folder of the Tutor root
    ("RTHUB_SPOOL_DIR", "/openedx/data/rthub-spool"),
    ("RTHUB_SPOOL_MAX_BYTES", 256 << 20),
    # event names to publish; empty: every name a translator supports
    ("RTHUB_ALLOW_EVENTS", []),
    ("RTHUB_RUN_HUB", False),
    # Open edX event bus on the hub's NATS (lms_publisher.event_bus; docs/event-bus.md): EVENT_BUS_PRODUCER and
    # EVENT_BUS_CONSUMER in the LMS/CMS settings; with RTHUB_RUN_HUB the init gives them event-bus.creds
    ("RTHUB_EVENT_BUS", False),
    # bus topics whose Open edX Events the hub routes (RUN_HUB), as on the bus: with Tutor's
    # EVENT_BUS_TOPIC_PREFIX ("dev" by default), e.g. dev-learning-course-enrollment-lifecycle
    ("RTHUB_EVENT_BUS_TOPICS", []),
    ("RTHUB_DOCKER_IMAGE", "rthub:{{ RTHUB_VERSION }}"),
    ("RTHUB_SERVER_REQUIREMENT", "rthub[server]=={{ RTHUB_VERSION }}"),
    ("RTHUB_DOCKER_IMAGE_NATS", "nats:2.11-alpine"),
    ("RTHUB_PORTAL_HOST", "rthub.{{ LMS_HOST }}"),
])

hooks.Filters.CONFIG_UNIQUE.add_items([
    ("RTHUB_ID_SECRET", "{{ 32|random_string }}"),
    ("RTHUB_PORTAL_SECRET_KEY", "{{ 32|random_string }}"),
])

# The rthub image for the hub services (RTHUB_RUN_HUB): `tutor images build rthub`.
hooks.Filters.IMAGES_BUILD.add_item(
    ("rthub", ("plugins", "rthub", "build", "rthub"), "{{ RTHUB_DOCKER_IMAGE }}", ()))
hooks.Filters.IMAGES_PULL.add_item(("rthub", "{{ RTHUB_DOCKER_IMAGE }}"))
hooks.Filters.IMAGES_PUSH.add_item(("rthub", "{{ RTHUB_DOCKER_IMAGE }}"))


@hooks.Filters.IMAGES_BUILD_REQUIRED.add()
def _build_required(images: list[str], context_name: str) -> list[str]:
    """`tutor local launch` builds the openedx image (it gets rthub[lms]) and, with the hub, the rthub image."""
    from tutor import config as tutor_config

    if context_name == "local":  # `tutor dev` builds openedx-dev, which has the same patch
        images.append("openedx")
        root = _current_root()
        if root is not None and tutor_config.load(root).get("RTHUB_RUN_HUB"):
            images.append("rthub")
    return images


def _current_root() -> str | None:
    import click

    ctx = click.get_current_context(silent=True)
    return getattr(getattr(ctx, "obj", None), "root", None) if ctx else None


def _filter(check):
    def run(value):
        try:
            return check(value)
        except ValueError as exc:
            raise TutorError(str(exc)) from None

    return run


# rthub_<name> in the patches and templates: values.<name>, a bad value fails `tutor config save`
hooks.Filters.ENV_TEMPLATE_FILTERS.add_items([
    (f"rthub_{name}", _filter(getattr(values, name)))
    for name in ("creds_file", "allow_events", "topics", "spool_max_bytes", "nats_url", "shell_word",
                 "compose_string")
])
hooks.Filters.ENV_TEMPLATE_ROOTS.add_item(str(HERE / "templates"))
# rthub/build -> env/plugins/rthub/build; apps/openedx/config/rthub-lms.creds is rendered by Tutor's own
# ("apps/", "") target, next to lms.env.yml, so it is mounted at /openedx/config in every openedx container.
hooks.Filters.ENV_TEMPLATE_TARGETS.add_item(("rthub/build", "plugins"))


# before Tutor unloads the plugin's own hooks (priority HIGH)
@hooks.Actions.PLUGIN_UNLOADED.add(priority=hooks.priorities.HIGH - 1)
def _remove_creds_on_disable(plugin: str, root: str, _config: dict) -> None:
    """Tutor's ("apps/", "") target rendered the .creds file but never deletes: a secret must not outlive us."""
    if plugin == "rthub":
        from tutor import env as tutor_env

        Path(tutor_env.pathjoin(root, "apps", "openedx", "config", "rthub-lms.creds")).unlink(missing_ok=True)


for _patch in sorted((HERE / "patches").iterdir()):
    hooks.Filters.ENV_PATCHES.add_item((_patch.name, _patch.read_text()))
