"""The known_hosts index and the indexed ssh_config (issue 17) on real files, without a device: what
a connection is given for its host must be what OpenSSH would check (plain, hashed, `[host]:port`,
wildcard and negated patterns, @revoked, @cert-authority), and a key accepted on first use is
appended once. Whether a connection then refuses unknown and changed keys is tested against real
sshd in test_ek_show.py and test_known_hosts.py (the same index serves them)."""
import base64
import os
import struct
import threading

import pytest
from hypothesis import given, settings, strategies as st
from paramiko import HostKeys, PKey, SSHConfig

from azext_edgetpm.errors import LocalFileError
from azext_edgetpm.remote import known_hosts as kh
from azext_edgetpm.remote.target import _IndexedConfig, _lookup_ssh_config


def ed25519(seed: int):
    """A syntactically valid ed25519 public key (a known_hosts line needs no private half)."""
    kind = b"ssh-ed25519"
    raw = seed.to_bytes(32, "big")
    return PKey.from_type_string("ssh-ed25519", struct.pack(">I", len(kind)) + kind + struct.pack(">I", 32) + raw)


def line(names, key):
    return f"{names} {key.get_name()} {key.get_base64()}\n"


def load(path, text):
    path.write_text(text)
    kh.forget(str(path))
    return kh.load_known_hosts(str(path))


def test_plain_hashed_port_and_pattern_entries_are_found_as_openssh_finds_them(tmp_path):
    keys = [ed25519(i) for i in range(1, 9)]
    hashed = HostKeys.hash_host("hashed.example")
    hashed_port = HostKeys.hash_host("[10.0.0.7]:2222")
    index = load(tmp_path / "known_hosts", "".join([
        "# comment\n", "\n",
        line("plain.example,10.0.0.1", keys[0]),
        line(hashed, keys[1]),
        line("[10.0.0.1]:2222", keys[2]),
        line(hashed_port, keys[3]),
        line("*.fleet.example,!bad.fleet.example", keys[4]),
        line("dev-??.lab", keys[5]),
        line("Mixed.Example", keys[6]),
    ]))

    def found(name):
        return [k.get_base64() for k in index.lookup(name)]
    assert found("plain.example") == found("10.0.0.1") == [keys[0].get_base64()]
    assert found("hashed.example") == [keys[1].get_base64()]
    assert found("[10.0.0.1]:2222") == [keys[2].get_base64()]      # another port: another name
    assert found("[10.0.0.7]:2222") == [keys[3].get_base64()] and found("10.0.0.7") == []
    assert found("a.fleet.example") == [keys[4].get_base64()]
    assert found("bad.fleet.example") == []                        # negated
    assert found("fleet.example") == []
    assert found("dev-07.lab") == [keys[5].get_base64()] and found("dev-107.lab") == []
    assert found("mixed.example") == [keys[6].get_base64()]        # host names compare case-insensitively
    assert found("unknown.example") == []
    # a connection's paramiko table gets its own host's keys only
    table = HostKeys()
    index.fill(table, "[10.0.0.1]:2222")
    assert list(table.keys()) == ["[10.0.0.1]:2222"] and table.lookup("10.0.0.1") is None


def test_revoked_keys_are_never_given_and_cert_authority_lines_are_skipped(tmp_path, caplog):
    good, bad, ca = ed25519(11), ed25519(12), ed25519(13)
    index = load(tmp_path / "known_hosts", "".join([
        "@revoked * " + line("", bad).strip() + "\n",
        "@cert-authority *.example " + line("", ca).strip() + "\n",
        line("dev.example", bad), line("dev.example", good),
    ]))
    assert [k.get_base64() for k in index.lookup("dev.example")] == [good.get_base64()]
    assert index.is_revoked(bad) and not index.is_revoked(good)
    assert index.lookup("x.example") == [] and index.skipped == ["@cert-authority"]


@pytest.mark.parametrize("text, words", [
    ("|1|xx yy zz\n", "line 2"),
    ("|1|only-two-parts ssh-ed25519 AAAA\n", "hashed name"),
    ("host ssh-ed25519 not*base64\n", "line 2"),
    ("@revoked *\n", "names no key"),
    ("@revoked * ssh-ed25519 !!!\n", "not base64"),
])
def test_a_broken_line_is_one_clear_error(tmp_path, text, words):
    with pytest.raises(LocalFileError, match=words) as refused:
        load(tmp_path / "known_hosts", line("good.example", ed25519(1)) + text)
    assert str(tmp_path / "known_hosts") in str(refused.value) and refused.value.hint


