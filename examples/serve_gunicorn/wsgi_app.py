"""A plain WSGI application for gunicorn's sync workers, as anyone would write one.

Nothing in it knows about fdchannel: ``fdchannel serve`` gives gunicorn its
sockets, and ``/healthz`` is what its ``--ready`` check asks.  See
docs/serve.md and README.md beside this file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """``/healthz``: 200 once the application is up; anything else: who answered."""
    if environ.get("PATH_INFO") == "/healthz":
        body = b"ok\n"
    else:
        body = f"hello from pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
