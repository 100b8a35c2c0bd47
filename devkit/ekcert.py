"""EK certificates that a TPM maker would never issue, for tests of `--ek-ca-bundle`.

A ``mfg`` device carries a good EK certificate made by ``swtpm_setup`` with the rig's CA
(``devkit/swtpm.py``); its NV index is locked. :func:`give_ek_certificate` gives a device of
another variant (``fresh``) an EK and a certificate made here instead: signed by the same rig
CA, but expired, or for a key that is not the EK. It is written where a maker writes it (NV index
0x01C00002, readable with the index's own authorization, as on real TPMs) with tpm2-tools inside
the device.
"""
import datetime
import os
import tempfile

from devkit.swtpm import EK_CERT_NV_INDEX, EK_HANDLE

NV_ATTRIBUTES = "ownerread|ownerwrite|authread|authwrite|policywrite|no_da"


def rig_ca(rig):
    """(issuer certificate, its private key) of the rig's CA (exists once a mfg device was made)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    if not rig.ca_cert:
        raise RuntimeError("the rig has no CA yet: start a mfg device first")
    with open(rig.ca_cert, "rb") as handle:
        issuer = x509.load_pem_x509_certificate(handle.read())
    with open(os.path.join(os.path.dirname(rig.ca_cert), "signkey.pem"), "rb") as handle:
        text = handle.read()
    # swtpm_localca writes a text dump of the key before its PEM block.
    key = load_pem_private_key(text[text.index(b"-----BEGIN"):], password=None)
    return issuer, key


def make_certificate(public_key, issuer, issuer_key, not_before, not_after, subject_cn="devkit EK"):
    """An EK-style certificate (DER) for `public_key`, issued by `issuer`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(issuer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(issuer_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def make_ca(common_name="devkit other CA", days=3650):
    """A self-signed CA (certificate, key) that issued nothing on any device."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _device_ek_public_key(dev):
    """Create the EK (TCG default RSA template, persisted at 0x81010001) if absent; its public key."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    script = (f"tpm2_readpublic -Q -c {EK_HANDLE:#x} >/dev/null 2>&1 || "
              f"tpm2_createek -Q -c {EK_HANDLE:#x} -G rsa -u /tmp/devkit-ek.pub; "
              f"tpm2_readpublic -Q -c {EK_HANDLE:#x} -f pem -o /tmp/devkit-ek.pem && cat /tmp/devkit-ek.pem; "
              "rm -f /tmp/devkit-ek.pub /tmp/devkit-ek.pem")
    proc = dev.exec(script, env=dev.tpm_env, check=True)
    return load_pem_public_key(proc.stdout.encode())


def write_ek_certificate(dev, der: bytes):
    """Define NV 0x01C00002 (owner hierarchy) on the device's TPM and write `der` into it."""
    root = f"/proc/{dev.pid}/root"
    fd, path = tempfile.mkstemp(prefix="devkit-ekcert-", suffix=".der", dir=os.path.join(root, "tmp"))
    with os.fdopen(fd, "wb") as handle:
        handle.write(der)
    inside = "/tmp/" + os.path.basename(path)
    index = f"{EK_CERT_NV_INDEX:#x}"
    script = (f"tpm2_nvundefine -Q -C o {index} 2>/dev/null; "
              f"tpm2_nvdefine -Q -C o -s {len(der)} -a '{NV_ATTRIBUTES}' {index} && "
              f"tpm2_nvwrite -Q -C o -i {inside} {index}; rc=$?; rm -f {inside}; exit $rc")
    dev.exec(script, env=dev.tpm_env, check=True)


def give_ek_certificate(rig, dev, expired=False, other_key=False) -> bytes:
    """Give `dev` (not a mfg device: its NV is locked) an EK and an EK certificate signed by the
    rig's CA: valid, `expired` (ended yesterday), or for `other_key` (a fresh RSA key, not the EK).
    Returns the certificate (DER)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    issuer, issuer_key = rig_ca(rig)
    public_key = _device_ek_public_key(dev)
    if other_key:
        public_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        not_before, not_after = now - datetime.timedelta(days=400), now - datetime.timedelta(days=1)
    else:
        not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=3650)
    der = make_certificate(public_key, issuer, issuer_key, not_before, not_after)
    write_ek_certificate(dev, der)
    return der
