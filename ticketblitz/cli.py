"""`ticketblitz serve`, `ticketblitz seed` and `ticketblitz flash-sale` (in `ticketblitz.loadgen`)."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Any

import trio

from . import __version__, loadgen
from .config import ENV_PREFIX, Settings
from .server import build_service, seed_demo, serve_until_signalled
from .workers import supervise

DEFAULTS = Settings()


def _flag(parser: argparse.ArgumentParser, name: str, help: str, setting: str | None = None, **kw: Any) -> None:
    """A flag for a setting; its help names the environment variable (and the default) of that setting."""
    setting = setting or name.lstrip("-").replace("-", "_")
    default = getattr(DEFAULTS, setting)
    shown = "" if kw.get("action") == "store_const" or default in ("", None) else f", default {default}"
    parser.add_argument(name, dest=setting, help=f"{help} (env {ENV_PREFIX}{setting.upper()}{shown})", **kw)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketblitz", description="TicketBlitz booking server")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (embedded default unless service URLs are set)")
    _flag(serve, "--host", "bind address")
    _flag(serve, "--port", "port of the one public listener", type=int)
    _flag(serve, "--data-dir", "embedded data folder, holding ticketblitz.db")
    _flag(serve, "--demo", "create the demo event evt_demo if missing", action="store_const", const=True)
    _flag(serve, "--demo-seats", "seats of the demo event when it is created: 1..100 or a multiple of 100",
          type=int, metavar="N")
    _flag(serve, "--workers", "server processes; more than 1 needs distributed mode", type=int)
    _flag(serve, "--admin-token", "bearer token of organizer routes; generated and printed when unset "
          "(a flag is visible to other local users in ps: prefer the variable)", metavar="TOKEN")
    _flag(serve, "--log-level", "logging level: debug, info, warning, error", metavar="LEVEL")
    seed = sub.add_parser("seed", help='create the demo event "The Eras Tour" (10,000 seats) if missing')
    _flag(seed, "--data-dir", "embedded data folder, holding ticketblitz.db")
    _flag(seed, "--seats", "seats of the demo event: 1..100 or a multiple of 100", "demo_seats", type=int,
          metavar="N")
    loadgen.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "flash-sale":  # a client of a server: no server settings
        return loadgen.run(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = Settings.from_env(**overrides)
    except ValueError as exc:
        print(f"ticketblitz: {exc}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    if args.command == "seed":
        return trio.run(_seed, settings)
    try:
        return _serve(settings)
    except BaseException as exc:
        message = _listen_error(exc, settings)
        if message is None:
            raise
        print(f"ticketblitz: {message}", file=sys.stderr, flush=True)
        return 2


def _serve(settings: Settings) -> int:
    if settings.listen_fd >= 0:  # a worker of `--workers N`: the supervisor printed everything
        trio.run(serve_until_signalled, settings)
        return 0
    generated = settings.ensure_admin_token()
    print("TicketBlitz settings:\n" + settings.describe(), flush=True)

    def announce(url: str) -> None:
        url = _browsable(url)
        token = (f"{settings.admin_token} (generated at this start; set TICKETBLITZ_ADMIN_TOKEN to choose one)"
                 if generated else "the one you set (TICKETBLITZ_ADMIN_TOKEN or --admin-token)")
        print(f"TicketBlitz {__version__} is serving {url}/ (API docs: {url}/docs) -- admin token: {token}",
              flush=True)

    if settings.workers > 1:
        if settings.demo:
            trio.run(_seed, settings)
        return trio.run(supervise, settings, announce)
    trio.run(serve_until_signalled, settings, lambda running: announce(running.url))
    return 0


def _browsable(url: str) -> str:
    """The address a browser on this machine opens for a wildcard bind."""
    return url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:").replace("://:::", "://[::1]:")


def _listen_error(exc: BaseException, settings: Settings) -> str | None:
    """One line for a public port that cannot be bound (anywhere in an exception group), else None."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            message = _listen_error(inner, settings)
            if message is not None:
                return message
        return None
    if not isinstance(exc, OSError):
        return None
    if exc.errno == errno.EADDRINUSE:
        return f"port {settings.port} on {settings.host} is in use (set TICKETBLITZ_PORT or --port)"
    return None


async def _seed(settings: Settings) -> int:
    service = build_service(settings.replace(consumers=0))  # only the store and admission are needed
    await service.open()
    try:
        event, created = await seed_demo(service)
    finally:
        await service.close()
    print(f"{'created' if created else 'already present'}: {event.id} {event.name!r}, {event.capacity} seats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
