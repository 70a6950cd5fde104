"""Fixtures shared by test modules: the `servers` fixture of tests/http_servers.py
(used by the engine tests and the driven users' cookie test)."""

pytest_plugins = ["http_servers"]
