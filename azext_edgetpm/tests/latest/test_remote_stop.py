"""No orphaned remote work (issue 8, defect 2): when a command times out, or az is interrupted
(Ctrl+C, SIGTERM), the command is stopped on the simulated device too, also behind sudo."""
import os
import signal
import threading

import pytest

from azext_edgetpm.errors import UnreachableError
from azext_edgetpm.remote.session import RemoteSession
from azext_edgetpm.remote.signals import Terminated
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
        with pytest.raises(UnreachableError) as err:
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


def test_a_hanging_apt_get_update_is_stopped_and_leaves_no_temporary_files(rig):
    """The audit's case: `apt-get update` of a source that never answers, given up by az. It is
    stopped on the device, and the private sources directory it ran with is removed."""
    import socket
    from azext_edgetpm.edge.apt import update_command
    dev = rig.by_variant("mfg")
    source = "/etc/apt/sources.list.d/edgetpm-test-hang.list"
    apt_running = ("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | "
                   "grep -c '^apt-get .*-o Dir::Etc::sourcelist=/dev/null' || true")
    with socket.socket() as server:
        server.bind((rig.host_ip, 0))
        server.listen(8)  # takes the connection, never answers: apt waits (120 s by default)
        dev.exec(f"cat > {source}", input=f"deb [trusted=yes] http://{rig.host_ip}:{server.getsockname()[1]}/ ./\n",
                 check=True)
        try:
            before = set(dev.exec("ls -d /tmp/tmp.* 2>/dev/null").stdout.split())
            with _session(dev, "admin") as session:
                with pytest.raises(UnreachableError):
                    session.run(update_command([source]), sudo=True, timeout=3)
            wait_until(lambda: int(dev.exec(apt_running).stdout.strip() or 0) == 0, timeout=10,
                       what="the device's apt-get update ending")
            assert set(dev.exec("ls -d /tmp/tmp.* 2>/dev/null").stdout.split()) == before
        finally:
            dev.exec(["rm", "-f", source])