def test_a_key_paramiko_cannot_build_is_named_when_looked_up(tmp_path):
    index = load(tmp_path / "known_hosts", "dev ssh-ed25519 " + base64.b64encode(b"short").decode() + "\n"
                 "other ssh-unknown-type AAAA\n")
    assert index.lookup("other") == []            # an unknown key type is skipped, as paramiko does
    with pytest.raises(LocalFileError, match="line 1 holds no valid ssh-ed25519 key"):
        index.lookup("dev")


def test_a_new_key_is_appended_once_under_a_lock(tmp_path):
    path = tmp_path / "known_hosts"
    index = load(path, line("a.example", ed25519(1)))
    new = ed25519(2)
    threads = [threading.Thread(target=index.add_new, args=("[10.0.0.5]:2200", new)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_text().count(new.get_base64()) == 1
    assert [k.get_base64() for k in kh.load_known_hosts(str(path)).lookup("[10.0.0.5]:2200")] == [new.get_base64()]
    # another process appended a key meanwhile: read from where we stopped, and not appended again
    other = ed25519(3)
    with open(path, "a", encoding="ascii") as handle:
        handle.write(line("b.example", other))
    index.add_new("b.example", other)
    assert path.read_text().count(other.get_base64()) == 1
    assert kh.load_known_hosts(str(path)) is index and index.lookup("b.example")


def test_a_file_changed_under_the_run_is_read_again(tmp_path):
    path = tmp_path / "known_hosts"
    kh.forget(str(path))
    assert kh.load_known_hosts(str(path)).lookup("a.example") == []      # no file yet: empty
    first, second = ed25519(1), ed25519(2)
    path.write_text(line("a.example", first))
    assert [k.get_base64() for k in kh.load_known_hosts(str(path)).lookup("a.example")] == [first.get_base64()]
    path.write_text(line("a.example", second) + line("c.example", first))   # rewritten in place, longer
    found = kh.load_known_hosts(str(path))
    assert [k.get_base64() for k in found.lookup("a.example")] == [second.get_base64()]
    os.replace(tmp_path / "known_hosts", tmp_path / "moved")
    (tmp_path / "known_hosts").write_text(line("d.example", first))          # replaced
    found = kh.load_known_hosts(str(path))
    assert found.lookup("a.example") == [] and found.lookup("d.example")


# -- ssh_config -------------------------------------------------------------------------------------

_NAMES = ["dev-1", "dev-2", "dev-3", "bastion", "a.example", "b.example"]
_BLOCK = st.one_of(
    st.tuples(st.just("Host"), st.lists(st.sampled_from(_NAMES + ["*", "dev-*", "!dev-2", "*.example", "b.*"]),
                                        min_size=1, max_size=3)),
    st.tuples(st.just("Match"), st.sampled_from([["host", "dev-*"], ["all"], ["originalhost", "bastion"]])),
)


@settings(max_examples=60, deadline=None)
@given(blocks=st.lists(st.tuples(_BLOCK, st.integers(1, 65535), st.sampled_from(["root", "admin", "ops"])),
                       min_size=1, max_size=12))
def test_the_indexed_ssh_config_answers_as_paramiko_reading_the_whole_file(blocks):
    text = "User nobody\n"
    for (keyword, patterns), port, user in blocks:
        text += f"{keyword} {' '.join(patterns)}\n  Port {port}\n  User {user}\n  IdentityFile ~/.ssh/{user}\n"
    config = SSHConfig.from_text(text)
    indexed = _IndexedConfig(SSHConfig.from_text(text), ())
    for name in _NAMES + ["other"]:
        assert indexed.lookup(name) == dict(config.lookup(name)), (name, text)


def test_ssh_config_is_parsed_once_and_again_when_changed(tmp_path):
    path = tmp_path / "config"
    path.write_text("".join(f"Host dev-{i}\n  HostName 10.1.{i // 250}.{i % 250}\n  Port {2000 + i}\n"
                            for i in range(2000)))
    assert _lookup_ssh_config("dev-1999", str(path))["port"] == "3999"
    from azext_edgetpm.remote import target
    parsed = target._CONFIGS[str(path)]
    assert _lookup_ssh_config("dev-7", str(path))["hostname"] == "10.1.0.7" and target._CONFIGS[str(path)] is parsed
    path.write_text("Host dev-7\n  HostName changed.example\n")
    assert _lookup_ssh_config("dev-7", str(path))["hostname"] == "changed.example"
