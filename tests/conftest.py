"""Shared fixtures."""

from __future__ import annotations

import os

# Tests must never touch the network; the embedded model and data are local.
os.environ.setdefault("TVCLEAN_OFFLINE", "1")


# --- a loopback HTTP server for download tests (fetch, weights) ---------------------------

import http.server
import threading

import pytest


@pytest.fixture
def http_files():
    """Serve bytes on 127.0.0.1: yields (base_url, files, truncate).

    files[url_path] = bytes; a url_path in `truncate` announces its full length
    but sends only half, like a dropped connection.
    """
    files: dict[str, bytes] = {}
    truncate: set[str] = set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if self.path in truncate else body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files, truncate
    httpd.shutdown()
    httpd.server_close()
