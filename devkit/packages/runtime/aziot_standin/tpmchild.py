"""Child process that touches the TPM for the stand-in aziot-tpmd / aziot-identityd.

Run as ``PYTHON -I tpmchild.py`` with one JSON request on stdin; answers one JSON object on
stdout. Its stderr is kept apart so the parent can log tpm2-tss's own diagnostics
("WARNING:tcti:...") under aziot-tpmd, as the real service's journal shows them.

Requests:
- ``{"op": "probe", "tcti": T}`` opens and closes an ESAPI context on TCTI ``T``.
- ``{"op": "register", "tcti", "endpoint", "id_scope", "registration_id", "payload",
  "auth_key_index", "proxy", "devkit_root"}`` calls ``devkit.tpmclient.register`` (the devkit's
  device-side DPS TPM registration client) and returns its final registration state.

Answer: ``{"ok": true, ...}`` or ``{"ok": false, "stage": "tcti"|"client"|"register",
"error": text, "type": exception class name}``.
"""
import json
import os
import subprocess
import sys


def _load_client(devkit_root):
    """Import the devkit's TPM registration client from the checkout recorded at build time."""
    if devkit_root and devkit_root not in sys.path:
        sys.path.insert(0, devkit_root)
    from devkit import tpmclient  # pylint: disable=import-outside-toplevel
    return tpmclient


def probe(tcti):
    """Open the TCTI through ESAPI, as aziot-tpmd does when it starts serving. A device
    Python without tpm2-pytss (Debian 11's) asks the device's tpm2-tools instead, whose
    tpm2-tss prints the same diagnostics on stderr."""
    try:
        from tpm2_pytss import ESAPI  # pylint: disable=import-outside-toplevel
    except ImportError:
        ESAPI = None
    if ESAPI is not None:
        ctx = ESAPI(tcti)
        ctx.close()
        return
    proc = subprocess.run(["tpm2_getcap", "properties-fixed"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, TPM2TOOLS_TCTI=tcti), check=False)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError("Could not initialize TCTI with config '%s': tcti:IO failure" % tcti)


def handle(req):
    """Serve one request; never raises."""
    if req["op"] == "probe":
        try:
            probe(req["tcti"])
        except Exception as err:  # noqa: BLE001 - report any TSS/import failure to the parent
            return {"ok": False, "stage": "tcti", "error": str(err), "type": type(err).__name__}
        return {"ok": True}
    try:
        client = _load_client(req.get("devkit_root"))
    except Exception as err:  # noqa: BLE001 - missing module or tpm2-pytss
        return {"ok": False, "stage": "client", "error": str(err), "type": type(err).__name__}
    try:
        state = client.register(req["tcti"], req["endpoint"], req["id_scope"],
                                req["registration_id"], ca_bundle=None,
                                payload=req.get("payload"),
                                auth_key_index=req.get("auth_key_index", 0x100),
                                proxy=req.get("proxy"))
    except Exception as err:  # noqa: BLE001 - any client failure is a DPS client error
        return {"ok": False, "stage": "register", "error": str(err), "type": type(err).__name__}
    return {"ok": True, "state": state}


def main():
    """Read the request, answer on stdout."""
    req = json.load(sys.stdin)
    sys.stdout.write(json.dumps(handle(req), default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
