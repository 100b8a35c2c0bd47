"""Host-side preparation of software TPM state for simulated devices.

A ``fresh`` device's swtpm starts from an empty state directory (new seeds, no EK). A
``mfg`` device gets a state made beforehand on the host by ``swtpm_setup``, like a TPM
provisioned by its manufacturer: EK persisted at 0x81010001, EK certificate in NV
0x01C00002 (and a platform certificate), NV locked. The certificates are issued by a small
CA private to the rig (``DIR/ca``), never the machine's ``/var/lib/swtpm-localca``.

``--allow-signing`` is deliberately NOT used: a signing EK makes ActivateCredential fail
(TPM error 0x101), which breaks DPS attestation.
"""
import os
import subprocess
import threading

SWTPM_PORT = 2321
EK_HANDLE = 0x81010001
EK_CERT_NV_INDEX = 0x01C00002


def tcti(port=SWTPM_PORT):
    """TCTI string that reaches a device's swtpm from inside the device."""
    return "swtpm:host=127.0.0.1,port=%d" % port


class LocalCa:
    """The rig's own certificate authority for swtpm_setup (config files under ``ca_dir``)."""

    def __init__(self, ca_dir):
        self.ca_dir = os.path.abspath(ca_dir)
        self.setup_conf = os.path.join(self.ca_dir, "swtpm_setup.conf")
        self._lock = threading.Lock()

    def _write_config(self):
        os.makedirs(self.ca_dir, mode=0o700, exist_ok=True)
        localca_conf = os.path.join(self.ca_dir, "swtpm-localca.conf")
        localca_opts = os.path.join(self.ca_dir, "swtpm-localca.options")
        files = {
            localca_conf: "".join("%s = %s\n" % (k, os.path.join(self.ca_dir, v)) for k, v in (
                ("statedir", ""), ("signingkey", "signkey.pem"),
                ("issuercert", "issuercert.pem"), ("certserial", "certserial"))),
            localca_opts: ("--platform-manufacturer devkit\n--platform-version 2.1\n"
                           "--platform-model simulated-device\n"),
            self.setup_conf: ("create_certs_tool = /usr/bin/swtpm_localca\n"
                              "create_certs_tool_config = %s\n"
                              "create_certs_tool_options = %s\n"
                              "active_pcr_banks = sha256\n" % (localca_conf, localca_opts)),
        }
        for path, text in files.items():
            if not os.path.exists(path):
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)

    @property
    def issuer_cert(self):
        """PEM file of the CA that signs EK certificates (exists after the first setup)."""
        return os.path.join(self.ca_dir, "issuercert.pem")

    @property
    def root_cert(self):
        """PEM file of the CA's root (exists after the first setup)."""
        return os.path.join(self.ca_dir, "swtpm-localca-rootca-cert.pem")

    def manufacture(self, state_dir, log_path):
        """Run swtpm_setup into an empty ``state_dir``; return {file name: bytes} of the state.

        The first call creates the CA; it runs alone (swtpm_localca creating its CA twice
        at once would race), later calls run in parallel.
        """
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        argv = ["swtpm_setup", "--tpm2", "--tpmstate", state_dir, "--create-ek-cert",
                "--create-platform-cert", "--lock-nvram", "--config", self.setup_conf,
                "--logfile", log_path]
        done = False
        with self._lock:
            if not os.path.exists(self.issuer_cert):
                self._write_config()
                self._run(argv)
                done = True
        if not done:
            self._run(argv)
        state = {}
        for name in os.listdir(state_dir):
            path = os.path.join(state_dir, name)
            if os.path.isfile(path) and not name.startswith("."):
                with open(path, "rb") as f:
                    state[name] = f.read()
        return state

    @staticmethod
    def _run(argv):
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError("swtpm_setup failed (rc=%d): %s%s" % (
                proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
