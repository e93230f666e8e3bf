"""cli.py: the `pacer` command: `pacer serve` runs the service, `pacer replay` replays auction logs, `pacer refit`
fits spend curves from the auction log."""

from __future__ import annotations

import argparse
import os
import sys

from pacer.config import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pacer.api.auth import TokenError, bidder_token, operator_token
    from pacer.connections import GuardedHttpToolsProtocol, raise_fd_limit
    from pacer.logs import log_config

    # Flags override PACER_* variables; the app (possibly in worker processes) reads the same variables.
    for flag, env in (("host", "PACER_HOST"), ("port", "PACER_PORT"), ("store", "PACER_STORE")):
        value = getattr(args, flag)
        if value is not None:
            os.environ[env] = str(value)
    settings = Settings()
    if args.workers > 1 and settings.store.startswith("sqlite"):
        print(
            "pacer: --workers > 1 needs a shared store (redis://...): with one SQLite file per process "
            "every worker would spend the whole budget.",
            file=sys.stderr,
        )
        return 2
    try:  # before any worker starts: an empty token must stop the service, not open it
        operator_token(settings)
        bidder_token(settings)
    except TokenError as exc:
        print(f"pacer: {exc}", file=sys.stderr)
        return 2
    if settings.operator_token is None:
        print(
            f"pacer: operator token (PACER_OPERATOR_TOKEN unset) is in {settings.operator_token_file.resolve()}",
            file=sys.stderr,
            flush=True,
        )
    # The guarded protocol bounds request heads and idle connections and caps connections (pacer/connections.py).
    raise_fd_limit(settings.max_connections)
    uvicorn.run(
        "pacer.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,
        timeout_keep_alive=settings.keep_alive_s,
        access_log=False,
        log_level=settings.log_level,
        log_config=log_config(settings.log_format, settings.log_level),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pacer", description="Real-time budget pacing for ad bidding.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="bind address (PACER_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (PACER_PORT, default 8080)")
    serve.add_argument("--store", help="sqlite:///path.db (default sqlite:///./pacer.db) or redis://host:port/db")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (needs a shared store)")
    from pacer.refit import command as refit_command
    from pacer.replay import command as replay_command

    replay_command.add_parser(sub)
    refit_command.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "replay":
        return replay_command.run(args)
    if args.command == "refit":
        return refit_command.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
