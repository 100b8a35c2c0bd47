"""How a long fleet run shows its progress on stderr.

On a terminal: one status line that fits the terminal's width (a bar, done/failed/running counts,
elapsed time, rate and ETA), redrawn in place, with each device's end printed on its own line
above it. Off a terminal (a pipeline log): each device's end on a line, and a heartbeat line with
the same figures every 30 s while devices run. With az's --only-show-errors only failed devices'
lines are written.
"""
import shutil
import sys
import threading
import time

HEARTBEAT_SECONDS = 30.0


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def figures(progress, elapsed: float) -> str:
    """`12/400 done 10 failed 2 running 8 | 1:05 elapsed, 11.1/min, ETA 34:41`"""
    finished = progress.done + progress.failed + progress.skipped
    rate = finished / elapsed * 60 if elapsed > 0 and finished else 0.0
    left = progress.total - finished
    eta = _clock(left / rate * 60) if rate > 0 else "-"
    return (f"{finished}/{progress.total} done {progress.done + progress.skipped} failed {progress.failed} "
            f"running {len(progress.running)} | {_clock(elapsed)} elapsed, {rate:.1f}/min, ETA {eta}")


def _ended(text: str) -> str:
    if " failed: " in text:
        return "failed"
    if text.endswith(": done") or text.endswith("skipped") or text.endswith(": interrupted"):
        return "ended"
    return ""


class Display:
    """A reporter for fleet/runner.Progress (called with (progress, text) on each event); end()
    stops the heartbeat and leaves the terminal's line clean."""

    def __init__(self, verb: str, stream=None, tty=None, only_errors: bool = False,
                 heartbeat: float = HEARTBEAT_SECONDS):
        self.verb, self.stream = verb, stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.only_errors, self.heartbeat = only_errors, heartbeat
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._progress = None
        self._stop = threading.Event()
        self._thread = None
        if not self.tty and not only_errors and heartbeat:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="edgetpm-heartbeat")
            self._thread.start()

    def __call__(self, progress, text):
        with self._lock:
            self._progress = progress
            kind = _ended(text)
            if kind and (kind == "failed" or not self.only_errors):
                self._line(text)
            if self.tty and not self.only_errors:
                self._status()

    def _line(self, text):
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.write(f"{text}\n")
        else:
            self.stream.write(f"[{figures(self._progress, time.monotonic() - self.started)}] {text}\n")
        self.stream.flush()

    def _status(self):
        width = max(20, shutil.get_terminal_size((80, 20)).columns - 1)
        p = self._progress
        text = figures(p, time.monotonic() - self.started)
        finished = p.done + p.failed + p.skipped
        bar_width = max(0, min(30, width - len(text) - 3))
        if bar_width >= 5:
            filled = int(bar_width * finished / max(1, p.total))
            text = "[" + "#" * filled + "." * (bar_width - filled) + "] " + text
        self.stream.write("\r\x1b[K" + text[:width])
        self.stream.flush()

    def _beat(self):
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                if self._progress is not None:
                    self.stream.write(f"[{figures(self._progress, time.monotonic() - self.started)}] "
                                      f"{self.verb}: still running\n")
                    self.stream.flush()

    def end(self):
        self._stop.set()
        with self._lock:
            if self.tty and not self.only_errors and self._progress is not None:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
