"""The TPM operations of DPS registration done with the device's tpm2-tools (standard library
only), for devices whose Python has no tpm2-pytss (Debian 11's Python 3.9 with tpm2-tss 3.0).

Same interface as :class:`devkit.tpmclient.Tpm`; works with tpm2-tools 5.0 (Debian 11) and
later. Every tool runs with ``TPM2TOOLS_TCTI`` set to the TCTI, in a private temporary
directory removed afterwards. Formats the tools read and write (checked against 5.0):

- ``tpm2_readpublic -o``, ``tpm2_import -u/-i/-r``: marshalled TPM2B_PUBLIC / TPM2B_PRIVATE;
- ``tpm2_activatecredential -i``: the tools' credential file, ``0xBADCC0DE``, version 1, then
  the marshalled TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET;
- ``tpm2_import -s``: the marshalled TPM2B_ENCRYPTED_SECRET; ``-k``: the raw inner
  wrapping key (AES-128, CFB, as DPS uses).
"""
import os
import shutil
import struct
import subprocess
import tempfile
from typing import Callable, List, Tuple

CREDENTIAL_MAGIC = 0xBADCC0DE
CREDENTIAL_VERSION = 1
# tpm2-tools print the TPM's response code as "...(0x902)..."; TPM_RC_OBJECT_MEMORY is 0x902.
OBJECT_MEMORY = "0x902"


class ToolsError(Exception):
    """A tpm2-tools command failed (its stderr in the message)."""


def split_tpm2b(data: bytes, count: int) -> Tuple[List[bytes], bytes]:
    """``count`` size-prefixed TPM2B structures (each with its size) and the rest."""
    parts = []
    for _ in range(count):
        if len(data) < 2:
            raise ValueError("truncated TPM2B structure")
        (size,) = struct.unpack(">H", data[:2])
        if len(data) < 2 + size:
            raise ValueError("TPM2B structure longer than the data")
        parts.append(data[:2 + size])
        data = data[2 + size:]
    return parts, data


def split_authentication_key(blob: bytes, error: Callable[[str], Exception] = ToolsError) -> List[bytes]:
    """TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET, TPM2B_PRIVATE, TPM2B_ENCRYPTED_SECRET,
    TPM2B_PUBLIC; then encUriData (a size, then opaque bytes no client uses; it may be missing)
    is read and dropped, as in :func:`devkit.tpmclient.parse_authentication_key`."""
    try:
        parts, rest = split_tpm2b(blob, 5)
        if rest:
            _, rest = split_tpm2b(rest, 1)
    except ValueError as exc:
        raise error("malformed authenticationKey from DPS: %s" % exc) from exc
    if rest:
        raise error("malformed encUriData at the end of the authenticationKey")
    return parts


