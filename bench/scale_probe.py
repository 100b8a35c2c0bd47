"""The probe of bench/scale.py, run as `python bench/scale_probe.py OUT STATE -- AZ ARGUMENTS`: az in
this process, with the product's known_hosts module and paramiko's host key table wrapped in
per-thread CPU timers, and the file calls counting the bytes written into the --state file (or
its temporary files). Writes {"journal_bytes", "known_hosts_cpu"} to OUT when az exits."""
import builtins
import functools
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Timer:
    def __init__(self):
        self.local = threading.local()
        self.cpu = 0.0
        self.lock = threading.Lock()

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if getattr(self.local, "inside", False):
                return fn(*args, **kwargs)
            self.local.inside = True
            started = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.local.inside = False
                spent = time.thread_time() - started
                with self.lock:
                    self.cpu += spent
        return timed

    def wrap_module(self, module):
        for name, obj in list(vars(module).items()):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if isinstance(obj, type):
                for attr, member in list(vars(obj).items()):
                    if callable(member) and not isinstance(member, type) and (
                            not attr.startswith("__") or attr == "__init__"):
                        setattr(obj, attr, self.wrap(member))
            elif callable(obj):
                setattr(module, name, self.wrap(obj))


class _Counting:
    """A file object whose writes are counted."""

    def __init__(self, handle, counter):
        self._handle, self._counter = handle, counter

    def write(self, data):
        self._counter[0] += len(data.encode("utf-8") if isinstance(data, str) else data)
        return self._handle.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        self._handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def __iter__(self):
        return iter(self._handle)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _install_probe(out, state):
    state = os.path.abspath(state)
    written = [0]
    timer = _Timer()

    def is_state(path):
        return isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(state)

    def fd_path(fd):
        try:
            return os.readlink("/proc/self/fd/%d" % fd)
        except OSError:
            return ""

    real_open, real_fdopen, real_write = builtins.open, os.fdopen, os.write

    def counted_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        path = fd_path(file) if isinstance(file, int) else file
        return _Counting(handle, written) if any(c in mode for c in "wax+") and is_state(path) else handle

    def counted_fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        return _Counting(handle, written) if any(c in mode for c in "wax+") and is_state(fd_path(fd)) else handle

    def counted_write(fd, data):
        n = real_write(fd, data)
        if fd > 2 and is_state(fd_path(fd)):
            written[0] += n
        return n

    builtins.open, os.fdopen, os.write = counted_open, counted_fdopen, counted_write
    import paramiko.hostkeys
    from azext_edgetpm.remote import known_hosts
    timer.wrap_module(known_hosts)
    for attr in ("load", "add", "lookup", "check", "__init__"):
        setattr(paramiko.hostkeys.HostKeys, attr, timer.wrap(getattr(paramiko.hostkeys.HostKeys, attr)))

    import atexit

    def report():
        with real_open(out, "w", encoding="utf-8") as handle:
            json.dump({"journal_bytes": written[0], "known_hosts_cpu": timer.cpu}, handle)
    atexit.register(report)


def probe_main(argv):
    out, state = argv[0], argv[1]
    _install_probe(out, state)
    import runpy
    sys.argv = ["az"] + argv[3:]
    runpy.run_module("azure.cli", run_name="__main__")


if __name__ == "__main__":
    probe_main(sys.argv[1:])
