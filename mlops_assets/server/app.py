"""The model server: one ASGI (Starlette) app for the local endpoint, the container image and tests.

Routes (``<name>`` is the spec's name)::

    POST /v1/models/<name>:predict     {"instances": [{...}, ...]} or {"inputs": {field: [...]}}
    GET  /v1/models/<name>             request fields, what is served, the canary share
    PUT  /v1/models/<name>/deployment  {"stable": "3", "canary": "4", "canary_percent": 10}
    GET  /healthz                      the process answers
    GET  /readyz                       a model is loaded (503 until then)
    GET  /metrics                      Prometheus text exposition
    GET  /ping, POST /invocations      the same, on the paths a SageMaker container must answer

The served versions live in one immutable ``Serving`` object. A deployment loads the new versions
off the event loop, then replaces that object in one assignment: a request in flight keeps the
object it started with, so a version swap neither pauses nor fails a request.

Bad input is answered 400 (not JSON), 404 (another model), 413 (too many rows) or 422 (a field is
missing, unknown or of the wrong type, with one message per field); never 500. A 500 means the
server itself failed, and counts against the variant that served the request in the canary check.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlops_assets.core.requests import ParsedRequest, RequestError, merge_requests, parse_request, request_schema
from mlops_assets.core.rollout import Deployment
from mlops_assets.core.serving import OnlineLookup, Predictor, build_features
from mlops_assets.prediction_store import FEATURE_PREFIX, REQUESTS, SERVED, PredictionLog
from mlops_assets.specs import ModelSpec


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

log = logging.getLogger("mlops_assets.serving")

STABLE, CANARY = "stable", "canary"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_ROWS = 1024  # requests queued together are scored together up to this many rows (a bigger one alone)
VALUE_BUCKETS = tuple(s * m for m in (1, 10, 100, 1000, 10000) for s in (1, 2, 5))


def _ns(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000) * 1000


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(_dumps(obj), status_code=status, media_type="application/json")


@dataclass(frozen=True)
class Serving:
    """The versions being served, loaded; replaced as a whole, never mutated."""

    deployment: Deployment
    models: dict[str, Predictor] = field(default_factory=dict)  # version -> loaded model

    def pick(self) -> tuple[str, str]:
        """(variant, version) for one request: the canary takes its share of requests at random."""
        d = self.deployment
        if d.canary is not None and d.canary_percent > 0 and random.random() * 100 < d.canary_percent:
            return CANARY, d.canary
        return STABLE, d.stable  # type: ignore[return-value]


@dataclass
class Pending:
    """An admitted request waiting for its prediction."""

    request_id: str
    received: datetime
    started: float  # time.perf_counter() when it was admitted
    parsed: ParsedRequest
    variant: str
    version: str
    model: Predictor


class Batcher:
    """Coalesces concurrent requests into one model call (adaptive batching).

    A 100-tree gradient boosting model costs ~0.8 ms whether it scores 1 row or 50, so answering
    eight single-row clients one after the other cost eight calls and made the last one wait for all
    of them. Requests admitted while a batch is being scored queue up and form the next batch, up to
    ``max_rows`` rows: an idle server answers a request at once; a busy one spends one ``predict`` on
    everything that arrived meanwhile.

    Scoring runs on the event loop itself, not on a worker thread: the model's Python loop over trees
    takes the GIL back after each tree, and against a busy event loop that hand-over made a 1 ms batch
    take 2 ms (bench/serving.py: 1,800 vs 4,000 single-row requests/s at 8 connections)."""

    def __init__(self, server: ModelServer, max_rows: int):
        self.server = server
        self.max_rows = max_rows
        self._queue: list[tuple[Pending, asyncio.Future]] = []
        self._draining = False

    async def submit(self, pending: Pending) -> tuple[int, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((pending, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Pending, asyncio.Future]]:
        rows, n = 0, 0
        for pending, _ in self._queue:
            if n and rows + pending.parsed.rows > self.max_rows:
                break
            rows, n = rows + pending.parsed.rows, n + 1
        batch, self._queue = self._queue[:n], self._queue[n:]
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                # Two loop turns: bodies the server has already read reach ``submit`` (a new request
                # is read in one turn and admitted in the next) and join this batch.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                batch = self._take()
                try:
                    answers = self.server.predict_batch([p for p, _ in batch])
                except Exception as exc:  # predict_batch answers failures itself; this is a bug, not bad input
                    log.exception("batch of %d requests failed", len(batch))
                    answers = [(500, {"error": "prediction failed", "detail": str(exc)[:300]})] * len(batch)
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():  # the client may have gone away
                        future.set_result(answer)
        finally:
            self._draining = False


class Metrics:
    """Prometheus metrics of one server (its own registry, so several apps in a process do not clash)."""

    def __init__(self, spec: ModelSpec):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.model = spec.name
        self.classification = spec.target.task == "classification"
        self.requests = Counter(
            "mlops_requests",
            "Prediction requests by variant, served version and HTTP status.",
            ["model", "variant", "version", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlops_request_latency_seconds",
            "Time to answer a prediction request (parse, features, predict).",
            ["model", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        if self.classification:
            self.predictions = Counter(
                "mlops_predictions",
                "Predictions by served version and predicted class.",
                ["model", "version", "predicted_class"],
                registry=self.registry,
            )
        else:
            self.values = Histogram(
                "mlops_prediction_value",
                "Predicted values (buckets of the value).",
                ["model", "version"],
                buckets=VALUE_BUCKETS,
                registry=self.registry,
            )
        self.batch = Histogram(
            "mlops_batch_requests",
            "Requests answered by one model call: concurrent requests are scored together.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.served_version = Gauge(
            "mlops_served_model_version",
            "Model version served by each variant (absent when none).",
            ["model", "variant"],
            registry=self.registry,
        )
        self.canary_percent = Gauge(
            "mlops_canary_traffic_percent", "Share of requests sent to the canary.", ["model"], registry=self.registry
        )
        self.unknown = Counter(
            "mlops_unknown_entities",
            "Rows whose entity the online store did not know (answered with defaults).",
            ["model", "entity"],
            registry=self.registry,
        )

    def served(self, d: Deployment) -> None:
        for variant, version in ((STABLE, d.stable), (CANARY, d.canary)):
            if version is None:
                try:
                    self.served_version.remove(self.model, variant)
                except KeyError:
                    pass
            else:
                self.served_version.labels(self.model, variant).set(float(version))
        self.canary_percent.labels(self.model).set(d.canary_percent)

    def observe(self, variant: str, version: str, code: int, seconds: float | None, outputs: np.ndarray | None) -> None:
        self.requests.labels(self.model, variant, version, str(code)).inc()
        if seconds is not None:
            self.latency.labels(self.model, variant).observe(seconds)
        if outputs is None:
            return
        if self.classification:
            positives = int(outputs.sum())
            if positives:
                self.predictions.labels(self.model, version, "1").inc(positives)
            if len(outputs) - positives:
                self.predictions.labels(self.model, version, "0").inc(len(outputs) - positives)
        else:
            hist = self.values.labels(self.model, version)
            for v in outputs:
                hist.observe(float(v))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class ModelServer:
    """The state behind the routes: the spec, how to load versions, what is served, and the logs."""

    def __init__(
        self,
        spec: ModelSpec,
        load_version: Callable[[str], Any],
        *,
        online_lookup: OnlineLookup | None = None,
        prediction_log: PredictionLog | None = None,
        initial: Deployment | Callable[[], Deployment | None] | None = None,
    ):
        self.spec = spec
        self.schema = request_schema(spec)
        self.load_version = load_version
        self.lookup = online_lookup
        self.log = prediction_log
        self.metrics = Metrics(spec)
        self.serving: Serving | None = None
        self.initial = initial
        self.load_error: str | None = None
        self._deploy_lock = threading.Lock()
        self.classification = spec.target.task == "classification"

    # --- deployments -------------------------------------------------------------------------

    def deploy(self, deployment: Deployment) -> Serving:
        """Load the deployment's versions (reusing those already in memory), then swap them in."""
        if deployment.stable is None:
            raise ValueError("a deployment needs a stable version")
        with self._deploy_lock:
            current = self.serving.models if self.serving else {}
            models = {v: current[v] if v in current else Predictor(self.load_version(v), self.spec) for v in deployment.versions}
            self.serving = Serving(deployment, models)  # the one assignment that switches traffic
            self.metrics.served(deployment)
            self.load_error = None
        log.info(
            "serving %s: stable v%s, canary %s at %s%%",
            self.spec.name,
            deployment.stable,
            deployment.canary,
            deployment.canary_percent,
        )
        return self.serving

    def load_initial(self) -> None:
        initial = self.initial() if callable(self.initial) else self.initial
        if initial is None:
            self.load_error = "no deployment yet: the model has no champion version"
            return
        try:
            self.deploy(initial)
        except Exception as exc:  # the server stays up and says why it is not ready
            self.load_error = f"cannot load {initial}: {exc}"
            log.exception("initial deployment failed")

    # --- predictions -------------------------------------------------------------------------

    def admit(self, payload: Any) -> Pending | tuple[int, dict[str, Any]]:
        """Validate a decoded body and route it to a version: a ``Pending`` prediction, or the answer
        (status, body) when there is nothing to predict (not ready, bad input)."""
        started = time.perf_counter()
        received = datetime.now(UTC)
        request_id = os.urandom(16).hex()  # as unique as a uuid4, a third of its cost
        serving = self.serving  # the request keeps this object, whatever is deployed meanwhile
        if serving is None:
            return 503, {"error": "not ready", "detail": self.load_error or "loading"}
        try:
            parsed = parse_request(payload, self.schema, self.spec, now=received)
        except RequestError as exc:
            self.metrics.observe("none", "none", exc.status, None, None)
            return exc.status, {"error": "invalid request", "detail": exc.errors, "request_id": request_id}
        variant, version = serving.pick()
        return Pending(request_id, received, started, parsed, variant, version, serving.models[version])

    def predict(self, payload: Any) -> tuple[int, dict[str, Any]]:
        """Answer one decoded request body: (HTTP status, response body)."""
        admitted = self.admit(payload)
        return self.predict_batch([admitted])[0] if isinstance(admitted, Pending) else admitted

    def predict_batch(self, batch: Sequence[Pending]) -> list[tuple[int, dict[str, Any]]]:
        """Answer admitted requests, those of one loaded version together: one feature lookup and one
        model call for all their rows. If that fails, each request is retried alone, so a request the
        model cannot score fails by itself and not the requests that happened to arrive with it."""
        answers: list[tuple[int, dict[str, Any]] | None] = [None] * len(batch)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, p in enumerate(batch):  # requests with and without event times are merged apart
            groups.setdefault((id(p.model), p.parsed.timestamps is None), []).append(i)
        for members in groups.values():
            pending = [batch[i] for i in members]
            try:
                results = self._score(pending)
            except Exception:  # noqa: BLE001 - a server failure, answered 500 per request below
                if len(pending) == 1:
                    results = [self._failed(pending[0])]
                else:
                    results = [self._score_alone(p) for p in pending]
            for i, result in zip(members, results, strict=True):
                answers[i] = result
        return answers  # type: ignore[return-value]

    def _score_alone(self, p: Pending) -> tuple[int, dict[str, Any]]:
        try:
            return self._score([p])[0]
        except Exception:  # noqa: BLE001 - logged and answered 500 by _failed
            return self._failed(p)

    def _failed(self, p: Pending) -> tuple[int, dict[str, Any]]:
        log.exception("prediction failed (request %s, v%s)", p.request_id, p.version)
        seconds = time.perf_counter() - p.started
        self.metrics.observe(p.variant, p.version, 500, seconds, None)
        self._log_request(p.request_id, p.received, p.variant, p.version, 500, p.parsed.rows, seconds)
        return 500, {"error": "prediction failed", "request_id": p.request_id, "model_version": p.version}

    def _score(self, pending: Sequence[Pending]) -> list[tuple[int, dict[str, Any]]]:
        merged = merge_requests([p.parsed for p in pending])
        features = build_features(merged, self.spec, self.lookup)
        scores = np.ascontiguousarray(pending[0].model.scores(features.columns), dtype="float64")
        if len(scores) != merged.rows:
            raise RuntimeError(f"the model returned {len(scores)} scores for {merged.rows} rows")
        outputs = (scores >= 0.5).astype("int8") if self.classification else scores
        self.metrics.batch.labels(self.spec.name).observe(len(pending))
        unknown = features.unknown_per_row()
        if unknown is not None:
            for entity, mask in features.unknown.items():
                if count := int(mask.sum()):
                    self.metrics.unknown.labels(self.spec.name, entity).inc(count)
        results, bounds = [], np.cumsum([0] + [p.parsed.rows for p in pending])
        for p, lo, hi in zip(pending, bounds[:-1], bounds[1:], strict=True):
            seconds = time.perf_counter() - p.started
            body: dict[str, Any] = {
                "model": self.spec.name,
                "model_version": p.version,
                "variant": p.variant,
                "request_id": p.request_id,
                "predictions": outputs[lo:hi],
            }
            if self.classification:
                body["scores"] = scores[lo:hi]
            if unknown is not None:
                body["unknown_entities"] = unknown[lo:hi]
            self.metrics.observe(p.variant, p.version, 200, seconds, outputs[lo:hi])
            self._log_request(p.request_id, p.received, p.variant, p.version, 200, p.parsed.rows, seconds)
            results.append((200, body))
        if self.log is not None:
            rows = [p.parsed.rows for p in pending]
            n = merged.rows
            received_ns = np.repeat([_ns(p.received) for p in pending], rows)
            served = {
                "request_id": [p.request_id for p in pending for _ in range(p.parsed.rows)],
                "received_at_ns": received_ns,
                "event_id": merged.event_ids if merged.event_ids is not None else [None] * n,
                "event_timestamp_ns": merged.timestamps.as_unit("ns").asi8 if merged.timestamps is not None else received_ns,
                "model_version": np.full(n, int(pending[0].version), dtype="int64"),
                "variant": [p.variant for p in pending for _ in range(p.parsed.rows)],
                "score": scores,
                **{f"{FEATURE_PREFIX}{c}": v for c, v in features.columns.items()},
                "unknown_entities": [",".join(u) for u in unknown] if unknown else [""] * n,
            }
            if self.classification:
                served["prediction"] = outputs
            self.log.append(SERVED, served)
        return results

    def _log_request(self, request_id, received, variant, version, status, rows, seconds) -> None:
        if self.log is not None:
            self.log.append(
                REQUESTS,
                {
                    "request_id": [request_id],
                    "received_at_ns": [_ns(received)],
                    "variant": [variant],
                    "model_version": [int(version)],
                    "status": [status],
                    "rows": [rows],
                    "latency_ms": [seconds * 1000],
                },
            )

    def describe(self) -> dict[str, Any]:
        d = self.serving.deployment.to_json() if self.serving else None
        return {"model": self.spec.name, "task": self.spec.target.task, "request": self.schema.describe(), "deployment": d}


