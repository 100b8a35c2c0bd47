"""Device userlands (devkit/userland.py) and the tpm2-tools registration backend
(devkit/tpmtools.py): the parts that need neither root nor a network. The builds themselves
and the devices on them are exercised by azext_edgetpm/tests/latest/test_distros.py and
(arm64) test_platform_arm64.py."""
import os
import struct

import pytest

from devkit import binfmt, tpmtools, userland, variants


def test_mirror_from_deb822_and_one_line_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("DEVKIT_DEBIAN_MIRROR", raising=False)
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian-security/x\nURIs: http://sec.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    (d / "other.list").write_text("deb https://packages.cloud.example/apt cloud-sdk main\n")
    assert userland.host_mirror(str(tmp_path)) == "http://mirror.example/debian"
    (d / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("# old style\ndeb [arch=amd64] http://old.example/debian bookworm main\n")
    assert userland.host_mirror(str(tmp_path)) == "http://old.example/debian"
    (tmp_path / "sources.list").unlink()
    assert userland.host_mirror(str(tmp_path)) == userland.FALLBACK_MIRROR
    monkeypatch.setenv("DEVKIT_DEBIAN_MIRROR", "http://override.example/debian/")
    assert userland.host_mirror(str(tmp_path)) == "http://override.example/debian"


def test_cache_key_follows_release_packages_and_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVKIT_USERLAND_CACHE", str(tmp_path))
    bullseye, trixie = userland.RELEASES["bullseye"], userland.RELEASES["trixie"]
    assert "libtss2-tcti-swtpm0" in bullseye.packages and "tpm2-tools" in trixie.packages
    keys = {userland.key(bullseye, "http://a/debian"), userland.key(bullseye, "http://b/debian"),
            userland.key(trixie, "http://a/debian")}
    assert len(keys) == 3
    path = userland.path_of("bullseye", "http://a/debian")
    assert path.startswith(str(tmp_path)) and path.endswith("/root")
    assert userland.info(path) is None
    with pytest.raises(userland.UserlandError):
        userland.ensure("buster")


def test_a_foreign_architecture_userland_has_its_own_cache_and_needs_qemu(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVKIT_USERLAND_CACHE", str(tmp_path))
    arm64 = userland.RELEASES["bookworm-arm64"]
    assert arm64.arch == "arm64" and arm64.label == "bookworm-arm64"
    assert userland.RELEASES["bullseye"].label == "bullseye"  # native ones keep their cache keys
    assert os.path.basename(os.path.dirname(userland.path_of("bookworm-arm64", "http://a/debian"))) \
        .startswith("bookworm-arm64-")
    assert variants.userlands("arm64+mfg") == ["bookworm-arm64"]
    with pytest.raises(binfmt.BinfmtError, match="no qemu-user emulation known"):
        binfmt.unavailable("mips64el")
    native = binfmt.native_arch()
    assert binfmt.unavailable(native) is None and binfmt.ensure(native) is None


def test_variants_name_their_userland_before_boot():
    assert variants.userlands("bullseye+mfg") == ["bullseye"]
    assert variants.userlands("mfg+notools") == []
    spec = variants.DeviceSpec(name="d1", hostname="d1", address="10.0.0.1")
    variants.apply("trixie+mfg", spec)
    assert spec.userland == "trixie" and spec.tpm == variants.TPM_MFG


def tpm2b(data):
    return struct.pack(">H", len(data)) + data


def test_authentication_key_split_with_and_without_enc_uri_data():
    parts = [tpm2b(bytes([i]) * (10 + i)) for i in range(5)]
    split = tpmtools.split_authentication_key
    assert split(b"".join(parts)) == parts
    assert split(b"".join(parts) + tpm2b(b"\x07" * 120)) == parts
    with pytest.raises(tpmtools.ToolsError, match="encUriData"):
        split(b"".join(parts) + tpm2b(b"x") + b"junk")
    with pytest.raises(tpmtools.ToolsError, match="malformed"):
        split(b"".join(parts)[:-3])
