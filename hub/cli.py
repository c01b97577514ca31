"""``rthub``: one command in front of every service and tool.

Each subcommand lives beside the code it runs; a module listed in ``COMMANDS`` exposes
``add_parser(subparsers)`` that registers its parser(s) with ``func`` set to a callable taking the parsed
arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hub.logs import setup_logging

COMMANDS = (
    "hub.up",
    "hub.service",
    "hub.streams",
    "hub.grant_cli",
    "hub.deliver.cli",
    "lms_publisher.cli",
    "hub.cluster",
    "hub.auth.cli",
    "portal.cli",
    "hub.translate.cli",
)

# packages of the `server` extra; a command module that needs one is left out of an LMS-side install
SERVER_ONLY = {"litestar", "piccolo", "jinja2", "httpx"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rthub", description=__doc__.splitlines()[0])
    parser.add_argument("--log-json", action="store_true", help="log structured JSON lines")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    missing = []
    for name in COMMANDS:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(json_lines=args.log_json, level=args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
