"""Simulated TPM devices and the rig that runs them (see ../shared/docs/rig.md).

A device is a network namespace with a veth on the rig's bridge, a private overlay root
over the host's ``/``, its own PID/mount/UTS namespaces, a real sshd and its own swtpm.
``devkit/device_init.py`` is its PID 1. A rig is a set of devices sharing a directory
(keys, logs, ``devkit.json``), a bridge and a /24 (see :mod:`devkit.netns`).

Here: :class:`Rig` (up, add and remove devices, down). Its parts: :mod:`devkit.device` (a
device, what the kit shares about devices; its names are importable from here too),
:mod:`devkit.rig_boot` (booting a device from its spec, power cycles), :mod:`devkit.rig_state`
(devkit.json, known_hosts, device directories), :mod:`devkit.procs` and :mod:`devkit.files`.

Typical use::

    rig = Rig("/tmp/rig")
    rig.up(["fresh", "mfg", "notools", "notpm"])
    dev = rig.by_variant("mfg")
    dev.exec(["tpm2_getcap", "handles-persistent"], env=dev.tpm_env)
    client = dev.connect("admin")          # paramiko, known_hosts checked
    rig.down()

``Rig.load(dir)`` gives the same object in another process (what ``down`` and ``status``
use); ``Rig(dir).down()`` also cleans up after a run that crashed before writing anything.
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

from devkit import netns, services as services_mod, swtpm, userland, users, variants
from devkit.device import (STATE_BASE, Device, DevkitError, missing_requirements, state_supported,
                           wait_ssh_banner)
from devkit.files import unmount_under
from devkit.hollow import Hollow
from devkit.procs import stop_netns
from devkit.rig_boot import RigBoot
from devkit.rig_state import RigState

# what callers import from here (the device's names live in devkit.device)
__all__ = ["Rig", "Device", "DevkitError", "STATE_BASE", "missing_requirements", "state_supported",
           "wait_ssh_banner"]


class Rig(RigState, RigBoot):
    """A set of simulated devices sharing a directory, a bridge and a /24."""

    def __init__(self, dir, services=(), owner_pid=None):
        """``owner_pid``: set for throw-away rigs (pytest): once that process is gone,
        ``python -m devkit gc`` may remove the rig."""
        self.dir = os.path.abspath(dir)
        self.owner_pid = owner_pid
        self.slot: Optional[int] = None
        self.state = "down"
        self.service_names: List[str] = list(services)
        self.sections: Dict[str, dict] = {}
        self._devices: Dict[str, Device] = {}
        self._launchers: Dict[str, subprocess.Popen] = {}
        self._reserved: set = set()
        self._lock = threading.RLock()
        self._ca = swtpm.LocalCa(os.path.join(self.dir, "ca"))
        self._accounts = None
        self._userland_accounts: Dict[str, tuple] = {}
        self._keys: Dict[str, str] = {}
        self._services: Dict[str, object] = {}
        self.password: Optional[str] = None

    # ---- paths and simple properties

    @property
    def host_ip(self):
        """The host's address on the rig's bridge (where services listen)."""
        return netns.host_ip(self.slot) if self.slot is not None else None

    @property
    def devices(self):
        """Running devices, by index."""
        with self._lock:
            return sorted(self._devices.values(), key=lambda d: d.index)

    @property
    def ca_cert(self):
        """PEM of the CA that issued the mfg devices' EK certificates (None before any)."""
        return self._ca.issuer_cert if os.path.exists(self._ca.issuer_cert) else None

    def service(self, name):
        """The (single) instance of a registered service used by this rig."""
        with self._lock:
            if name not in self._services:
                self._services[name] = services_mod.load(name)
            return self._services[name]

    def device(self, name):
        """The device called ``name``."""
        with self._lock:
            try:
                return self._devices[name]
            except KeyError:
                raise DevkitError("no device %r in %s" % (name, self.dir)) from None

    def by_variant(self, variant):
        """The first device of a variant."""
        for dev in self.devices:
            if dev.variant == variant:
                return dev
        raise DevkitError("no %r device in %s" % (variant, self.dir))

    # ---- bring up

    def up(self, variant_names=("fresh",), services=None, timeout=60.0, hollow=0):
        """Claim a subnet, start services and one device per variant name (and ``hollow``
        hollow devices, see devkit/hollow); wait for SSH.

        On any failure (or Ctrl-C) everything started so far is torn down again.
        """
        if services is not None:
            self.service_names = list(services)
        bad = sorted({c for c in self.dir if c in ",:\\" or c.isspace()})
        if bad:
            # the path ends up in overlayfs mount options, which such characters break
            raise DevkitError("rig directory %r must not contain %r" % (self.dir, "".join(bad)))
        os.makedirs(self.dir, exist_ok=True)
        self._refuse_if_running()
        try:
            self._prepare_accounts()
            self.slot = netns.claim_slot(self.dir)
            self.state = "starting"
            self.write_json()
            for name in self.service_names:
                self.set_section(name, self.service(name).up(self))
            self.add_devices(list(variant_names), timeout=timeout)
            if hollow:
                self.add_hollow(hollow, timeout=timeout)
            self.state = "up"
            self.write_json()
        except BaseException:
            try:
                self.down()
            except DevkitError as exc:
                sys.stderr.write("devkit: cleanup after a failed up: %s\n" % exc)
            raise
        return self.devices

    def add_hollow(self, count, timeout=120.0):
        """Start ``count`` hollow devices (devkit/hollow) in the running rig; return them."""
        return Hollow(self).add(count, timeout=timeout)

    def _refuse_if_running(self):
        if os.path.exists(self.json_path) or netns.slots_owned_by(self.dir):
            raise DevkitError("a rig already exists in %s; run `python -m devkit down --dir %s`"
                              " first" % (self.dir, self.dir))

    def _prepare_accounts(self):
        if self._accounts is None:
            self._keys = users.ensure_keys(os.path.join(self.dir, "keys"))
            self.password = users.ensure_password(os.path.join(self.dir, "pwadmin.password"))
            self._accounts = users.build_accounts(self.password)

    def add_device(self, variant="fresh", timeout=60.0):
        """Start one more device of ``variant`` in the running rig; return it."""
        return self.add_devices([variant], timeout=timeout)[0]

    def add_devices(self, variant_names, timeout=60.0):
        """Start devices (in parallel) in the running rig; return them in order."""
        if self.slot is None:
            raise DevkitError("the rig in %s is not up" % self.dir)
        for name in variant_names:
            variants.resolve(name)  # fail early on a typo
        self._prepare_accounts()
        self.prepare_userlands(variant_names)
        with self._lock:
            taken = {d.index for d in self._devices.values()} | self._reserved
            indexes = []
            n = 1
            while len(indexes) < len(variant_names):
                if n not in taken:
                    indexes.append(n)
                n += 1
            self._reserved.update(indexes)
        deadline = time.monotonic() + timeout
        try:
            with ThreadPoolExecutor(max_workers=min(16, len(indexes)) or 1) as pool:
                futures = [pool.submit(self._start_device, i, v, deadline)
                           for i, v in zip(indexes, variant_names)]
                errors = [f.exception() for f in futures if f.exception() is not None]
        finally:
            with self._lock:
                self._reserved.difference_update(indexes)
        if errors:
            raise errors[0]
        return [f.result() for f in futures]

    @staticmethod
    def prepare_userlands(variant_names):
        """Build (once per machine, in parallel) the userlands these variants run on, before
        any device's start-up clock runs; return {name: root}."""
        names = {u for name in variant_names for u in variants.userlands(name)}
        if not names:
            return {}
        def log(msg):
            sys.stderr.write("devkit: %s\n" % msg)
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            roots = {n: pool.submit(userland.ensure, n, log) for n in sorted(names)}
        try:
            return {n: f.result() for n, f in roots.items()}
        except userland.UserlandError as exc:
            raise DevkitError(str(exc)) from exc

    # ---- tear down

    def remove_device(self, device):
        """Stop one device and forget it."""
        name = device.name if isinstance(device, Device) else device
        with self._lock:
            dev = self._devices.pop(name, None)
            launcher = self._launchers.pop(name, None)
        if dev is None:
            raise DevkitError("no device %r in %s" % (name, self.dir))
        self._kill_device(dev.netns, dev.pid, launcher)
        state = self._state_dir(name)
        if state:
            shutil.rmtree(state, ignore_errors=True)
        self.write_json()

    def down(self):
        """Stop services and devices; remove namespaces, interfaces and devkit.json.

        Works from any process and after a crash: it finds the rig's subnet in devkit.json
        or by the bridge's ifalias, and its namespaces by name. Idempotent.
        """
        errors = []
        with self._lock:
            doc = {}
            if os.path.exists(self.json_path):
                try:
                    with open(self.json_path, "r", encoding="utf-8") as f:
                        doc = json.load(f)
                except (OSError, ValueError) as exc:
                    errors.append("unreadable %s: %s" % (self.json_path, exc))
            for name in doc.get("services", self.service_names):
                try:
                    self.service(name).down(self, doc.get(name, self.sections.get(name, {})))
                except Exception as exc:  # noqa: BLE001 - keep tearing down the rest
                    errors.append("service %s: %s" % (name, exc))
            slots = set(netns.slots_owned_by(self.dir))
            for s in (doc.get("slot"), self.slot):
                if s is not None:
                    slots.add(s)
            pids = [d.get("pid") for d in doc.get("devices", []) if d.get("pid")]
            pids += [d.pid for d in self._devices.values() if d.pid]
            for slot in sorted(slots):
                if netns.existing_bridges().get(slot, self.dir) != self.dir:
                    errors.append("slot %d now belongs to another rig; left alone" % slot)
                    continue
                namespaces = netns.netns_of_slot(slot)
                stop_netns(namespaces, pids)
                for ns in namespaces:
                    try:
                        netns.delete_netns(ns)
                    except netns.NetError as exc:
                        errors.append(str(exc))
                for link in netns.links_of_slot(slot):
                    netns.delete_link(link)
            for launcher in self._launchers.values():
                try:
                    launcher.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    errors.append("launcher %d did not exit" % launcher.pid)
            self._launchers.clear()
            self._devices.clear()
            unmount_under(self.dir)
            shutil.rmtree(self._state_root, ignore_errors=True)
            for path in (self.json_path, self.known_hosts):
                if os.path.exists(path):
                    os.unlink(path)
            self.slot = None
            self.state = "down"
        if errors:
            raise DevkitError("down finished with errors: " + "; ".join(errors))
