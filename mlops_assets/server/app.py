"""The model server's state: what is served, how a deployment is verified and swapped in, how
admitted requests are scored, and what is written to the prediction log. The HTTP layer (routes,
authentication, body limits) is ``server.http``; how concurrent requests are scored together
``server.batching``; the Prometheus metrics ``server.metrics``.

The served versions live in one immutable ``Serving`` object. A deployment loads the new versions
off the event loop and scores a probe row with each (a version that cannot load, raises, or answers
the wrong number of scores is refused and nothing changes), records the change in the endpoint's
audit history and saves it as the endpoint's deployment (so a restarted server serves it), and only
then replaces that object in one assignment: a request in flight keeps the object it started with,
so a version swap neither pauses nor fails a request. A prediction is filed in the prediction log
before its answer is built: one that cannot be filed is answered 503, never a 200 that is lost.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from mlops_assets.core.requests import ParsedRequest, RequestError, merge_requests, parse_request, request_schema
from mlops_assets.core.rollout import Deployment
from mlops_assets.core.serving import OnlineLookup, Predictor, build_features
from mlops_assets.prediction_store import FEATURE_PREFIX, REQUESTS, SERVED, LogError, PredictionLog
from mlops_assets.server.clock import Clock, wall_clock
from mlops_assets.server.metrics import CANARY, STABLE, Metrics
from mlops_assets.specs import ModelSpec

log = logging.getLogger("mlops_assets.serving")

CHAMPION_SOURCE = "champion alias"  # an initial deployment taken from the registry, not from saved state
NONE = "none"  # variant and version label of a request answered without a prediction
DEFAULT_MAX_BODY_MB = 16.0  # a spec without a deployment section (the spec's own default)
PROBE_ROWS = 2  # rows of the probe a version must score before it is served


def _ns(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000) * 1000


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
    server serves (``endpoint_state.server_identity``), compared by a deploy before it talks to us.
    ``clock`` stamps everything the server records: the wall clock, unless the server belongs to a
    replay (``server.clock``: then ``replay`` is True and the clock is the replay's)."""

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
        clock: Clock | None = None,
    ):
        self.spec = spec
        self.clock = clock or wall_clock
        self.replay = clock is not None
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
            "time": self.clock().isoformat(),
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

    def warm_up_lookup(self) -> None:
        """One online lookup before the first request, on the thread that will serve requests: the
        online store's first read (Feast's registry and store connection) took ~400 ms, which the
        first request paid; in a canary with few requests that one answer was the canary's p99 and
        rolled it back. A store that cannot answer yet is not an error here: requests will say so."""
        if self.lookup is None:
            return
        from mlops_assets.core.features import PRIOR_KEY

        try:
            self.lookup({e: [PRIOR_KEY] for e in self.spec.entities})
        except Exception:  # reported; the first request retries and answers for itself
            log.warning("online store warm-up failed", exc_info=True)

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
        now = self.clock()
        request_id = os.urandom(16).hex()  # as unique as a uuid4, a third of its cost
        serving = self.serving  # the request keeps this object, whatever is deployed meanwhile
        if serving is None:
            return self.refuse(503, {"error": "not ready", "detail": self.load_error or "loading"}, started, request_id)
        try:
            parsed = parse_request(payload, self.schema, self.spec, now=now)
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
        return Pending(request_id, self.received_at(now, parsed), started, parsed, variant, version, serving.models[version])

    def received_at(self, now: datetime, parsed: ParsedRequest) -> datetime:
        """When a request was received: ``now``. On a replay's server only, a request whose latest event
        is later than the replay's clock was sent at that event's time (the replay sends each event at
        its own time, concurrently; ``server.clock``); production never reads a time from a request."""
        if not self.replay or parsed.timestamps is None or not len(parsed.timestamps):
            return now
        return max(now, parsed.timestamps.max().to_pydatetime())

    def refuse(
        self, status: int, body: dict[str, Any], started: float | None = None, request_id: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Count and log a request answered without a prediction (bad input, credentials, not ready)
        and return its answer: variant ``none``, version 0 in the requests log."""
        seconds = time.perf_counter() - started if started is not None else 0.0
        self.metrics.observe(NONE, NONE, status, None, None)
        request_id = request_id or body.get("request_id") or os.urandom(16).hex()
        try:
            self._log_request(request_id, self.clock(), NONE, "0", status, 0, seconds)
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
        results, answered = [], []
        for p, lo, hi, ok in zip(pending, bounds[:-1], bounds[1:], filed, strict=True):
            seconds = time.perf_counter() - p.started
            if ok is not True:  # the prediction store refused its rows: a prediction not logged is not given
                self.metrics.observe(p.variant, p.version, 503, seconds, None)
                answered.append((p.request_id, p.received, p.variant, p.version, 503, p.parsed.rows, seconds))
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
            answered.append((p.request_id, p.received, p.variant, p.version, 200, p.parsed.rows, seconds))
            results.append((200, body))
        self._log_requests(answered)  # one block for the batch: one write-ahead append, not one per request
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
        self._log_requests([(request_id, received, variant, version, status, rows, seconds)])

    def _log_requests(self, answered: list[tuple]) -> None:
        """Rows of the requests log, one per answered request: (id, received, variant, version,
        status, rows, seconds). Their failure never changes an answer already decided (the served
        rows, not this summary, are what a 200 guarantees): it is reported in the server log."""
        if self.log is None or not answered:
            return
        try:
            self.log.append(
                REQUESTS,
                {
                    "request_id": [a[0] for a in answered],
                    "received_at_ns": [_ns(a[1]) for a in answered],
                    "variant": [a[2] for a in answered],
                    "model_version": [int(a[3]) for a in answered],
                    "status": [a[4] for a in answered],
                    "rows": [a[5] for a in answered],
                    "latency_ms": [a[6] * 1000 for a in answered],
                },
            )
        except Exception:  # see above
            log.warning("requests %s: not written to the requests log", [a[0] for a in answered], exc_info=True)

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
