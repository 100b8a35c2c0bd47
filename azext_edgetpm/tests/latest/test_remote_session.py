"""The SSH session against a simulated device whose sshd is set up the way hardened or embedded
devices are: what paramiko raises while a command runs or a file is copied reaches the user
as one domain error with a recommendation (one az error at the face), never as a traceback."""
import pytest

from azext_edgetpm.errors import EdgeTpmError, LocalFileError, PermissionDeniedError, TransientError
from azext_edgetpm.remote.session import RemoteSession
from azext_edgetpm.remote.target import resolve_target
from devkit.wait import wait_until


def _session(dev):
    target = resolve_target(f"root@{dev.host}:{dev.port}", ssh_key=dev.key("root"), connect_timeout=10)
    return RemoteSession(target, known_hosts=dev.known_hosts).connect()


def _listening_sockets(dev):
    """The inodes of the sockets sshd listens on inside the device."""
    port = "%04X" % dev.port
    out = dev.exec(f"awk '$4 == \"0A\" && $2 ~ /:{port}$/ {{print $10}}' /proc/net/tcp /proc/net/tcp6").stdout
    return set(out.split())


def _reconfigure_sshd(dev, sed_expr):
    """Edit the device's sshd_config and have sshd re-read it (existing connections stay)."""
    before = _listening_sockets(dev)
    assert before, "sshd listens on no socket"
    dev.exec(f"sed -i {sed_expr} /etc/ssh/sshd_config && kill -HUP $(cat /run/sshd.pid)", check=True)
    # On SIGHUP sshd closes its listening sockets and re-executes itself: it has read the new
    # configuration once it listens again, on new sockets.
    wait_until(lambda: (lambda now: now and not now & before)(_listening_sockets(dev)), timeout=15,
               what="sshd listening again after SIGHUP")


def test_no_sftp_subsystem_is_one_clear_error(new_device):
    dev = new_device("mfg")
    _reconfigure_sshd(dev, "'/^Subsystem sftp/d'")
    with _session(dev) as session:
        with pytest.raises(LocalFileError) as err:
            session.upload(b"x", "/tmp/edgetpm-probe")
        assert "offers no SFTP" in str(err.value)
        assert "Subsystem sftp" in err.value.hint
        assert session.run("true").ok  # the session is still usable


def test_sessions_refused_by_sshd_is_one_clear_error(new_device):
    dev = new_device("mfg")
    with _session(dev) as session:
        assert session.run("true").ok
        # MaxSessions 0 lets the login in but refuses every session channel on new connections.
        _reconfigure_sshd(dev, "'s/^MaxSessions .*/MaxSessions 0/'")
    with _session(dev) as session:
        with pytest.raises(PermissionDeniedError) as err:
            session.run("true")
        assert "refused to open a session" in str(err.value)
        assert "MaxSessions" in err.value.hint


def test_connection_dropped_during_a_command(new_device):
    dev = new_device("mfg")
    with _session(dev) as session:
        # Kill the sshd process serving this connection: the connection ends without an exit status
        # (paramiko would report rc -1, which reads as if the command had failed on the device).
        with pytest.raises(EdgeTpmError) as err:
            session.run("kill -9 $PPID")
        assert isinstance(err.value, TransientError), type(err.value)
        assert "run the command again" in err.value.hint
