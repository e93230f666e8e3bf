"""auth.py: bearer tokens: where they come from (PACER_* or a generated file) and how a request's is checked.

An empty secret must never open anything: an empty or whitespace-only token refuses to start the service (a disk
that filled up while the token file was written leaves exactly that), and an empty credential never matches.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from pathlib import Path

from pacer.config import Settings


class TokenError(Exception):
    """A configured token cannot be used; the message says which and what to do."""


def _checked(token: str, where: str) -> str:
    token = token.strip()
    if not token:
        raise TokenError(f"{where} is empty: an empty token would let anyone in. Set a secret, or unset it")
    return token


def operator_token(settings: Settings) -> str:
    """PACER_OPERATOR_TOKEN, or one generated once into PACER_OPERATOR_TOKEN_FILE (0600) and reused on restart."""
    if settings.operator_token is not None:
        return _checked(settings.operator_token, "PACER_OPERATOR_TOKEN")
    path = settings.operator_token_file
    if not path.exists():
        _create(path, secrets.token_urlsafe(32))
    return _checked(path.read_text(), f"operator token file {path} (delete it to have a new one generated)")


def bidder_token(settings: Settings) -> str | None:
    """PACER_BIDDER_TOKEN when set (the bidder routes need it then), else None."""
    return None if settings.bidder_token is None else _checked(settings.bidder_token, "PACER_BIDDER_TOKEN")


def _create(path: Path, token: str) -> None:
    """Write the token whole or not at all: a temporary file, fsync, then a hard link to the final name (which,
    unlike rename, never replaces a token another process wrote meanwhile), fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another worker made it first: theirs is the token
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def bearer_matches(authorization: bytes, token: bytes) -> bool:
    """`Authorization: Bearer <token>` (scheme case-insensitive, RFC 9110), compared in constant time; an empty
    credential (or token) never matches."""
    scheme, _, given = authorization.partition(b" ")
    given = given.strip()
    return bool(given) and bool(token) and scheme.lower() == b"bearer" and hmac.compare_digest(given, token)
