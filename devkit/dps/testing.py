"""Test helpers around the emulator: a host-side software TPM and a small service API client.

``SoftTpm`` runs ``swtpm socket`` on two free loopback ports with a private state directory and
provisions it like a device ready for DPS: EK at 0x81010001 (``tpm2_createek``), SRK at
0x81000001 (``tpm2_createprimary -C o`` + ``tpm2_evictcontrol``), transient objects flushed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, Optional

from . import sas

SRK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt"


def free_port_pair() -> int:
    """A port P with P and P+1 free on 127.0.0.1 (swtpm's server and control ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair found")


class SoftTpm:
    """A swtpm process with EK and SRK, for tests on the host."""

    def __init__(self, directory: Optional[str] = None):
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="softtpm-")
        self.port = 0
        self._proc: Optional[subprocess.Popen] = None
        self.ek_pub = b""

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def ek_b64(self) -> str:
        """The EK as DPS wants it: base64 of the marshalled TPM2B_PUBLIC."""
        return base64.b64encode(self.ek_pub).decode("ascii")

    @property
    def registration_id(self) -> str:
        """The documented registration ID: hex SHA-256 of the marshalled EK."""
        return hashlib.sha256(self.ek_pub).hexdigest()

    def _tools(self, *argv: str) -> None:
        env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti)
        subprocess.run(argv, check=True, env=env, cwd=self.directory,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)

    def start(self) -> "SoftTpm":
        state = os.path.join(self.directory, "state")
        os.makedirs(state, exist_ok=True)
        self.port = free_port_pair()
        self._proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
             "--tpmstate", f"dir={state}", "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("swtpm did not start")
                time.sleep(0.02)
        self._tools("tpm2_createek", "-c", "0x81010001", "-G", "rsa", "-u", "ek.pub")
        # the SRK template of Microsoft's device SDKs and of az edge-tpm (noDA)
        self._tools("tpm2_createprimary", "-C", "o", "-a", SRK_ATTRIBUTES, "-c", "srk.ctx")
        self._tools("tpm2_evictcontrol", "-C", "o", "-c", "srk.ctx", "0x81000001")
        self._tools("tpm2_flushcontext", "-t")
        with open(os.path.join(self.directory, "ek.pub"), "rb") as f:
            self.ek_pub = f.read()
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "SoftTpm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def other_endorsement_key(ek_pub: bytes) -> str:
    """A well-formed EK (same template) of some other TPM: the modulus replaced by random bytes."""
    from tpm2_pytss.types import TPM2B_PUBLIC  # local: only tests need it

    pub, _ = TPM2B_PUBLIC.unmarshal(ek_pub)
    size = len(bytes(pub.publicArea.unique.rsa))
    pub.publicArea.unique.rsa = secrets.token_bytes(size - 1) + b"\x01"
    return base64.b64encode(pub.marshal()).decode("ascii")


class ServiceClient:
    """A tiny DPS service API client for tests (requests, SAS from a policy, explicit CA)."""

    def __init__(self, base_url: str, ca_bundle: str, host: str, key_b64: str, key_name: str):
        import requests  # local: the device side never needs it

        self.base_url = base_url.rstrip("/")
        self.verify = ca_bundle
        self.host = host
        self.key_b64 = key_b64
        self.key_name = key_name
        self.session = requests.Session()
        self.token: Optional[str] = None  # a bearer token instead of SAS when set

    def headers(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        auth = f"Bearer {self.token}" if self.token else sas.generate(self.host, self.key_b64, self.key_name)
        return {"Authorization": auth, **(extra or {})}

    def call(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
             api_version: str = "2021-10-01"):
        sep = "&" if "?" in path else "?"
        return self.session.request(method, f"{self.base_url}{path}{sep}api-version={api_version}",
                                    json=body, headers=self.headers(headers), verify=self.verify, timeout=30)

    @classmethod
    def for_emulator(cls, emu, policy: str = "provisioningserviceowner") -> "ServiceClient":
        p = emu.policies[policy]
        return cls(emu.url, emu.ca_bundle, emu.service_host, p.primary_key_b64, p.name)


def resolving_prefix(names, address: str, directory: str) -> list:
    """argv prefix that runs a command in a private mount namespace whose /etc/hosts (a bind
    mount of a copy, with ``names`` -> ``address`` added) makes the hubs' host names resolve to
    the emulator's hub listener. The machine's own /etc/hosts is never changed. Needs root
    (``unshare --mount``), as the rest of the dev kit does."""
    with open("/etc/hosts", encoding="utf-8") as f:
        hosts = f.read()
    path = os.path.join(directory, "hosts")
    with open(path, "w", encoding="utf-8") as f:
        f.write(hosts.rstrip("\n") + "\n" + "".join(f"{address} {name}\n" for name in names))
    os.chmod(path, 0o644)
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', path]