def create_app(server: ModelServer, *, admin_token: str | None = None) -> PredictFastPath:
    """The ASGI app around a ``ModelServer``. ``admin_token``: required (``Authorization: Bearer``)
    to change the deployment; without one only loopback clients may."""
    name = server.spec.name
    batcher = Batcher(server, max_rows=BATCH_ROWS)

    def _wrong_model(requested: str) -> Response | None:
        if requested != name:
            return json_response({"error": "unknown model", "detail": f"this server serves {name!r}, not {requested!r}"}, 404)
        return None

    async def answer(body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            payload = _loads(body)
        except ValueError as exc:
            server.metrics.observe("none", "none", 400, None, None)
            return 400, {"error": "invalid JSON", "detail": str(exc)[:300]}
        admitted = server.admit(payload)
        if not isinstance(admitted, Pending):  # answered without a prediction (bad input, not ready)
            return admitted
        return await batcher.submit(admitted)

    async def predict(request: Request) -> Response:
        if (resp := _wrong_model(request.path_params["name"])) is not None:
            return resp
        status, out = await answer(await request.body())
        return json_response(out, status)

    async def predict_here(request: Request) -> Response:  # /invocations: SageMaker names no model
        status, out = await answer(await request.body())
        return json_response(out, status)

    async def describe(request: Request) -> Response:
        if request.path_params["name"].endswith(":predict"):  # GET on the predict route
            return json_response({"error": "method not allowed", "detail": "predict takes POST"}, 405)
        if (resp := _wrong_model(request.path_params["name"])) is not None:
            return resp
        return json_response(server.describe())

    async def set_deployment(request: Request) -> Response:
        if (resp := _wrong_model(request.path_params["name"])) is not None:
            return resp
        if admin_token is not None:
            if request.headers.get("authorization") != f"Bearer {admin_token}":
                return json_response({"error": "forbidden", "detail": "a valid bearer token is required"}, 403)
        elif request.client is None or request.client.host not in ("127.0.0.1", "::1", "testclient"):
            return json_response({"error": "forbidden", "detail": "deployments are changed from loopback only"}, 403)
        try:
            deployment = Deployment.from_json(_loads(await request.body()))
            if deployment.stable is None:
                raise ValueError("'stable' is required")
        except (ValueError, TypeError) as exc:
            return json_response({"error": "invalid deployment", "detail": str(exc)}, 422)
        try:
            serving = await asyncio.to_thread(server.deploy, deployment)
        except Exception as exc:  # noqa: BLE001 - a version that cannot load leaves the old one serving
            return json_response({"error": "deployment failed", "detail": str(exc)[:500]}, 409)
        return json_response({"deployment": serving.deployment.to_json(), "loaded": sorted(serving.models)})

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        s = server.serving
        if s is None:
            return json_response({"ready": False, "detail": server.load_error or "loading"}, 503)
        return json_response({"ready": True, "model": name, **s.deployment.to_json()})

    async def metrics(request: Request) -> Response:
        return Response(server.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(server.load_initial)
        # Everything loaded so far (libraries, the model) lives as long as the process: moving it out
        # of the collector's reach keeps full collections from walking it during requests, where
        # they were the slowest answers' extra tens of milliseconds.
        gc.collect()
        gc.freeze()
        yield
        if server.log is not None:
            server.log.close()

    app = Starlette(
        routes=[
            Route("/v1/models/{name}:predict", predict, methods=["POST"]),
            Route("/v1/models/{name}/deployment", set_deployment, methods=["PUT"]),
            Route("/v1/models/{name}", describe, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            # the SageMaker container contract: the same model behind SageMaker's fixed paths
            Route("/ping", readyz, methods=["GET"]),
            Route("/invocations", predict_here, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    return PredictFastPath(app, {f"/v1/models/{name}:predict", "/invocations"}, answer)


class PredictFastPath:
    """Predictions straight from the ASGI server, every other route through Starlette.

    A single-row prediction costs the server a quarter of a millisecond in all, and Starlette's
    request, router and middleware objects are a visible part of it: without them the benchmark
    served ~10 % more single-row requests at 8 connections, with the p99 at 4.3-4.8 ms instead of
    6.0-7.5 ms (bench/serving.py, two rounds each). This path reads the body, answers with the same
    ``answer`` the Starlette route uses, and writes the JSON, nothing else."""

    def __init__(self, app: Starlette, paths: set[str], answer: Callable[[bytes], Any]):
        self.app, self.paths, self.answer = app, paths, answer

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            status, out = await self.answer(b"".join(chunks))
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
