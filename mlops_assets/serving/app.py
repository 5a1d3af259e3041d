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
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlops_assets.core.serving import (
    Deployment,
    OnlineLookup,
    Predictor,
    RequestError,
    build_features,
    parse_request,
    request_schema,
)
from mlops_assets.serving.log import FEATURE_PREFIX, REQUESTS, SERVED, PredictionLog
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

    def predict(self, payload: Any) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        received = datetime.now(UTC)
        request_id = uuid.uuid4().hex
        serving = self.serving  # the request keeps this object, whatever is deployed meanwhile
        if serving is None:
            return 503, {"error": "not ready", "detail": self.load_error or "loading"}
        try:
            parsed = parse_request(payload, self.schema, self.spec, now=received)
        except RequestError as exc:
            self.metrics.observe("none", "none", exc.status, None, None)
            return exc.status, {"error": "invalid request", "detail": exc.errors, "request_id": request_id}
        variant, version = serving.pick()
        try:
            features = build_features(parsed, self.spec, self.lookup)
            scores = np.ascontiguousarray(serving.models[version].scores(features.columns), dtype="float64")
            outputs = (scores >= 0.5).astype("int8") if self.classification else scores
        except Exception:
            log.exception("prediction failed (request %s, v%s)", request_id, version)
            seconds = time.perf_counter() - started
            self.metrics.observe(variant, version, 500, seconds, None)
            self._log_request(request_id, received, variant, version, 500, parsed.rows, seconds)
            return 500, {"error": "prediction failed", "request_id": request_id, "model_version": version}
        seconds = time.perf_counter() - started
        body: dict[str, Any] = {
            "model": self.spec.name,
            "model_version": version,
            "variant": variant,
            "request_id": request_id,
            "predictions": outputs,
        }
        if self.classification:
            body["scores"] = scores
        unknown = features.unknown_per_row()
        if unknown is not None:
            body["unknown_entities"] = unknown
            for entity, mask in features.unknown.items():
                if count := int(mask.sum()):
                    self.metrics.unknown.labels(self.spec.name, entity).inc(count)
        self.metrics.observe(variant, version, 200, seconds, outputs)
        self._log_request(request_id, received, variant, version, 200, parsed.rows, seconds)
        if self.log is not None:
            n, received_ns = parsed.rows, _ns(received)
            served = {
                "request_id": [request_id] * n,
                "received_at_ns": np.full(n, received_ns, dtype="int64"),
                "event_id": parsed.event_ids if parsed.event_ids is not None else [None] * n,
                "event_timestamp_ns": parsed.timestamps.as_unit("ns").asi8 if parsed.timestamps is not None else np.full(n, received_ns),
                "model_version": np.full(n, int(version), dtype="int64"),
                "variant": [variant] * n,
                "score": scores,
                **{f"{FEATURE_PREFIX}{c}": v for c, v in features.columns.items()},
                "unknown_entities": [",".join(u) for u in unknown] if unknown else [""] * n,
            }
            if self.classification:
                served["prediction"] = outputs
            self.log.append(SERVED, served)
        return 200, body

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


def create_app(server: ModelServer, *, admin_token: str | None = None) -> Starlette:
    """The ASGI app around a ``ModelServer``. ``admin_token``: required (``Authorization: Bearer``)
    to change the deployment; without one only loopback clients may."""
    name = server.spec.name

    def _wrong_model(requested: str) -> Response | None:
        if requested != name:
            return json_response({"error": "unknown model", "detail": f"this server serves {name!r}, not {requested!r}"}, 404)
        return None

    async def predict(request: Request) -> Response:
        if (resp := _wrong_model(request.path_params["name"])) is not None:
            return resp
        body = await request.body()
        try:
            payload = _loads(body)
        except ValueError as exc:
            server.metrics.observe("none", "none", 400, None, None)
            return json_response({"error": "invalid JSON", "detail": str(exc)[:300]}, 400)
        status, out = server.predict(payload)
        return json_response(out, status)

    async def invocations(request: Request) -> Response:
        request.path_params["name"] = name
        return await predict(request)

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
        yield
        if server.log is not None:
            server.log.close()

    return Starlette(
        routes=[
            Route("/v1/models/{name}:predict", predict, methods=["POST"]),
            Route("/v1/models/{name}/deployment", set_deployment, methods=["PUT"]),
            Route("/v1/models/{name}", describe, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            # the SageMaker container contract: the same model behind SageMaker's fixed paths
            Route("/ping", readyz, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
