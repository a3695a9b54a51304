"""The review app's HTTP server: standard library only, 127.0.0.1 only, one secret token.

Every request must carry the token, as ?token= (the URL printed at start; the
answer sets it as an HttpOnly, SameSite=Strict cookie and sends the browser on
to the page without it) or as that cookie; anything else gets 403. The token is
compared in constant time. The Host header must name this server (no DNS
rebinding), and a POST must be JSON from this origin (no cross-site forms).

Only these paths exist; nothing in a URL ever reaches the file system:

    GET  /                   the page        GET /app.js, /app.css   its code and style
    GET  /api/state          run, classes, counts
    GET  /api/items          ?view=&label=&q=&offset=&size=  one page of a view
    GET  /api/thumb          ?row=N&size=s|l  image N of training_values.csv, scaled
    POST /api/review         {"row": N, "decision": "clean|dirty|relabel|", "label": ...}
    POST /api/undo           take back the last decision of this session

Images are addressed by their row number in training_values.csv (checked: an
integer in range) and read from the path that table gives; the page's code and
style are strings in tvcore.review.assets.
"""

from __future__ import annotations

import errno
import hmac
import http.cookies
import json
import os
import secrets
import signal
import sys
import threading
import webbrowser
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import TvcleanError, os_error_cause
from ..rundir import RunDir
from ..rundir.ownership import review_lock
from . import assets
from .state import NOT_EXTRACTED, VIEWS, ReviewState, check_review_run
from .thumbnails import SIZES, Thumbnail, Thumbnails

HOST = "127.0.0.1"
MAX_BODY = 64 * 1024  # bytes of a POST body
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _read_index(state: ReviewState) -> None:
    try:
        state.load_index()
    except Exception:  # said again when a request needs the index
        pass


class ReviewServer(ThreadingHTTPServer):
    """A running review app for one run (bound to 127.0.0.1; `url` holds the token)."""

    daemon_threads = True
    request_queue_size = 64  # a page's image requests wait here while the run is read
    allow_reuse_address = False  # a second server on a port in use must fail, not share it

    def __init__(self, run: str | Path | RunDir, port: int = 0, token: str | None = None):
        self.run = check_review_run(run)
        self._lock = review_lock(self.run.root)
        self._state: ReviewState | None = None
        self.token = token or secrets.token_urlsafe(32)
        self.thumbnails = Thumbnails(self.run.own / "thumbnails")
        try:
            super().__init__((HOST, port), ReviewHandler)
        except OSError as exc:
            if self._lock >= 0:  # (the base class may have closed the server already)
                os.close(self._lock)
                self._lock = -1
            if exc.errno == errno.EADDRINUSE:
                raise TvcleanError(f"--port {port}: already in use; choose another or leave "
                                   f"--port out for a free one") from None
            raise TvcleanError(f"cannot serve on {HOST}:{port}: {os_error_cause(exc)}") \
                from None
        self.port = int(self.server_address[1])
        self.cookie = f"tvclean_review_{self.port}"  # cookies are per host, not per port
        self.hosts = {f"{HOST}:{self.port}", f"localhost:{self.port}"}

    def load(self) -> ReviewState:
        """Read the run (its table, views and reviews); call before serve_forever."""
        self._state = ReviewState(self.run)
        # the feature index (which file each row is, the unreadable files' errors) is read
        # meanwhile, so the first thumbnails do not wait for it
        threading.Thread(target=_read_index, args=(self._state,), daemon=True).start()
        return self._state

    @property
    def state(self) -> ReviewState:
        if self._state is None:
            raise RuntimeError("ReviewServer.load() first")
        return self._state

    def server_close(self) -> None:
        super().server_close()
        if self._lock >= 0:
            os.close(self._lock)  # releases the review lock
            self._lock = -1

    @property
    def loaded(self) -> bool:
        return self._state is not None

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # a bug: its traceback on stderr

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"),
                                                         self.token.encode())


def open_review(run: str | Path | RunDir, port: int = 0) -> ReviewServer:
    """Bind the review server of a run and read the run (not yet serving: call
    serve_forever)."""
    server = ReviewServer(run, port)
    try:
        server.load()
    except BaseException:
        server.server_close()
        raise
    return server


