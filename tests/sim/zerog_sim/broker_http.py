"""HTTP side of the stand-in fine-tuning broker: gin's router behaviour and v0.2.2 handlers.

Routes are the ones ``internal/handler/handler.go`` registers under ``/v1`` (there is no
``/health``).  Behaviour copied from gin v1.10 ``gin.New()``: no access log, 404 with the
body ``404 page not found`` for any unknown path *or* method (``HandleMethodNotAllowed``
is off, so ``HEAD`` is a 404 too), trailing-slash redirects (301 for GET, 307 otherwise),
static path segments winning over ``:param`` ones.  Bodies are what the handlers write:
``ctx.String`` (``text/plain; charset=utf-8``), ``ctx.JSON`` (Go ``encoding/json`` with
HTML escaping, ``application/json; charset=utf-8``), errors as ``{"error": "..."}`` with
400.  Task routes need the database and the chain and answer 501 (not simulated).
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from zerog_sim import broker_config as bc

HANDLER_PREFIX = "github.com/0glabs/0g-serving-broker/fine-tuning/internal/handler.(*Handler)."

#: (method, path, handler name) in registration order (``Handler.Register``).
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("POST", "/v1/user/:userAddress/task", "CreateTask"),
    ("POST", "/v1/user/:userAddress/task/:taskID/cancel", "CancelTask"),
    ("GET", "/v1/user/:userAddress/task", "ListTask"),
    ("GET", "/v1/user/:userAddress/task/:taskID", "GetTask"),
    ("GET", "/v1/user/:userAddress/task/:taskID/log", "GetTaskProgress"),
    ("GET", "/v1/task/pending", "GetPendingTrainingTaskCount"),
    ("GET", "/v1/quote", "GetQuote"),
    ("GET", "/v1/model", "ListModel"),
    ("GET", "/v1/model/:name", "GetModel"),
    ("GET", "/v1/model/desc/:name", "GetModelDesc"),
)

MODEL_JSON_FIELDS = ("name", "hash", "image", "dataType", "trainingScript", "description", "tokenizer")

_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def go_json(value: Any) -> str:
    """Go 1.22 ``json.Marshal`` of strings, ints, bools, lists and (ordered) dicts."""
    if isinstance(value, str):
        return _go_json_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    return "{" + ",".join(_go_json_string(k) + ":" + go_json(v) for k, v in value.items()) + "}"


def _go_json_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif code < 0x20 or ch in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")  # invalid UTF-8 is replaced by U+FFFD
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


@dataclass
class BrokerState:
    """What the running broker serves."""

    models: list[dict[str, str]]
    quote: str
    pending_tasks: int = 0
    hash_index: dict[bytes, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Ctrl.customizedModels: map[common.Hash]CustomizedModel keyed by HexToHash(hash).
        self.hash_index = {bc.hex_to_hash(m["hash"]): m for m in self.models}

    def lookup(self, name_or_hash: str) -> dict[str, str] | None:
        """``Ctrl.getModel``: a name whose leading characters decode as hex is a hash."""
        digest = bc.hex_to_hash(name_or_hash)
        if digest == bytes(32):
            for model in self.hash_index.values():
                if model["name"] == name_or_hash:
                    return model
            return None
        return self.hash_index.get(digest)


def model_json(model: dict[str, str]) -> dict[str, str]:
    """``ctrl.Model`` (v0.2.2): the customized model without ``usageFile``."""
    return {k: model[k] for k in MODEL_JSON_FIELDS}


def match_route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """Find the handler for ``method path`` with gin's precedence (static before param)."""
    segments = path.split("/")
    best: tuple[tuple[int, ...], str, dict[str, str]] | None = None
    for route_method, pattern, handler in ROUTES:
        if route_method != method:
            continue
        parts = pattern.split("/")
        if len(parts) != len(segments):
            continue
        params: dict[str, str] = {}
        rank = []
        for part, seg in zip(parts, segments, strict=True):
            if part.startswith(":"):
                if not seg:
                    break
                params[part[1:]] = seg
                rank.append(1)
            elif part != seg:
                break
            else:
                rank.append(0)
        else:
            if best is None or tuple(rank) < best[0]:
                best = (tuple(rank), handler, params)
    return None if best is None else (best[1], best[2])


