"""The model server's HTTP layer: one ASGI (Starlette) app for the local endpoint, the container image and tests.

Routes (``<name>`` is the spec's name)::

    POST /v1/models/<name>:predict     {"instances": [{...}, ...]} or {"inputs": {field: [...]}}
    GET  /v1/models/<name>             request fields, what is served, the canary share, the limits
    PUT  /v1/models/<name>/deployment  {"stable": "3", "canary": "4", "canary_percent": 10}  (admin)
    GET  /healthz                      the process answers, and which home and registry it serves
    GET  /readyz                       the served versions can score (503 until then)
    GET  /metrics                      Prometheus text exposition
    GET  /ping, POST /invocations      the same, on the paths a SageMaker container must answer

What is served and how it changes is ``server.app.ModelServer``.

A replay's server (``ModelServer.replay``: started with ``MLOPS_REPLAY_CLOCK``, on loopback) has one
more admin route, ``POST /v1/models/<name>/flush``: it writes everything logged so far to the
prediction store before it answers, so the replay can tick the canary sensor at a simulated moment
knowing the store holds every request sent before it (the log otherwise writes once a second of
wall time, while a replay sends an hour of simulated traffic in a fraction of that). Production
servers do not have the route (404): their log is written by its own thread, and nothing a client
sends changes when.

Who may do what: the deployment route always needs ``Authorization: Bearer <admin token>``
(``environments.admin_token``: ``MLOPS_ADMIN_TOKEN`` or the home's generated token) - 401 without
one, 403 with a wrong one. Predictions need an API key (``X-API-Key`` or ``Authorization: Bearer``)
only when the spec sets ``deployment.api_keys`` (keys from ``MLOPS_API_KEYS``). Tokens and keys are
compared in constant time and never logged.

Bad input is answered 4xx, never 5xx: 400 (not JSON, or nested deeper than the decoder's 1024
levels), 401/403 (credentials), 404 (another model, an unknown path), 405 (method), 413 (a body over
``deployment.max_body_mb``, refused from its ``Content-Length`` or as soon as the bytes received
pass the limit, before the body is buffered; or too many rows) or 422 (a field is missing, unknown,
of the wrong type or out of range, one message per field). Every such answer is counted in
``/metrics`` (``mlops_requests{variant="none"}``) and written to the requests log (variant
``none``, version 0). A 500 means the server itself failed, and counts against the variant that
served the request in the canary check; a 503 ``prediction not logged`` means the prediction could
not be filed in the prediction log, so it was not given.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlops_assets.core.rollout import Deployment
from mlops_assets.server.app import DeploymentError, ModelServer, Pending
from mlops_assets.server.batching import BATCH_ROWS, Batcher

log = logging.getLogger("mlops_assets.serving")


def _plain(obj: Any) -> Any:
    """What orjson cannot write natively (non-contiguous arrays, numpy scalars) as plain Python."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


try:  # orjson is a dependency; the fallback keeps the app importable in a minimal environment
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=_plain).encode()

    _loads = json.loads


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(_dumps(obj), status_code=status, media_type="application/json")


def _bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent or another scheme)."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _matches(given: str | bytes | None, secrets_: Sequence[bytes]) -> bool:
    """``given`` equals one of ``secrets_``, compared in constant time against every one of them."""
    if given is None:
        return False
    raw = given.encode() if isinstance(given, str) else given
    found = False
    for secret in secrets_:
        found |= hmac.compare_digest(raw, secret)
    return found


