"""Device-side DPS registration with TPM attestation (stdlib HTTP + tpm2-pytss ESAPI, or the
device's tpm2-tools where tpm2-pytss is missing, e.g. on Debian 11: :mod:`devkit.tpmtools`).

This is what the IoT Edge identity service does on a device, in Python, so the devkit can
prove the DPS emulator's challenge against a real (software) TPM and the stand-in runtime can
register a simulated device::

    state = register("swtpm:host=127.0.0.1,port=2321", "https://10.200.0.1:8443",
                     "0ne0001A2B3", "my-device", ca_bundle="/path/ca.pem")

Flow: read the EK (0x81010001) and SRK (0x81000001), which must exist; PUT register without
auth -> 401 ``authenticationKey``; PolicySecret(ENDORSEMENT) session; ActivateCredential
yields W; Import the HMAC key under the SRK with W as inner wrap key; Load; persist at
0x81000000 + ``auth_key_index`` (an old key there is evicted first); HMAC the SAS string inside
the TPM; PUT with the SAS -> 202 operation; poll honouring Retry-After until the status is
``assigned``, ``failed`` or ``disabled``.

``register`` returns the final ``registrationState`` for those three statuses and raises
:class:`DpsRequestError` when DPS refuses a request (for example 401 for an unknown
registration or an EK that does not match the enrollment), :class:`TpmClientError` for TPM and
transport failures. Tokens and keys are never printed.

CLI: ``python -m devkit.tpmclient register --tcti T --endpoint URL --id-scope S
--registration-id R [--ca-bundle F] [--payload FILE] [--auth-key-index N]`` prints the state as
JSON; exit status 0 when assigned, 2 when failed/disabled, 1 on errors.
"""

from __future__ import annotations

import argparse
import base64
import errno
import http.client
import json
import socket
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

try:
    from tpm2_pytss import ESAPI
    from tpm2_pytss.TSS2_Exception import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HR, TPM2_RC, TPM2_SE
    from tpm2_pytss.types import (
        TPM2B_DATA,
        TPM2B_ENCRYPTED_SECRET,
        TPM2B_ID_OBJECT,
        TPM2B_PRIVATE,
        TPM2B_PUBLIC,
        TPMT_SYM_DEF,
        TPMT_SYM_DEF_OBJECT,
        TPMU_SYM_KEY_BITS,
        TPMU_SYM_MODE,
    )
except ImportError:  # a device Python without tpm2-pytss: the TPM goes through tpm2-tools
    ESAPI = None

try:
    from devkit import tpmtools
except ImportError:  # run as a script from the devkit directory
    import tpmtools  # type: ignore[no-redef]

API_VERSION = "2021-06-01"
EK_HANDLE = 0x81010001
SRK_HANDLE = 0x81000001
AUTH_KEY_BASE = 0x81000000
DEFAULT_AUTH_KEY_INDEX = 0x100
TERMINAL = ("assigned", "failed", "disabled")
SAS_TTL_S = 3600
MAX_SLEEP_S = 30.0


class TpmClientError(Exception):
    """A TPM, transport or protocol failure on the device side."""


class DpsRequestError(TpmClientError):
    """DPS answered a request with an error (``errorCode``/``message`` from its body)."""

    def __init__(self, status: int, body: Any, what: str):
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.error_code = self.body.get("errorCode")
        self.message = self.body.get("message") or self.body.get("errorMessage") or str(body)
        super().__init__(f"{what}: HTTP {status} errorCode={self.error_code}: {self.message}")


@dataclass
class AuthenticationKey:
    """The parts of DPS's ``authenticationKey`` blob, in order."""

    credential_blob: TPM2B_ID_OBJECT
    ek_secret: TPM2B_ENCRYPTED_SECRET
    duplicate: TPM2B_PRIVATE
    import_seed: TPM2B_ENCRYPTED_SECRET
    public: TPM2B_PUBLIC


