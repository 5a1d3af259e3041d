"""How a replay hears SIGINT and SIGTERM while Dagster owns them (``stop_signals``)."""

from __future__ import annotations

import contextlib
import os


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the replay between two runs (the servers it started are stopped)."""


@contextlib.contextmanager
def stop_signals():
    """Ctrl-C and SIGTERM stop a replay, also when they arrive during a run; yields the check the
    replay makes after every run and tick.

    Dagster owns both signals while it executes a run (``capture_interrupts``): it records them, the
    run goes on to its end, and the record is cleared, so a replay used to carry on as if nothing had
    happened (a ``timeout`` or a container's stop went unheard). The signals are also written to a
    wakeup pipe whatever Python handler is in place; after each run the replay reads it and raises
    ``Stopped``. Between runs our own handler raises at once.

    It also spares each automation tick a cost: with Python's default SIGINT handler in place,
    ``asyncio.run`` (the evaluator's) installs one bound to its task and, on the way out, formats the
    finished task with every evaluation result in an error it then swallows (1.3 % of a replay of
    120 Elec2 days, py-spy). With another handler in place it leaves SIGINT alone. Off the main
    thread (the daemon) nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def interrupt(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for sig in previous:
        signal.signal(sig, interrupt)

    def check() -> None:
        try:
            received = os.read(read_end, 512)
        except BlockingIOError:
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signum.value in received:
                raise Stopped(signum.name)

    try:
        yield check
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        os.close(read_end)
        os.close(write_end)
