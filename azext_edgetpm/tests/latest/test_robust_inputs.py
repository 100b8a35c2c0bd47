"""Property-based tests (hypothesis) of what users and devices hand the extension: EK blobs,
registration IDs, device IDs and inventory rows. Whatever comes in, the answer is a value DPS
accepts or ONE az error with a bounded message, never another exception; and what passes the
local checks passes the DPS emulator's (the real service's rules) too.

Pure Python (plus tpm2-pytss's unmarshalling): no device, no network. Examples are derandomized
so that a run is repeatable.
"""
import base64
import os
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from azure.cli.core.azclierror import AzCLIError

from azext_edgetpm.errors import EdgeTpmError, UserInputError
from azext_edgetpm.tests.latest.faults import record

MESSAGE_LIMIT = 1200  # an error echoes a bounded part of the value, whatever its size

FAST = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def tally(name):
    """Count examples for bench/robustness.py."""
    record(name)


@pytest.fixture(scope="module")
def real_eks(tmp_path_factory):
    """Marshalled EKs of a real (software) TPM: RSA-2048 and ECC P-256, as tpm2_createek writes them."""
    from devkit.dps.testing import SoftTpm
    for tool in ("swtpm", "tpm2_createek"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            pytest.skip(f"{tool} is not installed")
    with SoftTpm() as tpm:
        env = dict(os.environ, TPM2TOOLS_TCTI=tpm.tcti)
        ecc = str(tmp_path_factory.mktemp("ek") / "ecc.pub")
        subprocess.run(["tpm2_createek", "-c", "-", "-G", "ecc", "-u", ecc], check=True, env=env,
                       capture_output=True, timeout=30)
        subprocess.run(["tpm2_flushcontext", "-t"], env=env, capture_output=True, timeout=30)
        with open(ecc, "rb") as handle:
            return [tpm.ek_pub, handle.read()]


def check_ek(blob: bytes):
    """The product's local EK check; returns the EK or None (refused with one az error)."""
    from azext_edgetpm.tpm.ek import parse_endorsement_key
    try:
        ek = parse_endorsement_key(blob)
    except UserInputError as exc:  # a domain error: the az face turns it into one az error
        assert len(str(exc)) < MESSAGE_LIMIT
        return None
    assert ek.blob == blob and len(ek.registration_id()) == 64 and len(ek.registration_id("legacy")) == 52
    return ek


def dps_accepts_ek(blob: bytes) -> bool:
    from devkit.dps import errors, tpm
    try:
        tpm.parse_endorsement_key(base64.b64encode(blob).decode())
    except errors.DpsError:
        return False
    return True


def test_real_eks_pass_both_checks(real_eks):
    for blob in real_eks:
        assert check_ek(blob) is not None and dps_accepts_ek(blob)


def make_blob(rnd, bases) -> bytes:
    """One EK-shaped blob from a seeded generator (pure Python: hypothesis draws only the seed,
    which keeps 10,000 examples cheap): a real EK truncated, extended, bit-flipped, with other
    attributes or symmetric definitions, its size prefix fixed up or not; or random bytes."""
    kind = rnd.random()
    if kind < 0.15:
        body = rnd.randbytes(rnd.randint(0, 600))
        return struct.pack(">H", len(body)) + body if rnd.random() < 0.5 else body
    if kind < 0.25:
        body = struct.pack(">HHI", rnd.choice((0x1, 0x23, 0x8, 0x25)), 0x000B, rnd.getrandbits(32))
        body += rnd.randbytes(rnd.randint(0, 400))
        return struct.pack(">H", len(body)) + body
    blob = bytearray(rnd.choice(bases))
    for _ in range(rnd.randint(1, 4)):
        op = rnd.choice(("flip", "truncate", "extend", "resize", "attributes", "symmetric"))
        if op == "flip" and blob:
            blob[rnd.randrange(len(blob))] ^= rnd.randint(1, 255)
        elif op == "truncate":
            blob = blob[:rnd.randint(0, len(blob))]
        elif op == "extend":
            blob += rnd.randbytes(rnd.randint(1, 8))
        elif op == "resize" and len(blob) >= 2:  # the size prefix consistent with the (changed) length
            blob[0:2] = struct.pack(">H", (len(blob) - 2) & 0xFFFF)
        elif op == "attributes" and len(blob) >= 10:
            blob[6:10] = struct.pack(">I", rnd.getrandbits(32) if rnd.random() < 0.5
                                     else struct.unpack(">I", bytes(blob[6:10]))[0] ^ (1 << rnd.randrange(32)))
        elif op == "symmetric" and len(blob) >= 12:
            off = 12 + struct.unpack(">H", bytes(blob[10:12]))[0]
            if len(blob) >= off + 6:
                blob[off:off + 6] = struct.pack(">HHH", rnd.choice((0x6, 0x10, 0x25, 0x26, 0x1)),
                                                rnd.choice((128, 192, 256, 0)), rnd.choice((0x43, 0x40, 0x44, 0x10)))
    return bytes(blob)


def test_ten_thousand_ek_blobs_never_pass_locally_what_dps_refuses(real_eks):
    """Real EKs truncated and mutated, and random blobs: the local check accepts a blob only when
    DPS does, and refuses everything else with one az error (no other exception)."""
    import random
    seen = {"accepted": 0}

    @settings(max_examples=10000, **FAST)
    @given(st.integers(0, 2 ** 63))
    def prop(seed):
        tally("hostile inputs tried")
        blob = make_blob(random.Random(seed), real_eks)
        ek = check_ek(blob)
        if ek is not None:
            seen["accepted"] += 1
            assert dps_accepts_ek(blob), blob.hex()
    prop()
    assert seen["accepted"] > 0  # the generator also produces valid EKs (flips inside the modulus)


def test_endorsement_key_text_as_typed():
    """--endorsement-key text: base64 (or not), PEM, whitespace, NUL, unicode."""
    from azext_edgetpm.tpm.ek import decode_endorsement_key

    @settings(max_examples=300, **FAST)
    @given(st.text(max_size=300))
    def prop(text):
        tally("hostile inputs tried")
        try:
            blob = decode_endorsement_key(text)
        except UserInputError as exc:
            assert len(str(exc)) < MESSAGE_LIMIT
            return
        check_ek(blob)
    prop()


ID_ALPHABET = st.sampled_from(list("abcXYZ019-._:") + [" ", "/", "\\", "\x00", "\n", "'", '"', ";", "$", "é", "🙂",
                                                        "%", "*", "?", "!", "(", ")", ",", "=", "@"])
IDS = st.one_of(st.text(ID_ALPHABET, max_size=140), st.text(max_size=40), st.sampled_from([".", "..", "", "a" * 128,
                                                                                            "a" * 129, "-", "a.", "a-"]))


def test_registration_ids_accepted_locally_are_accepted_by_dps():
    from azext_edgetpm.dps.enrollment import normalize_registration_id
    from devkit.dps.errors import DpsError
    from devkit.dps.store import check_registration_id

    @settings(max_examples=800, **FAST)
    @given(IDS)
    def prop(value):
        tally("hostile inputs tried")
        try:
            rid = normalize_registration_id(value)
        except EdgeTpmError as exc:  # (UserInputError: the az face turns it into one az error)
            assert len(str(exc)) < MESSAGE_LIMIT and "\x00" not in str(exc)
            try:
                check_registration_id(value.strip())
            except DpsError:
                return
            # DPS takes it: then only upper case or surrounding blanks may have been the reason
            assert value.strip().lower() != value.strip() or value != value.strip(), repr(value)
            return
        assert rid == rid.lower() and rid not in (".", "..")
        check_registration_id(rid)  # raises DpsError when DPS would refuse it
    prop()


def test_device_ids_follow_iot_hub_rules():
    import re
    from azext_edgetpm.dps.enrollment import validate_device_id
    hub_rule = re.compile(r"^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$")

    @settings(max_examples=800, **FAST)
    @given(IDS)
    def prop(value):
        tally("hostile inputs tried")
        try:
            assert validate_device_id(value) == value
        except EdgeTpmError as exc:  # (UserInputError)
            assert len(str(exc)) < MESSAGE_LIMIT and "\x00" not in str(exc)
            assert not hub_rule.match(value)
            return
        assert hub_rule.match(value)
    prop()


ROW_VALUES = st.one_of(st.none(), st.text(max_size=60), st.sampled_from(
    ["root@10.0.0.1:22", "gw-1", "[::1]:2222", "a@b@c", "host:99999", "x;rm -rf /", "$(touch /tmp/p)", "{\"a\": 1}",
     "[\"hub.azure-devices.net\"]", "swtpm:host=127.0.0.1,port=2321", "1.5.10", "ENV_NAME"]))


def test_inventory_rows_are_devices_or_one_error():
    from azext_edgetpm.fleet.inventory import COLUMNS, validate

    @settings(max_examples=400, **FAST)
    @given(st.lists(st.dictionaries(st.sampled_from(COLUMNS + ("bogus",)), ROW_VALUES, max_size=6), min_size=1,
                    max_size=4))
    def prop(rows):
        tally("hostile inputs tried")
        try:
            devices = validate([(f"row {i + 2}", row) for i, row in enumerate(rows)], {})
        except EdgeTpmError as exc:  # a domain error: the az face turns it into one az error
            assert len(str(exc)) < 20 * MESSAGE_LIMIT
            return
        for dev in devices:
            assert dev.host and 0 < dev.port < 65536
            assert "\n" not in dev.ssh_host and "\x00" not in dev.ssh_host
    prop()
