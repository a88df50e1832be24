"""Loopback HTTP servers (127.0.0.1 only) for the offline demo and the tests.

- :mod:`~pipeline.synthetic.servers.files`: a static file tree with Range, HEAD, Apache-style
  listings and fault injection (the fake PSA / PDS archive web server, and a COG host);
- :mod:`~pipeline.synthetic.servers.stac`: a STAC API imitation over synthetic COGs;
- :mod:`~pipeline.synthetic.servers.cdse`: Copernicus Data Space OData catalogue, token, download;
- :mod:`~pipeline.synthetic.servers.dhus`: an ESA DHuS hub as sentinelsat talks to it;
- :mod:`~pipeline.synthetic.servers.sentinel2_hub`: the SAFE zips the CDSE and DHuS imitations
  serve, and their shared HTTP plumbing.

:func:`serve_handler` is the one place that runs a handler on a free port in a thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 request handler that logs nothing (tests keep their own request logs)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_body(self, status: int, body: bytes, ctype: str,
                  headers: dict[str, str] | None = None) -> None:
        """Answer with ``body`` and its Content-Length (headers only for HEAD)."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    @property
    def base(self) -> str:
        """This server's base URL, ``http://127.0.0.1:PORT/``."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/"


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server whose request threads never keep the process alive."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


@contextlib.contextmanager
def serve_handler(
    handler_cls: type[BaseHTTPRequestHandler], name: str = "loopback-http"
) -> Iterator[LoopbackServer]:
    """Serve ``handler_cls`` on 127.0.0.1 at a free port until the block ends.

    Yields the running server; its base URL is
    ``f"http://127.0.0.1:{server.server_port}/"``.
    """
    server = LoopbackServer(("127.0.0.1", 0), handler_cls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"{name}-{server.server_port}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