def serve_review(run: str | Path | RunDir, port: int = 0, open_browser: bool = True,
                 announce: Callable[[ReviewServer], None] | None = None) -> ReviewState | None:
    """Serve the review app of `run` until Ctrl-C; return its state (the counts; None when
    stopped before the run was read).

    port: 0 = a free one. open_browser: open the page in the default browser.
    announce: called once the server listens, before the run is read (the CLI prints
    the URL there): the browser starts while the table is read, and its requests
    wait in the socket's queue until the server answers.
    """
    server = ReviewServer(run, port)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main else None  # `kill`: as Ctrl-C
    try:
        if announce is not None:
            announce(server)
        if open_browser:
            threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
        server.load()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return server.state if server.loaded else None


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class ReviewHandler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "tvclean-review"
    timeout = 30  # seconds a connection may stall (a body shorter than its Content-Length)
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a quiet terminal: the decisions are in review.csv

    # --- dispatch -----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def _handle(self, method: str) -> None:
        try:
            try:
                self._route(method)
            except HttpError as exc:
                self._send_error(exc.status, str(exc))
            except TvcleanError as exc:  # a failed save (full disk, ...): the page shows it
                self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
        except ConnectionError:  # the browser went away (a page left, an image no longer needed)
            self.close_connection = True

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        self._check_access(url.path, query)
        if method == "POST":
            handler = {"/api/review": self._post_review, "/api/undo": self._post_undo}.get(url.path)
            if handler is None:
                raise HttpError(HTTPStatus.NOT_FOUND, "not found")
            self._check_post()
            handler(self._json_body())
            return
        if url.path == "/" and "token" in query:  # the printed URL: keep the token in a cookie
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", "/")
            self.send_header("Set-Cookie", f"{self.server.cookie}={self.server.token}; "
                                           f"HttpOnly; SameSite=Strict; Path=/")
            self.send_header("Content-Length", "0")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return
        if url.path in assets.FILES:
            content_type, body = assets.FILES[url.path]
            self._send(HTTPStatus.OK, content_type, body, method)
        elif url.path == "/api/state":
            self._send_json(self.server.state.summary(), method)
        elif url.path == "/api/items":
            self._send_json(self._items(query), method)
        elif url.path == "/api/thumb":
            self._thumbnail(query, method)
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, "not found")

    def _check_access(self, path: str, query: dict[str, list[str]]) -> None:
        if self.headers.get("Host", "") not in self.server.hosts:
            raise HttpError(HTTPStatus.FORBIDDEN, "forbidden: unknown host")
        given = query.get("token", [None])[-1]
        if given is None:
            cookies = http.cookies.SimpleCookie()
            try:
                cookies.load(self.headers.get("Cookie", ""))
            except http.cookies.CookieError:
                pass
            morsel = cookies.get(self.server.cookie)
            given = morsel.value if morsel is not None else None
        if not self.server.token_ok(given):
            raise HttpError(HTTPStatus.FORBIDDEN, "forbidden: open the URL that `tvclean "
                                                  "review` printed (it holds the token)")

    def _check_post(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin.removeprefix("http://") not in self.server.hosts:
            raise HttpError(HTTPStatus.FORBIDDEN, "forbidden: cross-origin request")
        if self.headers.get_content_type() != "application/json":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON")

    def _json_body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if not 0 <= length <= MAX_BODY:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request too large")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise HttpError(HTTPStatus.BAD_REQUEST, "not JSON (or nested too deep)") from None
        if not isinstance(body, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "send a JSON object")
        return body

    # --- the API ------------------------------------------------------------------------

    def _items(self, query: dict[str, list[str]]) -> dict[str, Any]:
        view = _one(query, "view", "next")
        if view not in VIEWS:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"no view {view!r}")
        offset = _integer(_one(query, "offset", "0"), 10**9)
        size = _integer(_one(query, "size", "60"), 10**9)
        if offset is None or size is None:
            raise HttpError(HTTPStatus.BAD_REQUEST, "offset and size are whole numbers")
        try:
            page = self.server.state.page(view, _one(query, "label", ""), _one(query, "q", ""),
                                          offset, size)
        except TvcleanError as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        return {**page.to_dict(), "counts": self.server.state.counts()}

    def _row(self, text: Any) -> int:
        row = _integer(str(text) if isinstance(text, (str, int)) and not isinstance(text, bool)
                       else "", len(self.server.state) - 1)
        if row is None:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such image")
        return row

    def _thumbnail(self, query: dict[str, list[str]], method: str) -> None:
        row = self._row(_one(query, "row", ""))
        size = _one(query, "size", "s")
        if size not in SIZES:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such size")
        state = self.server.state
        if state.table.decision[row] == "error":
            raise HttpError(HTTPStatus.NOT_FOUND, state.errors[row] or "unreadable image")
        path = state.image_path(row)
        if path is None:
            raise HttpError(HTTPStatus.NOT_FOUND, NOT_EXTRACTED)
        made = self.server.thumbnails.get(path, size)
        if not isinstance(made, Thumbnail):
            raise HttpError(HTTPStatus.NOT_FOUND, made)
        self._send(HTTPStatus.OK, made.content_type, made.data, method,
                   cache="private, max-age=3600")

    def _post_review(self, body: dict[str, Any]) -> None:
        row = self._row(body.get("row"))
        if "decision" not in body:
            raise HttpError(HTTPStatus.BAD_REQUEST, 'say the decision ("" to undo)')
        decision, label = body["decision"], body.get("label", "")
        if not isinstance(decision, str) or not isinstance(label, str):
            raise HttpError(HTTPStatus.BAD_REQUEST, "decision and label are strings")
        try:
            item = self.server.state.decide(row, decision, label)
        except TvcleanError as exc:
            if "cannot save" in str(exc):
                raise
            raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        self._send_json({"item": item, "counts": self.server.state.counts()}, "POST")

    def _post_undo(self, body: dict[str, Any]) -> None:
        item = self.server.state.undo()
        if item is None:
            raise HttpError(HTTPStatus.CONFLICT, "nothing to undo")
        self._send_json({"item": item, "counts": self.server.state.counts()}, "POST")

    # --- answers ------------------------------------------------------------------------

    def _send(self, status: HTTPStatus, content_type: str, body: bytes, method: str,
              cache: str = "no-store", close: bool = False) -> None:
        self.send_response(status)
        if close:
            self.send_header("Connection", "close")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _send_json(self, obj: Any, method: str) -> None:
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self._send(HTTPStatus.OK, "application/json; charset=utf-8", body, method)

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        self.close_connection = True  # a refused request's body may not have been read
        if urlsplit(self.path).path.startswith("/api/"):
            body, kind = json.dumps({"error": message}).encode("utf-8"), "application/json"
        else:  # a person typed the address: plain words
            body, kind = f"{status.value} {message}\n".encode(), "text/plain"
        self._send(status, f"{kind}; charset=utf-8", body, "GET", close=True)


def _one(query: dict[str, list[str]], name: str, default: str) -> str:
    values = query.get(name)
    return values[-1] if values else default


def _integer(text: str, largest: int) -> int | None:
    """A whole number 0..largest written with digits only (no sign, space or exponent)."""
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        return None
    value = int(text)
    return value if value <= largest else None