@dataclass
class Response:
    """An HTTP response as the Go handler would write it."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _text(status: int, text: str) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


def _json(status: int, value: Any) -> Response:
    return Response(status, go_json(value).encode(), "application/json; charset=utf-8")


def _broker_error(context: str, err: str) -> Response:
    # handleBrokerError -> errors.Response: 400 {"error": "Provider: <context>: <err>"}
    return _json(400, {"error": f"Provider: {context}: {err}"})


def _content_disposition(filename: str) -> str:
    if filename.isascii():
        return 'attachment; filename="' + filename.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "attachment; filename*=UTF-8''" + urllib.parse.quote_plus(filename)


class Handlers:
    """The v0.2.2 handler functions, keyed by gin handler name."""

    def __init__(self, state: BrokerState) -> None:
        self.state = state

    def dispatch(self, handler: str, params: dict[str, str]) -> Response:
        """Call the handler ``handler`` with path parameters ``params``."""
        func: Callable[[dict[str, str]], Response] | None = getattr(self, "h_" + handler, None)
        if func is None:
            return _json(501, {"error": f"zerog-sim: {handler} needs the database and chain; not simulated"})
        return func(params)

    def h_GetPendingTrainingTaskCount(self, _params: dict[str, str]) -> Response:
        """``ctx.String(200, strconv.Itoa(count))``."""
        return _text(200, str(self.state.pending_tasks))

    def h_GetQuote(self, _params: dict[str, str]) -> Response:
        """``ctx.String(200, quote)``."""
        return _text(200, self.state.quote)

    def h_ListModel(self, _params: dict[str, str]) -> Response:
        """``ctx.JSON(200, models)``: customized models only; ``[]`` when none."""
        return _json(200, [model_json(m) for m in self.state.models])

    def h_GetModel(self, params: dict[str, str]) -> Response:
        """``GET /v1/model/:name``."""
        model = self.state.lookup(params["name"])
        if model is None:
            return _broker_error("get customized model", f"Model {params['name']} not found")
        return _json(200, model_json(model))

    def h_GetModelDesc(self, params: dict[str, str]) -> Response:
        """``ctx.FileAttachment(usageFile, "<name>.zip")``."""
        name = params["name"]
        model = self.state.lookup(name)
        if model is None:
            return _broker_error("get model description file", f"Model {name} not found")
        path = model["usageFile"]
        if not os.path.exists(path) or os.path.isdir(path):
            return _broker_error("get model description file", f"Model {name} detail usage file not found")
        with open(path, "rb") as handle:
            body = handle.read()
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if ctype.startswith("text/"):
            ctype += "; charset=utf-8"
        headers = {
            "Content-Disposition": _content_disposition(f"{name}.zip"),
            "Accept-Ranges": "bytes",
            "Last-Modified": email.utils.formatdate(os.path.getmtime(path), usegmt=True),
        }
        return Response(200, body, ctype, headers)


def route(handlers: Handlers, method: str, raw_path: str, debug: Callable[[str], None]) -> Response:
    """gin's ``handleHTTPRequest`` for one request."""
    path, _sep, query = raw_path.partition("?")
    path = urllib.parse.unquote(path)
    found = match_route(method, path)
    if found is not None:
        return handlers.dispatch(*found)
    if len(path) > 1 and path.endswith("/") and match_route(method, path[:-1]) is not None:
        code = 301 if method == "GET" else 307
        target = path[:-1] + ("?" + query if query else "")
        debug(f"redirecting request {code}: {path} --> {target}")
        resp = Response(code, headers={"Location": target})
        if method in ("GET", "HEAD"):
            resp.content_type = "text/html; charset=utf-8"
        if method == "GET":
            text = "Moved Permanently" if code == 301 else "Temporary Redirect"
            resp.body = f'<a href="{target}">{text}</a>.\n\n'.encode()
        return resp
    return Response(404, b"404 page not found", "text/plain")


def make_request_handler(handlers: Handlers, debug: Callable[[str], None]) -> type[BaseHTTPRequestHandler]:
    """A ``BaseHTTPRequestHandler`` class answering like Go's ``net/http`` + gin."""

    class GinLikeHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """gin.New() has no logger middleware: stay silent."""

        def send_response(self, code: int, message: str | None = None) -> None:
            """Like Go: status line and ``Date``; no ``Server`` header."""
            self.send_response_only(code, message)
            self.send_header("Date", self.date_time_string())

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            resp = route(handlers, self.command, self.path, debug)
            self.send_response(resp.status)
            if resp.content_type:
                self.send_header("Content-Type", resp.content_type)
            for key, value in resp.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(resp.body)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve

    return GinLikeHandler


class BrokerHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server whose handler threads never block exit."""

    daemon_threads = True


def start_server(bind: str, port: int, handlers: Handlers, debug: Callable[[str], None]) -> BrokerHTTPServer:
    """Bind and start serving in a background thread (raises ``OSError`` if bind fails)."""
    server = BrokerHTTPServer((bind, port), make_request_handler(handlers, debug))
    threading.Thread(target=server.serve_forever, name="broker-http", daemon=True).start()
    return server


__all__ = ["ROUTES", "BrokerState", "Handlers", "go_json", "match_route", "route", "start_server"]
