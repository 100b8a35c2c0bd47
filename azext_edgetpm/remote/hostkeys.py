"""Which host keys a connection trusts: unknown keys are refused unless the user opted in (trust
on first use, the key then appended to known_hosts), revoked and changed keys always.

paramiko gives the policy the keys it does not know; a changed key it raises as BadHostKeyException
(remote/connect.py turns it into changed_key_error). remote/known_hosts.py is the file's index.
"""
import base64
import os

import paramiko
from knack.log import get_logger

from azext_edgetpm.errors import DeviceError, LocalFileError, option

from .target import SshTarget

logger = get_logger(__name__)


def fingerprint(key) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko public key."""
    import hashlib
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuses unknown host keys unless the user opted in (trust on first use), in which case
    the key is appended to the known_hosts file. Changed keys never reach this policy: paramiko
    raises BadHostKeyException for them, and we always refuse those."""

    def __init__(self, accept_new: bool, known_hosts: str, target: SshTarget, index=None):
        self.accept_new = accept_new
        self.known_hosts = known_hosts
        self.target = target
        self.index = index          # remote.known_hosts.KnownHosts: the run's shared index of the file

    def is_revoked(self, key) -> bool:
        return self.index is not None and self.index.is_revoked(key)

    def missing_host_key(self, client, hostname, key):
        fp = fingerprint(key)
        if self.is_revoked(key):
            raise DeviceError(
                f"The host key of {self.target.display} ({key.get_name()} {fp}) is marked @revoked in "
                f"{self.known_hosts}; refusing to connect.",
                "A revoked key is never accepted: the device must get a new host key (ssh-keygen -A after "
                "removing the old one), which you then add to known_hosts.")
        if not self.accept_new:
            raise DeviceError(
                f"The host key of {self.target.display} is not known ({key.get_name()} {fp}); "
                f"refusing to connect.",
                f"Check the fingerprint with the device's owner (ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{_short_type(key)}_key.pub on the device), then add it to "
                f"{self.known_hosts} (e.g. ssh-keyscan -p {self.target.port} {self.target.hostname} >> "
                f"{self.known_hosts}), or re-run with {option('accept_new_host_key')} to trust it on first use.")
        client.get_host_keys().add(hostname, key.get_name(), key)
        if self.index is not None:
            self.index.add_new(hostname, key)     # once, under a lock, shared with the other workers
        else:
            _append_known_host(self.known_hosts, hostname, key)
        logger.warning("Trusting new host key of %s (%s %s); recorded in %s.",
                       self.target.display, key.get_name(), fp, self.known_hosts)


def changed_key_error(target: SshTarget, known_hosts: str, exc) -> DeviceError:
    """The error for a host key that differs from the one known_hosts records (paramiko's
    BadHostKeyException): always refused."""
    return DeviceError(
        f"The host key of {target.display} has CHANGED: it offered {exc.key.get_name()} "
        f"{fingerprint(exc.key)}, but {known_hosts} records {fingerprint(exc.expected_key)}. "
        "Someone may be intercepting the connection, or the device was reinstalled; "
        "refusing to connect.",
        f"If the change is expected, remove the old key with `ssh-keygen -R "
        f"{target.known_hosts_name} -f {known_hosts}` and connect again "
        f"(with {option('accept_new_host_key')} to record the new one).")


def _short_type(key) -> str:
    name = key.get_name()
    if "ed25519" in name:
        return "ed25519"
    if "ecdsa" in name:
        return "ecdsa"
    return "rsa"


def _append_known_host(path: str, hostname: str, key) -> None:
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as handle:
            handle.write(line)
    except OSError as exc:
        raise LocalFileError(f"Cannot record the new host key in {path}: {exc}",
                             f"Point {option('known_hosts')} at a writable file.") from exc
