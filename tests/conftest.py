"""Fixtures shared by every test folder: real redis-server processes on free ports (see redis_server.py)."""

from tests.redis_server import redis_cluster, redis_server  # noqa: F401
