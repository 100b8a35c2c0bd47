"""The SSH session against a simulated device whose sshd is set up the way hardened or embedded
devices are: what paramiko raises while a command runs or a file is copied reaches the user
as one az error with a recommendation, never as a traceback."""
import time

import pytest
from azure.cli.core.azclierror import AzCLIError, AzureConnectionError, FileOperationError, ForbiddenError

from azext_edgetpm.remote.session import RemoteSession
from azext_edgetpm.remote.target import resolve_target


def _session(dev):
    target = resolve_target(f"root@{dev.host}:{dev.port}", ssh_key=dev.key("root"), connect_timeout=10)
    return RemoteSession(target, known_hosts=dev.known_hosts).connect()


def _reconfigure_sshd(dev, sed_expr):
    """Edit the device's sshd_config and have sshd re-read it (existing connections stay)."""
    dev.exec(f"sed -i {sed_expr} /etc/ssh/sshd_config && kill -HUP $(cat /run/sshd.pid)", check=True)
    time.sleep(1.0)  # sshd re-executes itself on SIGHUP


def test_no_sftp_subsystem_is_one_clear_error(new_device):
    dev = new_device("mfg")
    _reconfigure_sshd(dev, "'/^Subsystem sftp/d'")
    with _session(dev) as session:
        with pytest.raises(FileOperationError) as err:
            session.upload(b"x", "/tmp/edgetpm-probe")
        assert "offers no SFTP" in str(err.value)
        assert "Subsystem sftp" in " ".join(err.value.recommendations)
        assert session.run("true").ok  # the session is still usable


def test_sessions_refused_by_sshd_is_one_clear_error(new_device):
    dev = new_device("mfg")
    with _session(dev) as session:
        assert session.run("true").ok
        # MaxSessions 0 lets the login in but refuses every session channel on new connections.
        _reconfigure_sshd(dev, "'s/^MaxSessions .*/MaxSessions 0/'")
    with _session(dev) as session:
        with pytest.raises(ForbiddenError) as err:
            session.run("true")
        assert "refused to open a session" in str(err.value)
        assert "MaxSessions" in " ".join(err.value.recommendations)


def test_connection_dropped_during_a_command(new_device):
    dev = new_device("mfg")
    with _session(dev) as session:
        # Kill the sshd process serving this connection: the connection ends without an exit status
        # (paramiko would report rc -1, which reads as if the command had failed on the device).
        with pytest.raises(AzCLIError) as err:
            session.run("kill -9 $PPID")
        assert isinstance(err.value, AzureConnectionError), type(err.value)
        assert "run the command again" in " ".join(err.value.recommendations)
