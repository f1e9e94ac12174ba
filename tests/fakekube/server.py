"""HTTP/1.1 transport for the fake kube-apiserver: a ThreadingHTTPServer on 127.0.0.1.

Faithful: keep-alive connections, ``application/json`` bodies with ``Content-Length``,
chunked ``Transfer-Encoding`` for watches and followed logs, bearer-token authentication
(401 Unauthorized ``Status`` without the kubeconfig's token), every error answered as a
``Status`` object with the matching HTTP status and phrase, ``/version``, ``/healthz``,
``/readyz``, ``/livez``. Simplified: plain HTTP (no TLS), no discovery documents, no
protobuf/CBOR/YAML encodings.

Every connection runs in a tracked thread, so :meth:`HttpServer.stop` can break open
connections (idle keep-alives, watches, followed logs) and join every thread it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakekube import errors
from tests.fakekube.api import Api, Request, Route, lookup, namespace_object, not_routable
from tests.fakekube.faults import Faults

log = logging.getLogger(__name__)
CORE = re.compile(
    r"^/api/(?P<version>v1)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?/?$"
)
GROUPED = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?/?$"
)
VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fakekube", "platform": "linux/amd64"}


class HttpServer(ThreadingHTTPServer):
    """Serves :class:`Api` over HTTP; knows every connection it has open."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, api: Api, faults: Faults, token: str, report: Callable[[str], None]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.api = api
        self.report = report
        self.faults = faults
        self.token = token
        self._connections: dict[threading.Thread, socket.socket] = {}
        self._connections_lock = threading.Lock()
        self._serving = threading.Thread(
            target=self.serve_forever, args=(0.05,), name="fakekube-apiserver", daemon=True
        )

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self.server_address[1])

    def start(self) -> None:
        """Serve requests in a background thread."""
        self._serving.start()

    def stop(self) -> None:
        """Stop accepting, break every open connection, join every thread."""
        self.shutdown()
        self._serving.join(timeout=10)
        with self._connections_lock:
            open_connections = list(self._connections.items())
        for _, connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread, _ in open_connections:
            thread.join(timeout=10)
        self.server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a tracked thread."""
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"fakekube-http-{client_address[1]}",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(threading.current_thread(), None)


class Handler(BaseHTTPRequestHandler):
    """One connection; implements the ``Responder`` protocol for :class:`Api`."""

    protocol_version = "HTTP/1.1"
    # A response goes out in several writes (status, headers, body); with Nagle's algorithm
    # each one after the first waits for the client's delayed ACK, about 40 ms a request,
    # which no real kube-apiserver adds.
    disable_nagle_algorithm = True
    server: HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            self.command, unquote(url.path), query, body, self.headers.get("Content-Type", "")
        )
        self._streaming = False
        try:
            self._authenticate(request.path)
            fault = self.server.faults.take()
            if fault is not None:
                raise fault
            self._route(request)
        except errors.ApiError as error:
            if self._streaming:
                raise
            self.send_json(error.code, error.status(), error.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:
            log.exception("fake apiserver: %s %s failed", self.command, self.path)
            self.server.report(f"{self.command} {self.path}: {type(error).__name__}: {error}")
            if not self._streaming:
                failure = errors.ApiError(
                    500, "InternalError", f"Internal error occurred: {type(error).__name__}"
                )
                self.send_json(500, failure.status())
            self.close_connection = True

    def _authenticate(self, path: str) -> None:
        if path in ("/healthz", "/readyz", "/livez", "/version"):
            return
        if self.headers.get("Authorization", "") != f"Bearer {self.server.token}":
            raise errors.ApiError(401, "Unauthorized", "Unauthorized")

    def _route(self, request: Request) -> None:
        path = request.path
        if path in ("/healthz", "/readyz", "/livez"):
            self.send_text(200, b"ok")
            return
        if path == "/version":
            self.send_json(200, VERSION)
            return
        match = CORE.match(path) or GROUPED.match(path)
        if match is None:
            raise not_routable()
        parts = match.groupdict()
        api_version = (
            f"{parts['group']}/{parts['version']}" if parts.get("group") else parts["version"]
        )
        if api_version == "v1" and parts["plural"] == "namespaces" and parts["ns"] is None:
            self._namespaces(request, parts["name"])
            return
        route = Route(
            lookup(api_version, parts["plural"]), parts["ns"], parts["name"], parts["sub"]
        )
        self.server.api.serve(request, route, self)

    def _namespaces(self, request: Request, name: str | None) -> None:
        if request.method == "GET" and name:
            self.send_json(200, namespace_object(name))
        elif request.method == "GET":
            items = [namespace_object(n) for n in ("default", "kube-system")]
            self.send_json(
                200, {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {}, "items": items}
            )
        elif request.method == "POST" and not name:
            body = json.loads(request.body or b"{}")
            self.send_json(201, namespace_object(body.get("metadata", {}).get("name", "")))
        else:
            raise not_routable()

    def send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """A whole JSON response."""
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, code: int, body: bytes) -> None:
        """A whole plain-text response."""
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def start_stream(self, content_type: str) -> None:
        """Start a chunked 200 response."""
        self._streaming = True
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        """Send one chunk of a streamed response."""
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self) -> None:
        """End a chunked response cleanly."""
        self.wfile.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Break the connection mid-stream, as a crashing server or a network drop would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
