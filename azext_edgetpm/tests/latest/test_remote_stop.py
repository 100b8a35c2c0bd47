"""No orphaned remote work (issue 8, defect 2): when a command times out, or az is interrupted
(Ctrl+C, SIGTERM), the command is stopped on the simulated device too, also behind sudo."""
import os
import signal
import threading

import pytest
from azure.cli.core.azclierror import ClientRequestError

from azext_edgetpm.remote.session import RemoteSession, Terminated
from azext_edgetpm.remote.target import resolve_target
from devkit.wait import wait_until

pytestmark = pytest.mark.devkit


def _session(dev, user):
    target = resolve_target(f"{dev.users[user]['user']}@{dev.host}:{dev.port}", ssh_key=dev.key(user),
                            connect_timeout=10)
    return RemoteSession(target, known_hosts=dev.known_hosts).connect()


def _running(dev, seconds):
    """How many `sleep <seconds>` processes run on the device (read from its /proc)."""
    script = ("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | "
              f"grep -c '^sleep {seconds} $' || true")
    return int(dev.exec(script).stdout.strip() or 0)


# (a long `sleep` inside a shell, and a child of it, stand for apt-get update and its methods)
def _command(seconds):
    return f"sh -c 'sleep {seconds}' & sleep {seconds}; wait"


@pytest.mark.parametrize("user,sudo", [("root", False), ("admin", True)])
def test_a_command_that_times_out_is_stopped_on_the_device(rig, user, sudo):
    dev = rig.by_variant("mfg")
    seconds = 3001 if sudo else 3002
    with _session(dev, user) as session:
        with pytest.raises(ClientRequestError) as err:
            session.run(_command(seconds), sudo=sudo, timeout=2)
        assert "did not finish within 2s" in str(err.value)
    wait_until(lambda: _running(dev, seconds) == 0, timeout=10, what=f"the device's `sleep {seconds}` ending")


@pytest.mark.parametrize("signum,raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_an_interrupted_az_stops_its_command_on_the_device(rig, signum, raised):
    dev = rig.by_variant("mfg")
    seconds = 3003 if signum == signal.SIGINT else 3004

    def interrupt_once_running():
        wait_until(lambda: _running(dev, seconds) == 2, timeout=20, what="the command running on the device")
        os.kill(os.getpid(), signum)  # as Ctrl+C or `kill` would; the main thread gets it

    with _session(dev, "admin") as session:
        thread = threading.Thread(target=interrupt_once_running, daemon=True)
        thread.start()
        with pytest.raises(raised):
            session.run(_command(seconds), sudo=True, timeout=60)
        thread.join()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the session gave SIGTERM back"
    wait_until(lambda: _running(dev, seconds) == 0, timeout=10, what=f"the device's `sleep {seconds}` ending")