def parse_authentication_key(b64: str) -> AuthenticationKey:
    """Split TPM2B_ID_OBJECT || TPM2B_ENCRYPTED_SECRET || TPM2B_PRIVATE || TPM2B_ENCRYPTED_SECRET
    || TPM2B_PUBLIC || encUriData. The last field (a 2-byte size, then opaque bytes: 108-154 from
    real DPS, which no client uses) is read and dropped, as Microsoft's device SDKs do; it may be
    missing. Anything after it is refused."""
    try:
        buf = base64.b64decode(b64, validate=True)
        parts = []
        for cls in (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET, TPM2B_PRIVATE, TPM2B_ENCRYPTED_SECRET, TPM2B_PUBLIC):
            obj, used = cls.unmarshal(buf)
            parts.append(obj)
            buf = buf[used:]
    except (ValueError, TSS2_Exception) as exc:
        raise TpmClientError(f"malformed authenticationKey from DPS: {exc}") from exc
    if buf:
        # TPM2B_DATA of tpm2-pytss holds at most 64 bytes: read the size by hand.
        size = int.from_bytes(buf[:2], "big") if len(buf) >= 2 else -1
        if size < 0 or len(buf) != 2 + size:
            raise TpmClientError("malformed encUriData at the end of the authenticationKey")
    return AuthenticationKey(*parts)


class Tpm:
    """The few ESAPI operations registration needs, on one TCTI connection."""

    def __init__(self, tcti: str):
        try:
            self.ectx = ESAPI(tcti)
        except TSS2_Exception as exc:
            raise TpmClientError(f"cannot open the TPM through '{tcti}': {exc}") from exc

    def close(self) -> None:
        self.ectx.close()

    def __enter__(self) -> "Tpm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def persistent(self, handle: int, what: str) -> Tuple[ESYS_TR, bytes]:
        """ESYS_TR and marshalled public area of an existing persistent key."""
        try:
            tr = self.ectx.tr_from_tpmpublic(handle)
            public, _, _ = self.ectx.read_public(tr)
        except TSS2_Exception as exc:
            raise TpmClientError(
                f"no {what} at {handle:#010x} (provision it first, e.g. tpm2_createek / "
                f"tpm2_createprimary + tpm2_evictcontrol): {exc}"
            ) from exc
        return tr, public.marshal()

    @staticmethod
    def parse_authentication_key(blob: bytes) -> AuthenticationKey:
        """The challenge's parts as ESAPI takes them."""
        return parse_authentication_key(base64.b64encode(blob).decode("ascii"))

    def flush_transient_objects(self) -> int:
        """Flush the transient objects this connection can see; returns how many.

        With a resource manager a client sees only its own objects (none here). On a direct
        swtpm connection they are orphans of earlier processes (tpm2_createprimary leaves its
        key loaded), which fill the TPM's few object slots.
        """
        _, data = self.ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HR.TRANSIENT, 64)
        count = 0
        for handle in data.data.handles:
            try:
                self.ectx.flush_context(self.ectx.tr_from_tpmpublic(handle))
                count += 1
            except TSS2_Exception:
                pass  # gone meanwhile
        return count

    def import_authentication_key(self, key: AuthenticationKey, ek: ESYS_TR, srk: ESYS_TR,
                                  persistent_handle: int, log: Callable[[str], None] = lambda m: None) -> ESYS_TR:
        """As :meth:`_import_authentication_key`; when the TPM is out of object slots, flush
        orphaned transient objects once and retry."""
        try:
            return self._import_authentication_key(key, ek, srk, persistent_handle)
        except TpmClientError as exc:
            cause = exc.__cause__
            if not isinstance(cause, TSS2_Exception) or (cause.rc & 0xFFF) != TPM2_RC.OBJECT_MEMORY:
                raise
        flushed = self.flush_transient_objects()
        log(f"TPM out of object memory: flushed {flushed} orphaned transient object(s), retrying")
        return self._import_authentication_key(key, ek, srk, persistent_handle)

    def _import_authentication_key(self, key: AuthenticationKey, ek: ESYS_TR, srk: ESYS_TR,
                                   persistent_handle: int) -> ESYS_TR:
        """ActivateCredential -> Import under the SRK -> Load -> EvictControl to the handle."""
        ectx = self.ectx
        session = None
        try:
            session = ectx.start_auth_session(
                tpm_key=ESYS_TR.NONE, bind=ESYS_TR.NONE, session_type=TPM2_SE.POLICY,
                symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), auth_hash=TPM2_ALG.SHA256,
            )
            ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            inner_key = ectx.activate_credential(
                srk, ek, key.credential_blob, key.ek_secret,
                session1=ESYS_TR.PASSWORD, session2=session,
            )
        except TSS2_Exception as exc:
            raise TpmClientError(f"ActivateCredential failed (is DPS's EK this TPM's EK?): {exc}") from exc
        finally:
            if session is not None:
                try:
                    ectx.flush_context(session)
                except TSS2_Exception:
                    pass  # a session the TPM already closed
        symdef = TPMT_SYM_DEF_OBJECT(
            algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(sym=128), mode=TPMU_SYM_MODE(sym=TPM2_ALG.CFB)
        )
        try:
            private = ectx.import_(srk, TPM2B_DATA(bytes(inner_key)), key.public, key.duplicate,
                                   key.import_seed, symdef)
            loaded = ectx.load(srk, private, key.public)
        except TSS2_Exception as exc:
            raise TpmClientError(f"importing the DPS authentication key failed: {exc}") from exc
        try:
            self.evict(persistent_handle)
            return ectx.evict_control(ESYS_TR.OWNER, loaded, persistent_handle)
        except TSS2_Exception as exc:
            raise TpmClientError(
                f"persisting the authentication key at {persistent_handle:#010x} failed: {exc}") from exc
        finally:
            ectx.flush_context(loaded)

    def evict(self, persistent_handle: int) -> bool:
        """Remove a persistent object; False when there was none."""
        try:
            old = self.ectx.tr_from_tpmpublic(persistent_handle)
        except TSS2_Exception:
            return False
        self.ectx.evict_control(ESYS_TR.OWNER, old, persistent_handle)
        return True

    def hmac_sha256(self, key: ESYS_TR, data: bytes) -> bytes:
        try:
            return bytes(self.ectx.hmac(key, data, TPM2_ALG.SHA256))
        except TSS2_Exception as exc:
            raise TpmClientError(f"TPM HMAC failed: {exc}") from exc


