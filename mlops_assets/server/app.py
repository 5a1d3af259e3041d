"""The model server: one ASGI (Starlette) app for the local endpoint, the container image and tests.

Routes (``<name>`` is the spec's name)::

    POST /v1/models/<name>:predict     {"instances": [{...}, ...]} or {"inputs": {field: [...]}}
    GET  /v1/models/<name>             request fields, what is served, the canary share, the limits
    PUT  /v1/models/<name>/deployment  {"stable": "3", "canary": "4", "canary_percent": 10}  (admin)
    GET  /healthz                      the process answers, and which home and registry it serves
    GET  /readyz                       the served versions can score (503 until then)
    GET  /metrics                      Prometheus text exposition
    GET  /ping, POST /invocations      the same, on the paths a SageMaker container must answer

The served versions live in one immutable ``Serving`` object. A deployment loads the new versions
off the event loop and scores a probe row with each (a version that cannot load, raises, or answers
the wrong number of scores is refused 409 and nothing changes), records the change in the endpoint's
audit history and saves it as the endpoint's deployment (so a restarted server serves it), and only
then replaces that object in one assignment: a request in flight keeps the object it started with,
so a version swap neither pauses nor fails a request.

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
import itertools
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
from mlops_assets.prediction_store import FEATURE_PREFIX, REQUESTS, SERVED, LogError, PredictionLog
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
CHAMPION_SOURCE = "champion alias"  # an initial deployment taken from the registry, not from saved state
NONE = "none"  # variant and version label of a request answered without a prediction
DEFAULT_MAX_BODY_MB = 16.0  # a spec without a deployment section (the spec's own default)
PROBE_ROWS = 2  # rows of the probe a version must score before it is served


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


class DeploymentError(RuntimeError):
    """A deployment the server refused: a version that cannot load or cannot score, or a change
    that could not be recorded. Nothing that is served changed."""


def probe_columns(spec: ModelSpec) -> dict[str, np.ndarray]:
    """Model inputs a version must score before it is served: ``PROBE_ROWS`` rows of every feature
    the spec gives the model, in the dtypes ``build_features`` gives it (text as object, numbers as
    float64). Built from the spec, not from a request, so the probe needs neither the request parser
    nor the online store, and a model fitted on other columns or dtypes fails it."""
    cats = set(spec.categorical_features)
    cols: dict[str, np.ndarray] = {}
    for name in spec.feature_names:
        if name in cats:
            cols[name] = np.array([str(i) for i in range(PROBE_ROWS)], dtype=object)
        else:
            cols[name] = np.arange(PROBE_ROWS, dtype="float64")
    return cols


class ModelServer:
    """The state behind the routes: the spec, how to load versions, what is served, and the logs.

    ``state`` (the endpoint's ``EndpointState``) receives an audit entry before every change of what
    is served, and the deployment a swap leaves; ``identity`` is what ``GET /healthz`` says this
    server serves (``endpoint_state.server_identity``), compared by a deploy before it talks to us."""

    def __init__(
        self,
        spec: ModelSpec,
        load_version: Callable[[str], Any],
        *,
        online_lookup: OnlineLookup | None = None,
        prediction_log: PredictionLog | None = None,
        initial: Deployment | Callable[[], Deployment | tuple[Deployment, str] | None] | None = None,
        state: Any = None,
        identity: dict[str, str] | None = None,
    ):
        self.spec = spec
        self.schema = request_schema(spec)
        self.load_version = load_version
        self.lookup = online_lookup
        self.log = prediction_log
        self.metrics = Metrics(spec)
        self.serving: Serving | None = None
        self.initial = initial
        self.state = state
        self.identity = identity
        self.load_error: str | None = None
        self._deploy_lock = threading.Lock()
        self.classification = spec.target.task == "classification"
        self._probe = probe_columns(spec)
        max_body_mb = spec.deployment.max_body_mb if spec.deployment else DEFAULT_MAX_BODY_MB
        self.max_body_bytes = int(max_body_mb * 2**20)

    # --- deployments -------------------------------------------------------------------------

    def verify(self, version: str, model: Predictor) -> None:
        """Raise ``DeploymentError`` unless ``model`` scores the probe rows: one finite score per
        row (a probability in [0, 1] for a classifier)."""
        try:
            scores = np.asarray(model.scores(self._probe), dtype="float64")
        except Exception as exc:  # whatever the model raises, it cannot serve
            raise DeploymentError(f"version {version} cannot score: {type(exc).__name__}: {str(exc)[:300]}") from exc
        if scores.shape != (PROBE_ROWS,):
            raise DeploymentError(f"version {version} answered {scores.shape} scores for {PROBE_ROWS} rows")
        if not np.isfinite(scores).all() or (self.classification and ((scores < 0) | (scores > 1)).any()):
            raise DeploymentError(f"version {version} answered invalid scores {scores.tolist()} for the probe rows")

    def deploy(
        self,
        deployment: Deployment,
        *,
        source: str = "api",
        client: str | None = None,
        action: str = "server_swap",
        save: bool = True,
    ) -> Serving:
        """Load the deployment's versions (reusing those already in memory) and score a probe with
        each, record the change in the audit history and save it (``save``), then swap them in. Any
        failure raises ``DeploymentError`` before the swap: what is served does not change."""
        if deployment.stable is None:
            raise DeploymentError("a deployment needs a stable version")
        with self._deploy_lock:
            before = self.serving
            current = before.models if before else {}
            models: dict[str, Predictor] = {}
            for v in deployment.versions:
                if v in current:
                    models[v] = current[v]
                    continue
                try:
                    models[v] = Predictor(self.load_version(v), self.spec)
                except Exception as exc:  # an unknown version, a broken artifact
                    raise DeploymentError(f"version {v} cannot be loaded: {type(exc).__name__}: {str(exc)[:300]}") from exc
            for v, model in models.items():
                self.verify(v, model)
            if before is not None and before.deployment == deployment:
                self.load_error = None
                return before  # nothing changes: nothing to record
            self._record(action, deployment, before, source, client, save)
            serving = Serving(deployment, models)
            self.serving = serving  # the one assignment that switches traffic
            self.metrics.served(deployment)
            self.load_error = None
        log.info(
            "serving %s: stable v%s, canary %s at %s%% (%s)",
            self.spec.name,
            deployment.stable,
            deployment.canary,
            deployment.canary_percent,
            source,
        )
        return serving

    def _record(
        self, action: str, deployment: Deployment, before: Serving | None, source: str, client: str | None, save: bool
    ) -> None:
        """The audit entry (and the saved deployment) of a change about to be served."""
        if self.state is None:
            return
        event = {
            "time": datetime.now(UTC).isoformat(),
            "action": action,
            **deployment.to_json(),
            "previous": before.deployment.to_json() if before else None,
            "source": source,
            "client": client,
            "pid": os.getpid(),
        }
        try:
            self.state.record(event)
            if save:
                self.state.save(deployment)  # what a restarted server serves
        except Exception as exc:  # an unrecorded change is not made
            raise DeploymentError(f"cannot record the change in {self.state.folder}: {type(exc).__name__}: {exc}") from exc

    def load_initial(self) -> None:
        """Serve the initial deployment: ``initial`` is a deployment, or a function returning one,
        or (deployment, source) where the source says where it came from. Only a deployment that
        was not read from the saved state (``CHAMPION_SOURCE``) is saved, so containers pinned by
        their environment never overwrite the endpoint's deployment."""
        try:
            initial = self.initial() if callable(self.initial) else self.initial
        except Exception as exc:  # an unreadable saved deployment: not ready, says why
            self.load_error = f"cannot read the initial deployment: {type(exc).__name__}: {exc}"
            log.exception("initial deployment unreadable")
            return
        source = "start"
        if isinstance(initial, tuple):
            initial, source = initial
        if initial is None:
            self.load_error = "no deployment yet: the model has no champion version"
            return
        try:
            self.deploy(initial, source=source, action="server_start", save=source == CHAMPION_SOURCE)
        except Exception as exc:  # the server stays up and says why it is not ready
            self.load_error = f"cannot serve {initial.to_json()}: {exc}"
            log.exception("initial deployment failed")

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): the served versions score the probe rows now, not only when they were loaded."""
        serving = self.serving
        if serving is None:
            return False, self.load_error or "loading"
        for v, model in serving.models.items():
            try:
                self.verify(v, model)
            except DeploymentError as exc:
                return False, str(exc)
        return True, ""

    # --- predictions -------------------------------------------------------------------------

    def admit(self, payload: Any) -> Pending | tuple[int, dict[str, Any]]:
        """Validate a decoded body and route it to a version: a ``Pending`` prediction, or the answer
        (status, body) when there is nothing to predict (not ready, bad input), already counted."""
        started = time.perf_counter()
        received = datetime.now(UTC)
        request_id = os.urandom(16).hex()  # as unique as a uuid4, a third of its cost
        serving = self.serving  # the request keeps this object, whatever is deployed meanwhile
        if serving is None:
            return self.refuse(503, {"error": "not ready", "detail": self.load_error or "loading"}, started, request_id)
        try:
            parsed = parse_request(payload, self.schema, self.spec, now=received)
        except RequestError as exc:
            return self.refuse(
                exc.status, {"error": "invalid request", "detail": exc.errors, "request_id": request_id}, started, request_id
            )
        except RecursionError:
            detail = [{"loc": ["body"], "msg": "nested too deeply: request values are numbers or text"}]
            return self.refuse(422, {"error": "invalid request", "detail": detail, "request_id": request_id}, started, request_id)
        except Exception as exc:  # a parser bug must not answer 5xx for content
            log.exception("request %s: the parser failed on its content", request_id)
            detail = [{"loc": ["body"], "msg": f"cannot be read: {type(exc).__name__}"}]
            return self.refuse(422, {"error": "invalid request", "detail": detail, "request_id": request_id}, started, request_id)
        variant, version = serving.pick()
        return Pending(request_id, received, started, parsed, variant, version, serving.models[version])

    def refuse(
        self, status: int, body: dict[str, Any], started: float | None = None, request_id: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Count and log a request answered without a prediction (bad input, credentials, not ready)
        and return its answer: variant ``none``, version 0 in the requests log."""
        seconds = time.perf_counter() - started if started is not None else 0.0
        self.metrics.observe(NONE, NONE, status, None, None)
        request_id = request_id or body.get("request_id") or os.urandom(16).hex()
        try:
            self._log_request(request_id, datetime.now(UTC), NONE, "0", status, 0, seconds)
        except Exception:  # the answer is already decided; a log failure is reported, not answered
            log.warning("request %s (%d): could not be written to the requests log", request_id, status, exc_info=True)
        return status, body

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
        bounds = np.cumsum([0] + [p.parsed.rows for p in pending])
        filed = self._file(pending, merged, features, scores, outputs, unknown, bounds)
        results = []
        for p, lo, hi, ok in zip(pending, bounds[:-1], bounds[1:], filed, strict=True):
            seconds = time.perf_counter() - p.started
            if ok is not True:  # the prediction store refused its rows: a prediction not logged is not given
                self.metrics.observe(p.variant, p.version, 503, seconds, None)
                self._log_request(p.request_id, p.received, p.variant, p.version, 503, p.parsed.rows, seconds)
                results.append((503, {"error": "prediction not logged", "detail": str(ok)[:300], "request_id": p.request_id}))
                continue
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
        return results

    def _file(self, pending, merged, features, scores, outputs, unknown, bounds) -> list:
        """File the served rows in the prediction log before anything is answered: one block for the
        whole batch, and when the store refuses it (``LogError``), one per request so that only the
        request whose rows cannot be filed fails. Per request: True, or the ``LogError``."""
        if self.log is None:
            return [True] * len(pending)
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
        try:
            self.log.append(SERVED, served)
            return [True] * len(pending)
        except LogError as exc:
            if len(pending) == 1:
                log.warning("request %s: prediction not logged: %s", pending[0].request_id, exc)
                return [exc]
        filed: list = []
        for lo, hi in itertools.pairwise(bounds):
            part = {k: v[lo:hi] for k, v in served.items()}
            try:
                self.log.append(SERVED, part)
                filed.append(True)
            except LogError as exc:
                log.warning("request %s: prediction not logged: %s", part["request_id"][0], exc)
                filed.append(exc)
        return filed

    def _log_request(self, request_id, received, variant, version, status, rows, seconds) -> None:
        """One row of the requests log. Its failure never changes an answer already decided (the
        served rows, not this summary, are what a 200 guarantees): it is reported in the server log."""
        if self.log is None:
            return
        try:
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
        except Exception:  # see above
            log.warning("request %s (%s): not written to the requests log", request_id, status, exc_info=True)

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models/<name>`` answers: the request's fields and limits, and what is served."""
        serving = self.serving
        return {
            "model": self.spec.name,
            "task": self.spec.target.task,
            "request": self.schema.describe(),
            "request_schema": self.schema.json_schema(),  # JSON Schema of both request shapes
            "deployment": serving.deployment.to_json() if serving else None,
            "loaded_versions": sorted(serving.models) if serving else [],
            "max_body_bytes": self.max_body_bytes,
        }


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
) -> PredictFastPath:
    """The ASGI app around a ``ModelServer``.

    ``admin_token`` is required: changing the deployment always needs ``Authorization: Bearer
    <admin_token>`` (there is no loopback exception: any local process could otherwise swap the
    model). ``api_keys``: when given (non-empty), predictions need one of them as ``X-API-Key`` or
    ``Authorization: Bearer``. ``max_body_bytes``: the largest request body (default: the spec's
    ``deployment.max_body_mb``)."""
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
        # Everything loaded so far (libraries, the model) lives as long as the process: moving it out
        # of the collector's reach keeps full collections from walking it during requests, where
        # they were the slowest answers' extra tens of milliseconds.
        gc.collect()
        gc.freeze()
        yield
        if server.log is not None:
            server.log.close()

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