def create_app(
    server: ModelServer,
    *,
    admin_token: str,
    api_keys: Sequence[str] | None = None,
    max_body_bytes: int | None = None,
    on_shutdown: Sequence[Callable[[], None]] = (),
) -> PredictFastPath:
    """The ASGI app around a ``ModelServer``.

    ``admin_token`` is required: changing the deployment always needs ``Authorization: Bearer
    <admin_token>`` (there is no loopback exception: any local process could otherwise swap the
    model). ``api_keys``: when given (non-empty), predictions need one of them as ``X-API-Key`` or
    ``Authorization: Bearer``. ``max_body_bytes``: the largest request body (default: the spec's
    ``deployment.max_body_mb``). ``on_shutdown``: run after the prediction log is closed, when the
    server shuts down gracefully (also on SIGTERM)."""
    if not admin_token:
        raise ValueError("create_app needs an admin_token: the deployment route is never open (environments.admin_token)")
    if api_keys is not None and not [k for k in api_keys if k]:
        raise ValueError("API keys are required but none is configured (MLOPS_API_KEYS, comma-separated)")
    name = server.spec.name
    batcher = Batcher(server, max_rows=BATCH_ROWS)
    admin = [admin_token.encode()]
    keys = [k.encode() for k in api_keys if k] if api_keys else []
    limit = max_body_bytes or server.max_body_bytes

    def refused(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> Response:
        status, body = server.refuse(status, {"error": error, "detail": detail})
        return Response(_dumps(body), status_code=status, media_type="application/json", headers=headers)

    def _wrong_model(requested: str) -> Response | None:
        if requested != name:
            return refused(404, "unknown model", f"this server serves {name!r}, not {requested!r}")
        return None

    async def answer(body: bytes) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        try:
            payload = _loads(body)
        except (ValueError, RecursionError) as exc:  # orjson: not JSON, or nested deeper than 1024
            return server.refuse(400, {"error": "invalid JSON", "detail": str(exc)[:300]}, started)
        admitted = server.admit(payload)
        if not isinstance(admitted, Pending):  # answered without a prediction (bad input, not ready)
            return admitted
        return await batcher.submit(admitted)

    async def predict(request: Request) -> Response:  # this model's name takes the fast path: another one
        if (resp := _wrong_model(request.path_params["name"])) is not None:
            return resp
        status, out = await answer(await request.body())
        return json_response(out, status)

    async def describe(request: Request) -> Response:
        if request.path_params["name"].endswith(":predict"):  # GET on the predict route
            return refused(405, "method not allowed", "predict takes POST")
        if (resp := _wrong_model(request.path_params["name"])) is not None:
            return resp
        return json_response({**server.describe(), "max_body_bytes": limit, "api_key_required": bool(keys)})

    async def set_deployment(request: Request) -> Response:
        if (resp := _wrong_model(request.path_params["name"])) is not None:
            return resp
        token = _bearer(request.headers.get("authorization"))
        if token is None:
            return refused(
                401,
                "unauthorized",
                "changing the deployment needs 'Authorization: Bearer <admin token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not _matches(token, admin):
            return refused(403, "forbidden", "the bearer token is not this server's admin token")
        try:
            deployment = Deployment.from_json(_loads(await request.body()))
            if deployment.stable is None:
                raise ValueError("'stable' is required")
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            return refused(422, "invalid deployment", str(exc)[:500])
        client = f"{request.client.host}:{request.client.port}" if request.client else None
        try:
            serving = await asyncio.to_thread(server.deploy, deployment, source="admin route", client=client)
        except DeploymentError as exc:  # a version that cannot load or score leaves the old one serving
            return refused(409, "deployment failed", str(exc)[:500])
        return json_response({"deployment": serving.deployment.to_json(), "loaded": sorted(serving.models)})

    async def flush(request: Request) -> Response:  # a replay's server only (see the module docstring)
        if (resp := _wrong_model(request.path_params["name"])) is not None:
            return resp
        token = _bearer(request.headers.get("authorization"))
        if not _matches(token, admin):
            return refused(401 if token is None else 403, "unauthorized", "flushing the log needs the admin token")
        written = await asyncio.to_thread(server.log.flush) if server.log is not None else []
        return json_response({"written": len(written)})

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok", "model": name, "identity": server.identity, "pid": os.getpid()})

    async def readyz(request: Request) -> Response:
        ready, why = server.readiness()
        if not ready:
            return json_response({"ready": False, "detail": why}, 503)
        return json_response({"ready": True, "model": name, **server.serving.deployment.to_json()})

    async def metrics(request: Request) -> Response:
        return Response(server.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def http_error(request: Request, exc: Exception) -> Response:  # unknown paths (404), methods (405)
        from starlette.exceptions import HTTPException

        status = exc.status_code if isinstance(exc, HTTPException) else 400
        return refused(status, "not found" if status == 404 else "bad request", getattr(exc, "detail", str(exc)))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(server.load_initial)
        server.warm_up_lookup()  # on the event loop's thread, where requests look entities up
        # Everything loaded so far (libraries, the model) lives as long as the process: moving it out
        # of the collector's reach keeps full collections from walking it during requests, where
        # they were the slowest answers' extra tens of milliseconds.
        gc.collect()
        gc.freeze()
        yield
        if server.log is not None:
            server.log.close()
        for step in on_shutdown:  # what the process owns outside the stores (serve(): its metrics folder)
            step()

    from starlette.exceptions import HTTPException

    app = Starlette(
        routes=[
            Route("/v1/models/{name}:predict", predict, methods=["POST"]),
            Route("/v1/models/{name}/deployment", set_deployment, methods=["PUT"]),
            Route("/v1/models/{name}", describe, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/ping", readyz, methods=["GET"]),  # the SageMaker container contract
            *([Route("/v1/models/{name}/flush", flush, methods=["POST"])] if server.replay else []),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    return PredictFastPath(app, {f"/v1/models/{name}:predict", "/invocations"}, answer, server, limit, keys)


_CONTENT_LENGTH, _API_KEY, _AUTHORIZATION = b"content-length", b"x-api-key", b"authorization"


class PredictFastPath:
    """The outermost ASGI layer: predictions straight from the ASGI server, every other route
    through Starlette, and the body-size limit for every request.

    A single-row prediction costs the server a quarter of a millisecond in all, and Starlette's
    request, router and middleware objects are a visible part of it: without them the benchmark
    served ~10 % more single-row requests at 8 connections, with the p99 at 4.3-4.8 ms instead of
    6.0-7.5 ms (bench/serving.py, two rounds each). This path checks the API key (when keys are
    configured), reads the body, answers with the same ``answer`` function, and writes the JSON.

    The body limit is enforced here, for every route, before a body is buffered: a ``Content-Length``
    over the limit is answered 413 without reading a byte, and a body without one (chunked) is
    answered 413 as soon as the bytes received pass the limit (the ASGI server discards the rest).
    A 300 MB body once cost the server 1.4 GB of memory before it was refused."""

    def __init__(
        self,
        app: Starlette,
        paths: set[str],
        answer: Callable[[bytes], Any],
        server: ModelServer,
        max_body_bytes: int,
        api_keys: Sequence[bytes] = (),
    ):
        self.app, self.paths, self.answer = app, paths, answer
        self.server, self.limit, self.keys = server, max_body_bytes, list(api_keys)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        predict = scope["method"] == "POST" and scope["path"] in self.paths
        declared = None
        key = bearer = None
        for name, value in scope["headers"]:
            if name == _CONTENT_LENGTH:
                declared = value
            elif name == _API_KEY:
                key = value
            elif name == _AUTHORIZATION:
                bearer = value
        if predict and self.keys:
            given = key if key is not None else _bearer(bearer.decode("latin-1")) if bearer else None
            if not _matches(given, self.keys):
                detail = "predictions need an API key: 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
                return await self._send(send, *self.server.refuse(401, {"error": "unauthorized", "detail": detail}))
        if declared is not None:
            if not declared.isdigit():
                detail = "Content-Length is not a number of bytes"
                return await self._send(send, *self.server.refuse(400, {"error": "bad request", "detail": detail}))
            if int(declared) > self.limit:
                return await self._too_large(send, int(declared))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._too_large(send, size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not predict:  # another route (the deployment): Starlette, with the body already read
            return await self.app(scope, _replay(body), send)
        try:
            status, out = await self.answer(body)
            content = _dumps(out)
        except Exception:  # a server bug: answered like Starlette's error middleware would
            log.exception("prediction request failed")
            status, content = 500, _dumps({"error": "internal server error"})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})
        return None

    async def _too_large(self, send, size: int) -> None:
        what = f"{size} bytes declared" if size else "the body"
        detail = f"request body over the limit of {self.limit} bytes (deployment.max_body_mb): {what}"
        status, body = self.server.refuse(413, {"error": "request body too large", "detail": detail})
        await self._send(send, status, body, close=True)

    @staticmethod
    async def _send(send, status: int, body: dict[str, Any], close: bool = False) -> None:
        content = _dumps(body)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def _replay(body: bytes):
    """An ASGI ``receive`` that hands over a body already read, then reports the client gone."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # like a client that stays connected until the answer
        return {"type": "http.disconnect"}

    return receive
