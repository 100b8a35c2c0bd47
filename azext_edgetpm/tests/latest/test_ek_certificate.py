"""`--ek-ca-bundle`: the EK certificate in the device's TPM is verified against the TPM makers' CA
certificates (chain, validity, key = EK) with `cryptography`, and a device that fails is refused,
with the reason, before anything is enrolled. The dev kit's mfg devices carry a certificate from
the rig's CA (swtpm_setup); the bad ones are made by devkit/ekcert.py on fresh devices."""
import os
import shutil

import pytest
from cryptography.hazmat.primitives import serialization

from azext_edgetpm.tests.latest.scenario import ScenarioTest
from azext_edgetpm.tests.latest.test_dps_support import dps  # noqa: F401  pylint: disable=unused-import
from azext_edgetpm.tests.latest.test_ek_show import by_hand


@pytest.fixture(scope="module")
def ek_devices(rig, tmp_path_factory):
    """The session rig's mfg device, two fresh devices given bad certificates by the rig's CA,
    and three CA bundles: the rig's CA as a directory (root + issuer), its issuer as one file, and
    a CA that issued nothing here."""
    from devkit import ekcert
    expired, wrong_key = rig.add_device("fresh"), rig.add_device("fresh")
    try:
        ekcert.give_ek_certificate(rig, expired, expired=True)
        ekcert.give_ek_certificate(rig, wrong_key, other_key=True)
        base = tmp_path_factory.mktemp("ek-ca")
        rig_dir = base / "rig-ca"
        rig_dir.mkdir()
        ca_dir = os.path.dirname(rig.ca_cert)
        shutil.copy(rig.ca_cert, rig_dir / "issuer.pem")
        shutil.copy(os.path.join(ca_dir, "swtpm-localca-rootca-cert.pem"), rig_dir / "root.crt")
        other, _ = ekcert.make_ca()
        other_file = base / "other-ca.pem"
        other_file.write_bytes(other.public_bytes(serialization.Encoding.PEM))
        yield {"mfg": rig.by_variant("mfg"), "expired": expired, "wrong_key": wrong_key,
               "rig_ca_dir": str(rig_dir), "rig_issuer_file": rig.ca_cert, "other_ca": str(other_file)}
    finally:
        for dev in (expired, wrong_key):
            rig.remove_device(dev)


class EkCertificateScenarioTest(ScenarioTest):

    @pytest.fixture(autouse=True)
    def _devices(self, ek_devices, dps, tmp_path):  # noqa: F811  pylint: disable=redefined-outer-name
        self.devices, self.dps, self.tmp_path = ek_devices, dps, str(tmp_path)

    def use(self, name, bundle):
        dev = self.devices[name]
        self.kwargs.update({"host": f"root@{dev.host}:{dev.port}", "key": dev.key(), "kh": dev.known_hosts,
                            "tcti": dev.tcti, "bundle": self.devices[bundle], "cs": "@" + self.dps.cs_file})
        return dev

    SSH = "--host {host} --ssh-key {key} --known-hosts {kh} --tcti {tcti}"

    def test_good_chain_directory_and_file(self):
        dev = self.use("mfg", "rig_ca_dir")
        out = self.cmd("az edge-tpm ek show " + self.SSH + " --no-create --ek-ca-bundle {bundle}",
                       checks=[self.check("ekCertificate.chain.verified", True),
                               self.check("ekCertificate.chain.issuer", "CN=swtpm-localca"),
                               self.check("ekCertificate.matchesEndorsementKey", True)]).get_output_in_json()
        assert out["registrationId"] == by_hand(dev)[0]
        self.use("mfg", "rig_issuer_file")
        self.cmd("az edge-tpm ek show " + self.SSH + " --no-create --ek-ca-bundle {bundle}",
                 checks=[self.check("ekCertificate.chain.verified", True)])

    def test_wrong_ca(self):
        self.use("mfg", "other_ca")
        out = self.cmd("az edge-tpm ek show " + self.SSH + " --no-create --ek-ca-bundle {bundle}", expect_failure=True)
        assert out.exit_code == 1
        assert "does not chain to --ek-ca-bundle" in str(out.error) and "not in the CA bundle" in str(out.error)

    def test_expired_certificate(self):
        self.use("expired", "rig_ca_dir")
        out = self.cmd("az edge-tpm ek show " + self.SSH + " --no-create --ek-ca-bundle {bundle}", expect_failure=True)
        assert out.exit_code == 1 and "the EK certificate expired on" in str(out.error)

    def test_certificate_for_another_key(self):
        self.use("wrong_key", "rig_ca_dir")
        out = self.cmd("az edge-tpm ek show " + self.SSH + " --no-create --ek-ca-bundle {bundle}", expect_failure=True)
        assert out.exit_code == 1 and "is not the TPM's endorsement key" in str(out.error)
        assert "Do not enroll this device" in " ".join(out.error.recommendations)
        # Without the bundle ek show still reports the certificate, and that its key is not the EK.
        self.cmd("az edge-tpm ek show " + self.SSH + " --no-create",
                 checks=[self.check("ekCertificate.matchesEndorsementKey", False)])

    def test_refused_before_enrollment(self):
        dev = self.use("expired", "rig_ca_dir")
        self.kwargs["rid"] = by_hand(dev)[0]
        out = self.cmd("az edge-tpm enrollment create " + self.SSH + " --ek-ca-bundle {bundle} --login {cs}",
                       expect_failure=True)
        assert "expired on" in str(out.error)
        gone = self.cmd("az edge-tpm enrollment show --eid {rid} --login {cs}", expect_failure=True)
        assert gone.exit_code == 3  # nothing was enrolled
        out = self.cmd("az edge-tpm provision " + self.SSH + " --ek-ca-bundle {bundle} --login {cs} "
                       "--id-scope 0ne00ABCDEF", expect_failure=True)
        assert "expired on" in str(out.error)
        self.cmd("az edge-tpm enrollment show --eid {rid} --login {cs}", expect_failure=True)
        # The good device is enrolled, its certificate verified first.
        self.use("mfg", "rig_ca_dir")
        self.cmd("az edge-tpm enrollment create " + self.SSH + " --ek-ca-bundle {bundle} --login {cs}",
                 checks=[self.check("result", "created")])

    def test_bundle_errors(self):
        self.use("mfg", "rig_ca_dir")
        out = self.cmd("az edge-tpm ek show " + self.SSH + " --ek-ca-bundle /nonexistent/bundle.pem",
                       expect_failure=True)
        assert "no such file or directory" in str(out.error)
        self.kwargs["empty"] = self.tmp_path
        out = self.cmd("az edge-tpm ek show " + self.SSH + " --ek-ca-bundle {empty}", expect_failure=True)
        assert out.exit_code == 1 and "No CA certificate found" in str(out.error)
        out = self.cmd("az edge-tpm enrollment create --ek " + "AAAA" + " --eid x --ek-ca-bundle {bundle} --login {cs}",
                       expect_failure=True)
        assert "--ek-ca-bundle needs --host" in str(out.error)
