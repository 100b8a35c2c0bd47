"""pytest fixtures for tests that need simulated devices.

Registered by the repository's top-level conftest.py (``pytest_plugins = ["devkit.pytest_plugin"]``).

- ``rig`` (session): one device of each of ``rig_variants`` (default: fresh, mfg, notools,
  notpm), started once per session and brought down at the end, also when tests fail.
  ``rig.by_variant("mfg")``, ``rig.device("d1")``, ``rig.devices``, ``rig.host_ip``,
  ``rig.json_path`` ... (a :class:`devkit.devices.Rig`). Tests must not break shared
  devices (change their TPM, uninstall things): take a private one instead.
- ``new_device`` (function): a factory, ``new_device("mfg")`` starts a private device in the
  session rig; it is removed when the test ends.
- ``rig_variants`` / ``rig_services`` (session): override them in a conftest.py to change
  what the session rig starts (e.g. ``["dps"]`` once that service exists).

Without root (or without the tools) every test using these fixtures is skipped with the
reason. Set ``DEVKIT_KEEP=1`` to leave the session rig running for debugging (its
directory is printed); ``python -m devkit down --dir DIR`` removes it later.
"""
import os
import sys

import pytest

from devkit.devices import Rig, missing_requirements

DEFAULT_VARIANTS = ("fresh", "mfg", "notools", "notpm")


def require_devices():
    """Skip the calling test when this machine cannot run simulated devices."""
    reasons = missing_requirements()
    if reasons:
        pytest.skip("simulated devices unavailable: " + "; ".join(reasons))


def pytest_configure(config):
    """Register the ``devkit`` and ``userlands`` markers."""
    config.addinivalue_line("markers", "devkit: the test runs simulated devices (needs root)")
    config.addinivalue_line("markers", "userlands(*names): the test runs devices on these device "
                                       "userlands (devkit/userland.py); their builds start when the "
                                       "session starts")


def pytest_collection_finish(session):
    """Start building (in the background) the device userlands the selected tests need, so that
    a cold build overlaps with the tests that run before them."""
    names = sorted({n for item in session.items for m in item.iter_markers("userlands") for n in m.args})
    if names and not missing_requirements():
        from devkit import userland
        userland.prefetch(names)


def pytest_sessionstart(session):
    """Remove rigs abandoned by earlier, killed test runs (never a live run's rigs)."""
    if not missing_requirements():
        from devkit.cli import collect_garbage
        collect_garbage(out=sys.stderr)


@pytest.fixture(scope="session")
def rig_variants():
    """Variants of the session rig's devices (one device each)."""
    return list(DEFAULT_VARIANTS)


@pytest.fixture(scope="session")
def rig_services():
    """Services the session rig starts (see devkit/services.py)."""
    return []


@pytest.fixture(scope="session")
def rig(tmp_path_factory, rig_variants, rig_services):
    """The session's simulated devices (a running :class:`devkit.devices.Rig`)."""
    require_devices()
    the_rig = Rig(tmp_path_factory.mktemp("devkit-rig"), owner_pid=os.getpid())
    the_rig.up(rig_variants, services=rig_services)
    try:
        yield the_rig
    finally:
        if os.environ.get("DEVKIT_KEEP"):
            the_rig.owner_pid = None  # so that a later session's gc keeps it
            the_rig.write_json()
            sys.stderr.write("\nDEVKIT_KEEP: session rig left running in %s\n" % the_rig.dir)
        else:
            the_rig.down()


@pytest.fixture
def new_device(rig):
    """Factory: ``new_device(variant="fresh")`` starts a private device, removed after the test."""
    started = []

    def start(variant="fresh"):
        dev = rig.add_device(variant)
        started.append(dev)
        return dev

    yield start
    for dev in started:
        if any(d.name == dev.name for d in rig.devices):
            rig.remove_device(dev)
