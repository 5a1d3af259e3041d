"""The model server's clock: the wall clock in production, a replay's simulated clock in a replay.

Everything the server stamps reads one clock: when a request was received (the requests and served
logs), when a block of the prediction log was sealed (the name of its files, which the canary check
reads "since" a moment), and the time of the audit entries it writes. In production that clock is
the wall clock, and nothing a client sends can change it.

**A replay's server** (``mlops replay`` of a spec with a local endpoint) lives on the replay's clock,
so that a canary is started, judged and promoted on the same simulated days as every other decision
(``canary_sides`` reads the logs since the canary started, a simulated moment). The replay names a
file in its own home in ``MLOPS_REPLAY_CLOCK`` before its automation starts the server; the file
holds the simulated now (epoch nanoseconds), and the replay rewrites it at every simulated moment
(each run it executes, each hour of traffic it sends). Why a file, and not a header or a route:

* No request can move time. A clock a client could set (an ``X-...-Time`` header, an admin route)
  would be one token or one flag away from a production server whose logs and canary judgements an
  attacker could rewind or fast-forward. The replay's clock is state on the replay's disk, written by
  the replay process only; a server without the variable has no code path that reads it.
* The mode cannot reach production by accident: a server with ``MLOPS_REPLAY_CLOCK`` set refuses to
  start unless it listens on loopback (``server_clock``), so a container (``0.0.0.0``) that inherits
  the variable fails at start instead of serving on a frozen clock.
* Runs and traffic share it: the endpoint asset's PUT to the server (a ``server_swap`` audit entry)
  happens inside a run the replay executes at a simulated moment; the replay wrote that moment to the
  file first, so the server's entry and the asset's agree.

In replay mode a request that carries event times is received at its latest event time when that is
later than the clock (``ModelServer.received_at``): the replay's client sends each flight's request
at the flight's own time, many at once over several connections (one global clock could not give
concurrent requests their own times), and the replay advances the file to the end of each hour it
sends before it flushes the log and ticks the canary sensor. A request whose events are in the past
is received at the clock (the replay sends it late). Production never does this: there, received is
always the wall clock.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPLAY_CLOCK_ENV = "MLOPS_REPLAY_CLOCK"  # file holding a replay's simulated now (epoch ns); set by the replay only

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    """Production time: the wall clock, UTC."""
    return datetime.now(UTC)


class FileClock:
    """A replay's clock: the simulated now written in ``path`` by the replay (``set_file_clock``).
    Read on every call (~10 µs): the replay moves it between requests, and never from a request."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.ns() / 1e9, UTC)

    def ns(self) -> int:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError) as exc:  # the replay writes it before it starts the server
            raise RuntimeError(f"replay clock {self.path} is unreadable: {exc}") from exc


def set_file_clock(path: str | os.PathLike, when: datetime) -> None:
    """Move a replay's clock to ``when`` (aware): written whole and renamed, so a reader never sees half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(str(int(when.timestamp() * 1_000_000) * 1000))
    os.replace(tmp, path)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: not known to stay on this machine
        return False


def server_clock(host: str) -> FileClock | None:
    """The replay clock named by ``MLOPS_REPLAY_CLOCK``, or None (the wall clock: production).
    Raises ``ValueError`` when the variable is set but the server would listen beyond loopback: a
    simulated clock is for a replay's own server on this machine, never for one clients reach."""
    path = os.environ.get(REPLAY_CLOCK_ENV)
    if not path:
        return None
    if not is_loopback(host):
        raise ValueError(
            f"{REPLAY_CLOCK_ENV} is set (a replay's simulated clock) but the server would listen on {host!r}: "
            "a replay's server listens on loopback only; unset the variable to serve on the wall clock"
        )
    clock = FileClock(path)
    clock.ns()  # unreadable: fail at start, not on the first request
    return clock
