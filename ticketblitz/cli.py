"""`ticketblitz serve`, `ticketblitz seed` and `ticketblitz flash-sale` (in `ticketblitz.loadgen`)."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from . import loadgen
from .config import Settings
from .server import build_service, seed_demo, serve_until_signalled
from .workers import supervise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketblitz", description="TicketBlitz booking server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (embedded default unless service URLs are set)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1, env TICKETBLITZ_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, env TICKETBLITZ_PORT)")
    serve.add_argument("--data-dir", dest="data_dir", help="embedded data folder (default ./data)")
    serve.add_argument("--demo", action="store_const", const=True, help="create the demo event if missing")
    serve.add_argument("--workers", type=int, help="server processes (distributed mode only)")
    seed = sub.add_parser("seed", help='create the demo event "The Eras Tour" (10,000 seats) if missing')
    seed.add_argument("--data-dir", dest="data_dir", help="embedded data folder (default ./data)")
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
    if settings.listen_fd >= 0:  # a worker of `--workers N`: the supervisor printed everything
        trio.run(serve_until_signalled, settings)
        return 0
    generated = settings.ensure_admin_token()
    print("TicketBlitz settings:\n" + settings.describe(), flush=True)
    if generated:
        print(f"Generated admin token (set TICKETBLITZ_ADMIN_TOKEN to keep one): {settings.admin_token}", flush=True)
    if settings.workers > 1:
        if settings.demo:
            trio.run(_seed, settings)
        return trio.run(supervise, settings)
    trio.run(serve_until_signalled, settings)
    return 0


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