class ToolsTpm:
    """The few TPM operations registration needs, each one tpm2-tools command."""

    def __init__(self, tcti: str, error: Callable[[str], Exception] = ToolsError):
        self.tcti = tcti
        self.error = error
        self.dir = tempfile.mkdtemp(prefix="tpmtools-")
        if shutil.which("tpm2_readpublic") is None:
            self.close()
            raise self.error("tpm2-tools is not installed")
        self.run("tpm2_getcap", "properties-fixed", what="cannot open the TPM through '%s'" % tcti)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "ToolsTpm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self, name: str, data: bytes) -> str:
        path = self.path(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def read(self, name: str) -> bytes:
        with open(self.path(name), "rb") as f:
            return f.read()

    def run(self, *argv: str, what: str) -> str:
        env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti)
        proc = subprocess.run(list(argv), cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = "; ".join(line.strip() for line in proc.stderr.splitlines() if line.strip())
            raise self.error("%s: %s failed: %s" % (what, argv[0], detail or "exit %d" % proc.returncode))
        return proc.stdout

    def persistent(self, handle: int, what: str) -> Tuple[str, bytes]:
        """The handle (as tpm2-tools takes it) and marshalled public area of a persistent key."""
        name = "%08x.pub" % handle
        self.run("tpm2_readpublic", "-Q", "-c", "%#010x" % handle, "-o", name,
                 what="no %s at %#010x (provision it first, e.g. tpm2_createek / tpm2_createprimary"
                      " + tpm2_evictcontrol)" % (what, handle))
        return "%#010x" % handle, self.read(name)

    def parse_authentication_key(self, blob: bytes) -> List[bytes]:
        """The challenge's five parts (see :func:`split_authentication_key`)."""
        return split_authentication_key(blob, self.error)

    def import_authentication_key(self, key: List[bytes], ek: str, srk: str, persistent_handle: int,
                                  log: Callable[[str], None] = lambda m: None) -> str:
        """As :meth:`_import`; when the TPM is out of object slots, flush transient objects
        (orphans of earlier tools on a TPM without resource manager) once and retry."""
        try:
            return self._import(key, ek, srk, persistent_handle)
        except Exception as exc:  # noqa: BLE001 - the error type is the caller's
            if OBJECT_MEMORY not in str(exc):
                raise
        self.run("tpm2_flushcontext", "-t", what="flushing transient objects")
        log("TPM out of object memory: flushed orphaned transient objects, retrying")
        return self._import(key, ek, srk, persistent_handle)

    def _import(self, key: List[bytes], ek: str, srk: str, persistent_handle: int) -> str:
        """ActivateCredential -> Import under the SRK -> Load -> EvictControl to the handle."""
        credential_blob, ek_secret, duplicate, import_seed, public = key
        self.write("cred.blob", struct.pack(">II", CREDENTIAL_MAGIC, CREDENTIAL_VERSION)
                   + credential_blob + ek_secret)
        self.run("tpm2_startauthsession", "--policy-session", "-S", "session.ctx",
                 what="ActivateCredential failed")
        try:
            self.run("tpm2_policysecret", "-S", "session.ctx", "-c", "e",
                     what="ActivateCredential failed")
            self.run("tpm2_activatecredential", "-c", srk, "-C", ek, "-i", "cred.blob",
                     "-o", "inner.key", "-P", "session:session.ctx",
                     what="ActivateCredential failed (is DPS's EK this TPM's EK?)")
        finally:
            try:
                self.run("tpm2_flushcontext", "session.ctx", what="flushing the policy session")
            except Exception:  # noqa: BLE001 - a session the TPM already closed
                pass
        self.write("dup.pub", public)
        self.write("dup.priv", duplicate)
        self.write("dup.seed", import_seed)
        what = "importing the DPS authentication key failed"
        self.run("tpm2_import", "-C", srk, "-u", "dup.pub", "-i", "dup.priv", "-s", "dup.seed",
                 "-k", "inner.key", "-r", "key.priv", what=what)
        self.run("tpm2_load", "-Q", "-C", srk, "-u", "dup.pub", "-r", "key.priv", "-c", "key.ctx",
                 what=what)
        handle = "%#010x" % persistent_handle
        what = "persisting the authentication key at %s failed" % handle
        try:
            self.evict(persistent_handle)
            self.run("tpm2_evictcontrol", "-Q", "-C", "o", "-c", "key.ctx", handle, what=what)
        finally:
            try:
                self.run("tpm2_flushcontext", "key.ctx", what="flushing the loaded key")
            except Exception:  # noqa: BLE001 - already gone
                pass
        return handle

    def evict(self, persistent_handle: int) -> bool:
        """Remove a persistent object; False when there was none."""
        handle = "%#010x" % persistent_handle
        try:
            self.run("tpm2_readpublic", "-Q", "-c", handle, what="reading %s" % handle)
        except Exception:  # noqa: BLE001 - nothing there
            return False
        self.run("tpm2_evictcontrol", "-Q", "-C", "o", "-c", handle,
                 what="evicting the old key at %s" % handle)
        return True

    def hmac_sha256(self, key: str, data: bytes) -> bytes:
        self.write("hmac.in", data)
        self.run("tpm2_hmac", "-c", key, "-g", "sha256", "-o", "hmac.out", "hmac.in",
                 what="TPM HMAC failed")
        return self.read("hmac.out")
