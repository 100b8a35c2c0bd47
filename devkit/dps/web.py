"""Minimal HTTP(S) plumbing on the standard library: request/response objects and a threading
server that does the TLS handshake in the connection's own thread.

Responses always carry Content-Length, so HTTP/1.1 keep-alive works with ``requests`` and
``http.client`` clients. Request headers (Authorization above all) are never logged.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional

log = logging.getLogger("devkit.dps")

MAX_BODY = 4 * 1024 * 1024


@dataclass
class Request:
    """One HTTP request, path already split into decoded segments."""

    method: str
    path: str
    segments: List[str]
    query: Dict[str, str]
    headers: Dict[str, str]  # lower-case names
    body: bytes
    client: str
    tls: bool

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON (``None`` when empty); raises ValueError when malformed."""
        if not self.body.strip():
            return None
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> Dict[str, str]:
        pairs = urllib.parse.parse_qsl(self.body.decode("utf-8"), keep_blank_values=True)
        return dict(pairs)

    @property
    def host(self) -> str:
        return self.headers.get("host", "")


@dataclass
class Response:
    """A response; a dict/list body is sent as JSON."""

    status: int
    body: Any = None
    headers: Dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, (bytes, bytearray)):
            return bytes(self.body)
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        self.headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return json.dumps(self.body).encode("utf-8")


def split_path(raw_path: str) -> (str, List[str], Dict[str, str]):
    """Split ``/a//b/c?x=1`` into ('/a/b/c', ['a','b','c'], {'x': '1'}); segments are decoded."""
    parsed = urllib.parse.urlsplit(raw_path)
    segments = [urllib.parse.unquote(s) for s in parsed.path.split("/") if s]
    query = {k.lower(): v for k, v in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)}
    return "/" + "/".join(segments), segments, query


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "devkit-dps-emulator"
    sys_version = ""
    # buffer the response (flushed once per request by BaseHTTPRequestHandler) and disable
    # Nagle: headers and body then leave in one segment, without a delayed-ACK stall
    wbufsize = -1

    def setup(self) -> None:
        self.request.settimeout(self.server.idle_timeout)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def handle(self) -> None:
        sock = self.request
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake with %s failed: %s", self.client_address[0], exc)
                self.server.on_tls_failure()
                self.close_connection = True
                return
        try:
            super().handle()
        except (ConnectionError, socket.timeout, ssl.SSLError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s %s", self.client_address[0], format % args)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(Response(413, {"message": "request body too large or malformed"}))
            return
        path, segments, query = split_path(self.path)
        req = Request(
            method=self.command,
            path=path,
            segments=segments,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            client=self.client_address[0],
            tls=isinstance(self.request, ssl.SSLSocket),
        )
        resp = self.server.app(req)
        log.info("%s %s %s -> %d", req.client, req.method, req.path, resp.status)
        self._send(resp, head=self.command == "HEAD")

    def _send(self, resp: Response, head: bool = False) -> None:
        data = resp.encode()
        self.send_response(resp.status)
        resp.headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and not head:
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _serve


class Server(ThreadingHTTPServer):
    """Threading HTTP server; with ``ssl_context`` the handshake runs per connection thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, app: Callable[[Request], Response], ssl_context: Optional[ssl.SSLContext] = None,
                 idle_timeout: float = 60.0, on_tls_failure: Callable[[], None] = lambda: None):
        self.app = app
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self.on_tls_failure = on_tls_failure
        self._open: set = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self):
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._open_lock:
            self._open.add(sock)
        return sock, addr

    def shutdown_request(self, request) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut every open (keep-alive) connection: a stopped server must not go on answering
        clients that connected before (their handler threads would otherwise serve them)."""
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        log.exception("unhandled error serving %s", client_address[0])


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the given PEM files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
