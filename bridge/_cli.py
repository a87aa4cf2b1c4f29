"""The ``bridge`` command line.

::

    bridge run [-c FILE]            run the daemon (embedded default config without -c)
    bridge check-config [-c FILE] [--show-secrets]
                                    validate and print the resolved config, secrets
                                    redacted unless --show-secrets; exit 2 on error
    bridge version                  print the version
    bridge call ...                 place test calls / generate load (see ``bridge call -h``)
    bridge echo-server ...          a standalone echo application server

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error, 3 ``bridge
run`` stopped but events or stream records could not be written to the records database
(each is logged with its id: ``event lost`` / ``stream record lost``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._errors import ConfigError
from ._version import __version__

__all__ = ["main"]


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=None,
        help="TOML config file (default: the embedded loopback config that echoes every call)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge",
        description="Connects live telephone calls to applications over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_run = sub.add_parser("run", help="run the daemon")
    _add_config_arg(p_run)

    p_check = sub.add_parser("check-config", help="validate a config and print it resolved")
    _add_config_arg(p_check)
    p_check.add_argument(
        "--show-secrets",
        action="store_true",
        help="print tokens, secrets, passwords and app.headers values as they are"
        ' (by default they are shown as "<redacted>")',
    )

    sub.add_parser("version", help="print the version")

    # The emulator/load generator and the standalone echo server: bridge.tools, which
    # the daemon never imports (the CLI sits above both).
    from .tools import add_call_parser, add_echo_server_parser

    add_call_parser(sub, configure_logging=_console_logging)
    add_echo_server_parser(sub, configure_logging=_console_logging)
    return parser


def _console_logging(level: str) -> None:
    """The tools log to the console at their ``--log-level``, formatted as the daemon's
    console lines (bridge.daemon's set-up; the tools themselves never import the daemon)."""
    from .daemon._logging import configure_logging

    configure_logging(level, "console")


def _config_error(exc: ConfigError, path: str | None) -> int:
    file = exc.file or path or "<embedded default>"
    field = exc.path or "<file>"
    print(f"error: {file}: {field}: {exc.message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"bridge {__version__}")
        return 0

    if args.command in ("run", "check-config"):
        from .daemon._config import dump_config, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return _config_error(exc, args.config)
        except OSError as exc:
            print(f"error: {args.config}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        from .daemon._tls import check_tls_files

        try:
            # Files the config names (the listener's certificate and key) must load too.
            check_tls_files(config.websocket, file=args.config)
        except ConfigError as exc:
            return _config_error(exc, args.config)
        if args.command == "check-config":
            sys.stdout.write(dump_config(config, redact=not args.show_secrets))
            return 0
        from .daemon._daemon import run_daemon

        return run_daemon(config, config_path=args.config)

    handler = getattr(args, "handler", None)
    if handler is None:  # pragma: no cover - argparse enforces a command
        parser.print_help()
        return 2
    result: int = handler(args)
    return result
