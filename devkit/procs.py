"""The host's side of a device's processes: finding a launcher's child, stopping every process of
a network namespace (gracefully or as a power cut)."""
import os
import signal
import time

from devkit import netns
from devkit.device import DevkitError


def children(pid):
    """Host pids of the children of ``pid``."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid), "r", encoding="ascii") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stop_netns(namespaces, init_pids, grace=1.5):
    """Stop every process in the namespaces: SIGTERM the device inits, SIGKILL leftovers."""
    members = set()
    for ns in namespaces:
        members.update(netns.netns_pids(ns))
    for pid in init_pids:
        if pid in members:
            _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        alive = set()
        for ns in namespaces:
            alive.update(netns.netns_pids(ns))
        if not alive:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not any(netns.netns_pids(ns) for ns in namespaces):
            return
        time.sleep(0.05)
    raise DevkitError("processes survive in %s" % ", ".join(namespaces))


def kill_now(ns):
    """SIGKILL every process of a network namespace at once (a power cut); wait until gone."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = netns.netns_pids(ns)
        if not pids:
            return
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.02)
    raise DevkitError("processes survive in %s" % ns)