def sas_token(id_scope: str, registration_id: str, sign: Callable[[bytes], bytes],
              ttl: int = SAS_TTL_S, now: Optional[float] = None) -> str:
    """``SharedAccessSignature sr=<scope>/registrations/<id>&sig=..&se=..&skn=registration``,
    with ``sr`` in lower case and its slashes kept; the HMAC is over ``"<sr>\\n<expiry>"``."""
    expiry = int((now if now is not None else time.time()) + ttl)
    sr = f"{id_scope}/registrations/{registration_id}".lower()
    sig = base64.b64encode(sign(f"{sr}\n{expiry}".encode("utf-8"))).decode("ascii")
    return (f"SharedAccessSignature sr={urllib.parse.quote(sr, safe='/')}"
            f"&sig={urllib.parse.quote(sig, safe='')}&se={expiry}&skn=registration")


class DeviceHttp:
    """HTTPS to the DPS device endpoint with a keep-alive connection and retry of 429/503."""

    def __init__(self, endpoint: str, ca_bundle: Optional[str] = None, timeout: float = 30.0,
                 deadline: Optional[float] = None, log: Callable[[str], None] = lambda m: None,
                 proxy: Optional[str] = None):
        url = urllib.parse.urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        if url.scheme != "https":
            raise TpmClientError("the DPS endpoint must be https")
        self.host = url.hostname or ""
        self.port = url.port or 443
        self.proxy = parse_proxy(proxy) if proxy else None
        self.prefix = url.path.rstrip("/")
        self.context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
        self.timeout = timeout
        self.deadline = deadline
        self.log = log
        self._conn: Optional[http.client.HTTPSConnection] = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _sleep(self, seconds: float) -> None:
        seconds = min(max(seconds, 0.0), MAX_SLEEP_S)
        if self.deadline is not None and time.monotonic() + seconds > self.deadline:
            raise TpmClientError("timed out waiting for DPS")
        time.sleep(seconds)

    def _once(self, method: str, path: str, body: Optional[bytes], headers: Dict[str, str]):
        if self._conn is None:
            if self.proxy:
                # CONNECT through the HTTP proxy; TLS with DPS inside the tunnel.
                phost, pport, auth = self.proxy
                self._conn = http.client.HTTPSConnection(phost, pport, context=self.context, timeout=self.timeout)
                self._conn.set_tunnel(self.host, self.port,
                                      headers={"Proxy-Authorization": auth} if auth else None)
            else:
                self._conn = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                                         timeout=self.timeout)
        self._conn.request(method, path, body=body, headers=headers)
        resp = self._conn.getresponse()
        data = resp.read()
        if (resp.getheader("Connection") or "").lower() == "close":
            self.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def request(self, method: str, path: str, body: Any = None,
                authorization: Optional[str] = None, attempts: int = 8) -> Tuple[int, Dict[str, str], Any]:
        """Send JSON, get (status, headers, parsed JSON or None). 429/503 and dropped
        connections are retried, honouring Retry-After."""
        full = f"{self.prefix}{path}?api-version={API_VERSION}"
        payload = json.dumps(body).encode("utf-8") if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": "devkit-tpmclient/1.0"}
        if payload is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        if authorization:
            headers["Authorization"] = authorization
        last_error = "no attempt made"
        for attempt in range(1, attempts + 1):
            try:
                status, rheaders, data = self._once(method, full, payload, headers)
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise TpmClientError(f"TLS verification of {self.host} failed (wrong CA bundle?): {exc}") from exc
            except (http.client.HTTPException, ConnectionError, socket.timeout, OSError) as exc:
                self.close()
                if str(exc).startswith("Tunnel connection failed"):
                    raise TpmClientError(f"the proxy refused CONNECT {self.host}:{self.port}: {exc}") from exc
                if getattr(exc, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                    raise TpmClientError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
                last_error = f"{type(exc).__name__}: {exc}"
                self.log(f"{method} {path}: {last_error}; retrying")
                self._sleep(min(2 ** attempt * 0.25, 5))
                continue
            try:
                parsed = json.loads(data.decode("utf-8")) if data.strip() else None
            except ValueError:
                parsed = data.decode("utf-8", "replace")
            if status in (429, 503) and attempt < attempts:
                wait = _retry_after(rheaders, default=2.0)
                last_error = f"HTTP {status}"
                self.log(f"{method} {path}: HTTP {status}, retrying after {wait:g}s")
                self._sleep(wait)
                continue
            return status, rheaders, parsed
        raise TpmClientError(f"{method} {path} failed after {attempts} attempts: {last_error}")


def parse_proxy(url: str) -> Tuple[str, int, Optional[str]]:
    """(host, port, Proxy-Authorization value or None) of an http://[user:password@]host:port
    proxy URL, as the identity service accepts it; TpmClientError("invalid proxy uri") else."""
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port or 80
    except ValueError as exc:
        raise TpmClientError(f"invalid proxy uri: {exc}") from exc
    if parsed.scheme != "http" or not parsed.hostname:
        raise TpmClientError("invalid proxy uri (an http://host:port URL is expected)")
    auth = None
    if parsed.username is not None:
        pair = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return parsed.hostname, port, auth


def _retry_after(headers: Dict[str, str], default: float) -> float:
    try:
        return float(headers.get("retry-after", default))
    except ValueError:
        return default


def open_tpm(tcti: str):
    """The TPM through tpm2-pytss when this Python has it, else through tpm2-tools."""
    if ESAPI is not None:
        return Tpm(tcti)
    return tpmtools.ToolsTpm(tcti, error=TpmClientError)


def register(tcti: str, endpoint: str, id_scope: str, registration_id: str, ca_bundle: Optional[str] = None,
             payload: Any = None, auth_key_index: int = DEFAULT_AUTH_KEY_INDEX, *, timeout: float = 120.0,
             log: Callable[[str], None] = lambda m: None, proxy: Optional[str] = None) -> Dict[str, Any]:
    """Register this TPM's device with DPS; return the final ``registrationState``.

    The state's ``status`` is ``assigned`` (with ``assignedHub`` and ``deviceId``), ``failed`` or
    ``disabled`` (with ``errorCode``/``errorMessage`` where DPS gives them).
    """
    deadline = time.monotonic() + timeout
    base = f"/{urllib.parse.quote(id_scope, safe='')}/registrations/{urllib.parse.quote(registration_id, safe='')}"
    persistent_handle = AUTH_KEY_BASE + auth_key_index
    web = DeviceHttp(endpoint, ca_bundle, deadline=deadline, log=log, proxy=proxy)
    try:
        with open_tpm(tcti) as tpm:
            ek, ek_public = tpm.persistent(EK_HANDLE, "endorsement key")
            srk, srk_public = tpm.persistent(SRK_HANDLE, "storage root key")
            body: Dict[str, Any] = {
                "registrationId": registration_id,
                "tpm": {
                    "endorsementKey": base64.b64encode(ek_public).decode("ascii"),
                    "storageRootKey": base64.b64encode(srk_public).decode("ascii"),
                },
            }
            if payload is not None:
                body["payload"] = payload
            status, _, answer = web.request("PUT", base + "/register", body)
            if status != 401 or not isinstance(answer, dict) or "authenticationKey" not in answer:
                raise DpsRequestError(status, answer, "TPM challenge request")
            log("received the TPM challenge; activating the credential")
            try:
                blob = base64.b64decode(answer["authenticationKey"], validate=True)
            except (ValueError, TypeError) as exc:
                raise TpmClientError(f"malformed authenticationKey from DPS: {exc}") from exc
            key = tpm.parse_authentication_key(blob)
            auth_key = tpm.import_authentication_key(key, ek, srk, persistent_handle, log)
            log(f"authentication key persisted at {persistent_handle:#010x}")
            token = sas_token(id_scope, registration_id, lambda msg: tpm.hmac_sha256(auth_key, msg))
        second = {"registrationId": registration_id}
        if payload is not None:
            second["payload"] = payload
        status, headers, answer = web.request("PUT", base + "/register", second, authorization=token)
        if status not in (200, 202) or not isinstance(answer, dict):
            raise DpsRequestError(status, answer, "registration request")
        return _poll(web, base, token, status, headers, answer, log)
    finally:
        web.close()


def _poll(web: DeviceHttp, base: str, token: str, status: int, headers: Dict[str, str],
          answer: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, Any]:
    op_id = answer.get("operationId")
    while answer.get("status") not in TERMINAL:
        if not op_id:
            raise TpmClientError(f"DPS answered without an operationId: {answer}")
        wait = _retry_after(headers, default=3.0)
        log(f"status {answer.get('status')}; polling again in {wait:g}s")
        web._sleep(wait)
        status, headers, answer = web.request("GET", f"{base}/operations/{urllib.parse.quote(op_id, safe='')}",
                                              authorization=token)
        if status not in (200, 202) or not isinstance(answer, dict):
            raise DpsRequestError(status, answer, "operation status request")
    state = dict(answer.get("registrationState") or {})
    state.setdefault("status", answer["status"])
    state.pop("tpm", None)  # the authenticationKey again; already imported
    return state


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m devkit.tpmclient", description="DPS TPM registration client")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("register", help="register this TPM with DPS")
    r.add_argument("--tcti", required=True, help="e.g. swtpm:host=127.0.0.1,port=2321")
    r.add_argument("--endpoint", required=True, help="DPS device endpoint, e.g. https://10.200.0.1:8443")
    r.add_argument("--id-scope", required=True)
    r.add_argument("--registration-id", required=True)
    r.add_argument("--ca-bundle", help="PEM file of CAs to trust for the endpoint")
    r.add_argument("--payload", help="JSON file sent as the registration payload")
    r.add_argument("--auth-key-index", type=lambda v: int(v, 0), default=DEFAULT_AUTH_KEY_INDEX,
                   help="persist the key at 0x81000000 + N (default 0x100)")
    r.add_argument("--timeout", type=float, default=120.0)
    r.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = p.parse_args(argv)
    payload = None
    if args.payload:
        with open(args.payload, encoding="utf-8") as f:
            payload = json.load(f)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else (lambda m: None)
    try:
        state = register(args.tcti, args.endpoint, args.id_scope, args.registration_id, args.ca_bundle,
                         payload, args.auth_key_index, timeout=args.timeout, log=log)
    except DpsRequestError as exc:
        print(json.dumps({"error": str(exc), "status": exc.status, "errorCode": exc.error_code,
                          "message": exc.message}))
        return 1
    except TpmClientError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(state, indent=2))
    return 0 if state.get("status") == "assigned" else 2


if __name__ == "__main__":
    sys.exit(_main())
