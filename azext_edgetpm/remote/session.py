"""One SSH session to one device: host-key policy, ~/.ssh/config, agent and key files,
ProxyJump, sudo, quoting, file upload, timeouts and retries of transient connect failures.

Every failure a user can cause ends in one domain error (azext_edgetpm.errors) with a
recommendation, which the az face turns into one azclierror. Secrets (the sudo password) travel
only on the channel's stdin, never on a command line, in a log line or in an error message.
"""
import base64
import errno
import io
import os
import re
import shlex
import socket
import time
from dataclasses import dataclass
from typing import Callable, Optional

import paramiko
from knack.log import get_logger

from azext_edgetpm.echo import shown
from azext_edgetpm.errors import (
    AuthError, DeviceError, EdgeTpmError, LocalFileError, PermissionDeniedError, TransientError, UnreachableError,
    UserInputError, option)

from azext_edgetpm.stop import STOP, stopped

from .target import DEFAULT_KNOWN_HOSTS, SshTarget, resolve_target, split_host

logger = get_logger(__name__)

SUDO_PASSWORD_ENV = "AZ_EDGETPM_SUDO_PASSWORD"
# Where uploads wait until root puts them in place: one directory per login user, emptied by the
# first upload of every run (a dropped connection can leave a staged copy behind, never for long).
STAGING_ROOT = "/var/lib/edge-tpm/staging"
_TRANSIENT_CONNECT_ATTEMPTS = 4
MAX_OUTPUT_BYTES = 16 * 2**20  # per stream of one remote command
SIGNAL_GRACE = 0.5             # seconds a stopped command has to end on its channel's SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM while a session was open: handled like Ctrl+C (the remote command is stopped)."""


@dataclass
class Result:
    """What a remote command gave back."""
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def fingerprint(key) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko public key."""
    import hashlib
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuses unknown host keys unless the user opted in (trust on first use), in which case
    the key is appended to the known_hosts file. Changed keys never reach this policy: paramiko
    raises BadHostKeyException for them, and we always refuse those."""

    def __init__(self, accept_new: bool, known_hosts: str, target: SshTarget, index=None):
        self.accept_new = accept_new
        self.known_hosts = known_hosts
        self.target = target
        self.index = index          # remote.known_hosts.KnownHosts: the run's shared index of the file

    def is_revoked(self, key) -> bool:
        return self.index is not None and self.index.is_revoked(key)

    def missing_host_key(self, client, hostname, key):
        fp = fingerprint(key)
        if self.is_revoked(key):
            raise DeviceError(
                f"The host key of {self.target.display} ({key.get_name()} {fp}) is marked @revoked in "
                f"{self.known_hosts}; refusing to connect.",
                "A revoked key is never accepted: the device must get a new host key (ssh-keygen -A after "
                "removing the old one), which you then add to known_hosts.")
        if not self.accept_new:
            raise DeviceError(
                f"The host key of {self.target.display} is not known ({key.get_name()} {fp}); "
                f"refusing to connect.",
                f"Check the fingerprint with the device's owner (ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{_short_type(key)}_key.pub on the device), then add it to "
                f"{self.known_hosts} (e.g. ssh-keyscan -p {self.target.port} {self.target.hostname} >> "
                f"{self.known_hosts}), or re-run with {option('accept_new_host_key')} to trust it on first use.")
        client.get_host_keys().add(hostname, key.get_name(), key)
        if self.index is not None:
            self.index.add_new(hostname, key)     # once, under a lock, shared with the other workers
        else:
            _append_known_host(self.known_hosts, hostname, key)
        logger.warning("Trusting new host key of %s (%s %s); recorded in %s.",
                       self.target.display, key.get_name(), fp, self.known_hosts)


def _short_type(key) -> str:
    name = key.get_name()
    if "ed25519" in name:
        return "ed25519"
    if "ecdsa" in name:
        return "ecdsa"
    return "rsa"


def _append_known_host(path: str, hostname: str, key) -> None:
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as handle:
            handle.write(line)
    except OSError as exc:
        raise LocalFileError(f"Cannot record the new host key in {path}: {exc}",
                             f"Point {option('known_hosts')} at a writable file.") from exc


class _Transport(paramiko.Transport):
    """paramiko's transport preferring AES-GCM (every OpenSSH since 6.2 offers it): an AEAD cipher
    needs no separate HMAC per packet, which paramiko computes and compares in Python. Servers
    without it (Dropbear) get the usual CTR + HMAC choices, which stay listed after it."""
    _preferred_ciphers = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") + tuple(
        c for c in paramiko.Transport._preferred_ciphers if "gcm" not in c)  # pylint: disable=protected-access
    # The reader thread wakes on this timeout when the line is idle (10 times a second by default,
    # per device); closing does not wait for it (paramiko closes the socket and packetizer first).
    _active_check_timeout = 1.0


class RemoteSession:
    """A connection to one device, used as a context manager.

    `run()` executes a shell command (a string the caller built with `shlex.quote` around
    every value), as root through sudo when `sudo=True` and the login user is not root.
    """

    def __init__(self, target: SshTarget, known_hosts: Optional[str] = None,
                 accept_new_host_key: bool = False,
                 sudo_password: Optional[Callable[[], str]] = None,
                 command_timeout: float = 300.0):
        self.target = target
        self.known_hosts = os.path.expanduser(known_hosts or DEFAULT_KNOWN_HOSTS)
        self.accept_new_host_key = accept_new_host_key
        self._sudo_password_cb = sudo_password or default_sudo_password
        self._sudo_password: Optional[str] = None
        self._sudo_needs_password = False
        self.command_timeout = command_timeout
        self._clients = []
        self._staging_base: Optional[str] = None
        self._sftp = None            # one SFTP channel for the session's uploads, opened on first use
        self._previous_sigterm = None
        self.client: Optional[paramiko.SSHClient] = None

    # -- connection ---------------------------------------------------------------------
    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def connect(self) -> "RemoteSession":
        """Connect (once: a session that is connected already is returned as it is)."""
        if self.client is not None:
            return self
        sock = None
        if self.target.proxy_jump:
            sock = self._open_jump_channel()
        self.client = self._connect_client(self.target, sock)
        self._trap_sigterm()  # (undone by close(); a failed connect leaves nothing to undo)
        return self

    def close(self) -> None:
        self._sftp = None            # (closed with its connection)
        for client in reversed(self._clients):
            client.close()
        self._clients = []
        self.client = None
        if self._previous_sigterm is not None:
            import signal
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _trap_sigterm(self) -> None:
        """While connected, SIGTERM (a CI job cancelled, `kill`) ends az the way Ctrl+C does, so
        that a running command is stopped on the device before az exits (main thread only:
        Python delivers signals there)."""
        import signal
        import threading
        if self._previous_sigterm is not None or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous not in (signal.SIG_DFL, None):
            return  # someone (az itself, a host application) handles SIGTERM already

        def terminated(signum, frame):
            raise Terminated("az was asked to stop (SIGTERM).")

        signal.signal(signal.SIGTERM, terminated)
        self._previous_sigterm = previous

    @property
    def is_root(self) -> bool:
        return self.target.user == "root"

    def _new_client(self, target: SshTarget) -> paramiko.SSHClient:
        from .known_hosts import load_known_hosts
        client = paramiko.SSHClient()
        known = None
        if os.path.isfile(self.known_hosts) or not os.path.exists(self.known_hosts):
            # read once per run and shared; paramiko gets this host's keys only. Revoked keys are
            # left out, so that paramiko hands them to the policy, which refuses them.
            known = load_known_hosts(self.known_hosts)
            known.fill(client.get_host_keys(), target.known_hosts_name)
            if not known.stamp and not self.accept_new_host_key:
                logger.info("Known hosts file %s does not exist.", self.known_hosts)
        client.set_missing_host_key_policy(_HostKeyPolicy(self.accept_new_host_key, self.known_hosts, target,
                                                          known))
        return client

    def _connect_client(self, target: SshTarget, sock) -> paramiko.SSHClient:
        delay = 0.5
        for attempt in range(1, _TRANSIENT_CONNECT_ATTEMPTS + 1):
            client = self._new_client(target)
            started = time.monotonic()
            try:
                client.connect(
                    target.hostname, port=target.port, username=target.user,
                    key_filename=target.key_filenames or None,
                    allow_agent=True, look_for_keys=not target.key_filenames,
                    timeout=target.connect_timeout, banner_timeout=target.connect_timeout,
                    auth_timeout=target.connect_timeout, sock=sock, transport_factory=_Transport)
                self._clients.append(client)
                return client
            except (paramiko.BadHostKeyException) as exc:
                client.close()
                raise DeviceError(
                    f"The host key of {target.display} has CHANGED: it offered {exc.key.get_name()} "
                    f"{fingerprint(exc.key)}, but {self.known_hosts} records {fingerprint(exc.expected_key)}. "
                    "Someone may be intercepting the connection, or the device was reinstalled; "
                    "refusing to connect.",
                    f"If the change is expected, remove the old key with `ssh-keygen -R "
                    f"{target.known_hosts_name} -f {self.known_hosts}` and connect again "
                    f"(with {option('accept_new_host_key')} to record the new one).") from exc
            except paramiko.PasswordRequiredException as exc:
                client.close()
                raise AuthError(
                    f"The SSH key for {target.display} is encrypted and no passphrase can be asked for.",
                    "Load the key into ssh-agent (ssh-add KEY) and run the command again.") from exc
            except paramiko.AuthenticationException as exc:
                client.close()
                raise AuthError(
                    f"SSH authentication failed for {target.display}: {exc}",
                    f"Check {option('ssh_user')} and {option('ssh_key')} (or the User/IdentityFile of "
                    "~/.ssh/config, or the keys in ssh-agent), and that the public key is in the user's "
                    "~/.ssh/authorized_keys on the device.") from exc
            except (paramiko.SSHException, EOFError, ConnectionResetError) as exc:
                client.close()
                if "No authentication methods available" in str(exc):
                    raise AuthError(
                        f"No SSH key to offer {target.display}: none was given, ssh-agent holds none, and "
                        "there is no ~/.ssh/id_* key.",
                        f"Pass {option('ssh_key')}, add the key to ssh-agent (ssh-add KEY), or set IdentityFile "
                        "for the host in ~/.ssh/config.") from exc
                unusable = _unusable_key_files(target.key_filenames)
                if unusable and len(unusable) == len(target.key_filenames):
                    # paramiko reports a key file it cannot load only once authentication ran out of
                    # other ways, as a handshake error; it is not transient and not the server's doing.
                    raise UserInputError(
                        "Not a private key file this SSH client can read: "
                        + "; ".join(f"{path} ({why.split('. See ')[0]})" for path, why in unusable.items()),
                        f"Give the private key file (not the .pub) with {option('ssh_key')}, or fix IdentityFile "
                        "in ~/.ssh/config; a key loaded into ssh-agent needs no file.") from exc
                # A server that accepts TCP but never speaks SSH: paramiko reports the banner
                # timeout as a handshake error ("Error reading SSH protocol banner", or "No
                # existing session" when its transport thread gave up first).
                if (isinstance(exc.__context__, (socket.timeout, TimeoutError))
                        or time.monotonic() - started >= target.connect_timeout * 0.9):
                    raise UnreachableError(
                        f"Timed out after {target.connect_timeout:.0f}s waiting for the SSH server of "
                        f"{target.display} to answer.",
                        "Check that the port belongs to an SSH server and that the device is not overloaded, "
                        f"or raise {option('ssh_timeout')} for slow links.") from exc
                if attempt == _TRANSIENT_CONNECT_ATTEMPTS or sock is not None:
                    raise TransientError(
                        f"The SSH handshake with {target.display} failed: {exc}",
                        "Check that the port belongs to an SSH server; a device that drops many parallel "
                        "connections may need a higher MaxStartups in its sshd_config.") from exc
                logger.info("SSH handshake with %s failed (%s); retrying in %.1fs", target.display, exc, delay)
                time.sleep(delay)
                delay *= 2
            except (socket.timeout, TimeoutError) as exc:
                client.close()
                raise UnreachableError(
                    f"Timed out after {target.connect_timeout:.0f}s connecting to {target.display}.",
                    "Check that the device is powered on and reachable from here (routing, firewall, VPN), "
                    f"or raise {option('ssh_timeout')} for slow links.") from exc
            except socket.gaierror as exc:
                client.close()
                raise UnreachableError(
                    f"Cannot resolve host name {shown(target.hostname)}: {exc.strerror}.",
                    f"Check the spelling of {option('host')}, your DNS, or add a Host entry with HostName to "
                    "~/.ssh/config.") from exc
            except (paramiko.ssh_exception.NoValidConnectionsError, OSError) as exc:
                client.close()
                raise UnreachableError(_describe_socket_error(target, exc),
                                       "Check that the device is up, that sshd runs on that port, and "
                                         "that it is reachable from this machine.") from exc
        raise AssertionError("unreachable")

    def _open_jump_channel(self):
        """Connect through the ProxyJump chain and return a channel to the final target."""
        sock = None
        hops = [h.strip() for h in self.target.proxy_jump.split(",") if h.strip()]
        for index, hop in enumerate(hops):
            user, name, port = split_host(hop)
            hop_target = resolve_target(name, ssh_user=user, ssh_port=port, ssh_config=self.target.ssh_config,
                                        connect_timeout=self.target.connect_timeout)
            client = self._connect_client(hop_target, sock)
            if index + 1 < len(hops):
                _, next_name, next_port = split_host(hops[index + 1])
                nxt = resolve_target(next_name, ssh_port=next_port, ssh_config=self.target.ssh_config)
                dest = (nxt.hostname, nxt.port)
            else:
                dest = (self.target.hostname, self.target.port)
            try:
                sock = client.get_transport().open_channel("direct-tcpip", dest, ("127.0.0.1", 0),
                                                           timeout=self.target.connect_timeout)
            except (paramiko.SSHException, OSError) as exc:
                raise UnreachableError(
                    f"The jump host {hop_target.display} could not reach {dest[0]}:{dest[1]}: {exc}",
                    "Check ProxyJump in ~/.ssh/config and that the jump host allows TCP forwarding.") from exc
        return sock

    # -- commands -----------------------------------------------------------------------
    def run(self, command: str, sudo: bool = False, stdin: Optional[bytes] = None,
            timeout: Optional[float] = None) -> Result:
        """Run `command` with /bin/sh on the device; as root through sudo if asked.

        Sudo is tried without a password first (NOPASSWD); when the device asks for one, the
        password (environment variable or prompt) is written to sudo's stdin, never argv.
        """
        command = _REPORT_PGID + command
        if not sudo or self.is_root:
            return self._exec(command, stdin, timeout)
        if not self._sudo_needs_password:
            result = self._exec("sudo -n -- sh -c " + shlex.quote(command), stdin, timeout, as_root=True)
            if "a password is required" not in result.stderr:
                return self._check_sudo(result)
            self._sudo_needs_password = True
        if stdin is not None:
            raise DeviceError("Internal: stdin cannot be combined with a sudo password.",
                              "Report this as a bug of az edge-tpm.")
        if self._sudo_password is None:
            self._sudo_password = self._sudo_password_cb(self.target)
        secret = (self._sudo_password + "\n").encode()
        result = self._exec("sudo -S -p '' -- sh -c " + shlex.quote(command), secret, timeout, as_root=True)
        return self._check_sudo(result)

    def _check_sudo(self, result: Result) -> Result:
        err = result.stderr
        if result.rc != 0 and ("is not in the sudoers file" in err or "is not allowed to run sudo" in err
                               or "may not run sudo" in err):
            raise PermissionDeniedError(
                f"{self.target.user} may not use sudo on {self.target.display}.",
                "Log in as root, or grant the user sudo rights on the device (e.g. add it to the "
                "sudo group), then run the command again.")
        if result.rc != 0 and ("incorrect password" in err or "Sorry, try again" in err
                               or "no password was provided" in err):
            self._sudo_password = None
            raise AuthError(
                f"sudo on {self.target.display} refused the password for {self.target.user}.",
                f"Set the right password in the environment variable {SUDO_PASSWORD_ENV}, or configure "
                "NOPASSWD sudo for this user.")
        if result.rc == 127 and ("sudo: not found" in err or "sudo: command not found" in err):
            raise DeviceError(f"sudo is not installed on {self.target.display}.",
                              "Install sudo on the device or log in as root.")
        return result

    def _exec(self, command: str, stdin: Optional[bytes], timeout: Optional[float], as_root: bool = False) -> Result:
        if "\x00" in command:  # (the face names the option; this is the last line of defence)
            raise UserInputError("A value holds a NUL character, which no remote command can carry.",
                                 "Remove the NUL character from the values given.")
        timeout = timeout or self.command_timeout
        if STOP.is_set():
            raise stopped()   # (a fleet run is stopping: no further command starts)
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise TransientError(f"The SSH connection to {self.target.display} was lost.",
                                 "Check the device's network and run the command again.")
        try:
            chan = transport.open_session(timeout=self.target.connect_timeout)
        except paramiko.ChannelException as exc:
            raise PermissionDeniedError(
                f"The SSH server of {self.target.display} refused to open a session for a command: {exc}",
                "Check sshd_config on the device (MaxSessions, ForceCommand, or a restricted account in "
                "authorized_keys): az edge-tpm runs ordinary shell commands.") from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from exc
        progress = {"stderr": b""}
        try:
            return self._exchange(chan, command, stdin, timeout, progress)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from exc
        except BaseException:
            # Timed out, or az interrupted (Ctrl+C, SIGTERM, a fleet's stop request): stop the command
            # on the device too, so that no remote work (an apt-get update, say) goes on without
            # anyone waiting for it.
            self._stop_remote(chan, progress, as_root)
            raise
        finally:
            chan.close()

    @staticmethod
    def _stderr_so_far(chan, progress: dict) -> bytes:
        """The start of the command's stderr, read on until the process-group line is there
        (it comes first; a command interrupted at once may not have sent it yet: up to ~2 s)."""
        data = progress["stderr"]
        deadline = time.monotonic() + 2.0
        try:
            while _pgid(data) is None and time.monotonic() < deadline and not chan.closed:
                if chan.recv_stderr_ready():
                    data += chan.recv_stderr(4096)
                elif chan.exit_status_ready():
                    break
                else:
                    time.sleep(0.05)
        except (paramiko.SSHException, EOFError, OSError, socket.timeout):
            pass
        return data

    def _stop_remote(self, chan, progress: dict, as_root: bool) -> None:
        """Stop an abandoned command: SIGTERM through its own channel (RFC 4254 6.9: OpenSSH's sshd
        signals the session's process group, and sudo relays it to the command); at the same time a
        second command gives it SIGNAL_GRACE seconds to end, then sends what is left of its process
        group SIGTERM and, half a second later, SIGKILL (for a server that refuses channel signals -
        OpenSSH does for root logins, which have no privilege separation after login -, a command
        that ignores SIGTERM, or a child that sudo did not pass it to)."""
        pgid = _pgid(self._stderr_so_far(chan, progress))
        transport = self.client.get_transport() if self.client else None
        if transport is None or not transport.is_active():
            return
        if not chan.closed and not chan.exit_status_ready():
            _send_signal(chan, "TERM")
        if not pgid or pgid <= 1:
            return
        ticks = max(1, int(SIGNAL_GRACE * 10))
        script = (f"i=0; while kill -0 -{pgid} 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done; "
                  f"kill -TERM -{pgid} 2>/dev/null || exit 0; i=0; "
                  f"while kill -0 -{pgid} 2>/dev/null && [ $i -lt 5 ]; do sleep 0.1; i=$((i+1)); done; "
                  f"kill -KILL -{pgid} 2>/dev/null; exit 0")
        try:
            # (a fleet that is stopping does not wait: once started, the script runs to its end on the
            # device whatever becomes of this process)
            if self._launch(script, as_root, wait=0 if STOP.is_set() else 5):
                logger.warning("Stopped the command left running on %s.", self.target.display)
            else:
                logger.warning("Stopping the command left running on %s (SIGTERM, then SIGKILL).", self.target.display)
        except (paramiko.SSHException, EOFError, OSError) as exc:  # best effort, the original error matters
            logger.warning("Could not stop the command left running on %s: %s", self.target.display, exc)

    def _launch(self, script: str, as_root: bool, wait: float) -> bool:
        """Start `script` on the device (as root through sudo when `as_root`) without reading its
        output; True when it ended within `wait` seconds with 0. Once started it runs to its end on
        the device even if this process exits (no terminal: nothing hangs it up). The sudo password,
        when one is needed, is the one this session's commands already used (on stdin)."""
        stdin = None
        if as_root and not self.is_root:
            if self._sudo_needs_password and self._sudo_password is not None:
                script, stdin = "sudo -S -p '' -- sh -c " + shlex.quote(script), (self._sudo_password + "\n").encode()
            else:
                script = "sudo -n -- sh -c " + shlex.quote(script)
        chan = self.client.get_transport().open_session(timeout=min(3.0, self.target.connect_timeout))
        chan.exec_command(script)
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        return wait > 0 and chan.status_event.wait(wait) and chan.recv_exit_status() == 0

    def _lost(self, exc: Exception) -> TransientError:
        return TransientError(f"The SSH connection to {self.target.display} failed during a command: {exc}",
                              "Check the device's network and run the command again; the steps can be "
                              "re-run safely.")

    def _exchange(self, chan, command: str, stdin: Optional[bytes], timeout: float, progress: dict) -> Result:
        chan.settimeout(1.0)
        chan.exec_command(command)
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = io.BytesIO(), io.BytesIO()
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        probe_after = max(self.target.connect_timeout, 2.0)
        while True:
            progressed = False
            while chan.recv_ready():
                out.write(chan.recv(65536))
                progressed = True
            while chan.recv_stderr_ready():
                err.write(chan.recv_stderr(65536))
                progressed = True
            if progressed and len(progress["stderr"]) < 200:
                progress["stderr"] = err.getvalue()[:200]  # (where the command's process group is named)
            if out.tell() > MAX_OUTPUT_BYTES or err.tell() > MAX_OUTPUT_BYTES:
                # a device answering with endless output (a broken or hostile tool) must not
                # exhaust this machine's memory: stop reading (closing the channel stops it)
                raise DeviceError(
                    f"A command on {self.target.display} printed more than {MAX_OUTPUT_BYTES // 2**20} MiB; "
                    "az edge-tpm stopped reading it.",
                    "Check the tools on the device (tpm2-tools, dpkg, iotedge): one of them prints far more "
                    "than it should, e.g. a wrapper script or a broken install.")
            # Done when the exit status is in AND the server said EOF (or closed): sshd may send the
            # exit status before the last of the command's stderr, which would otherwise be cut off.
            if (chan.exit_status_ready() and (chan.eof_received or chan.closed)
                    and not chan.recv_ready() and not chan.recv_stderr_ready()):
                break
            if STOP.is_set():
                raise stopped()   # (a fleet run is stopping: _exec stops the command on the device)
            if time.monotonic() > deadline:
                raise UnreachableError(
                    f"A command on {self.target.display} did not finish within {timeout:.0f}s.",
                    "Check the device's load and network; the step can be re-run safely.")
            if progressed:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > probe_after:
                # a long silent command: is the device still there? (A frozen or cut-off device
                # would otherwise keep us waiting for the whole command timeout.)
                if not _answers(chan.get_transport(), self.target.connect_timeout):
                    raise UnreachableError(
                        f"{self.target.display} stopped answering during a command (no reply to an SSH "
                        f"keepalive within {self.target.connect_timeout:.0f}s).",
                        "Check that the device is powered and reachable (network, load), then run the command "
                        f"again; the steps can be re-run safely. {option('ssh_timeout')} sets how long to wait.")
                quiet_since = time.monotonic()
            if not progressed:
                # Woken at once when the exit status arrives; output is drained every 0.25 s meanwhile
                # (a fleet runs many long commands at once: no 10 ms polling loop per device).
                if chan.status_event.is_set():
                    time.sleep(0.005)  # the exit status is in; its EOF is a packet away
                else:
                    chan.status_event.wait(0.25)
        rc = chan.recv_exit_status()
        if rc == -1 and not chan.get_transport().is_active():
            raise EOFError("the connection closed before the command ended")
        stderr = _PGID_LINE.sub(b"", err.getvalue(), count=1)
        return Result(rc, out.getvalue().decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))

    # -- files --------------------------------------------------------------------------
    def _sftp_channel(self):
        """The session's SFTP channel (one for all its uploads: each channel costs round trips)."""
        if self._sftp is None or self._sftp.sock.closed:
            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise LocalFileError(
                    f"The SSH server of {self.target.display} offers no SFTP, which is needed to copy files: "
                    f"{exc or type(exc).__name__}",
                    "Enable SFTP on the device (OpenSSH: `Subsystem sftp internal-sftp` in /etc/ssh/sshd_config; "
                    "Dropbear: install openssh-sftp-server), then run the command again.") from exc
        return self._sftp

    def upload(self, data: bytes, remote_path: str, mode: int = 0o600, exclusive: bool = False) -> None:
        """Write bytes to a path the login user may write, through SFTP (`exclusive`: the file must
        not exist yet)."""
        sftp = self._sftp_channel()
        try:
            with sftp.open(remote_path, "wxb" if exclusive else "wb") as handle:
                handle.chmod(mode)
                handle.write(data)
        except OSError as exc:
            raise LocalFileError(f"Cannot write {remote_path} on {self.target.display}: {exc}",
                                 "Check the free space and permissions on the device.") from exc
        except (paramiko.SSHException, EOFError) as exc:
            self._sftp = None
            raise self._lost(exc) from exc

    def staging_dir(self) -> str:
        """A new private directory for uploads under the fixed staging place of the login user,
        STAGING_ROOT/<user> (0700, the user's; STAGING_ROOT is root's, 0711). The session's first
        call empties that place, so that what an earlier run left there (its connection dropped
        between upload and cleanup) is gone once this run starts staging."""
        base = self._staging_place()
        made = self.run(f"umask 077; mktemp -d {shlex.quote(base)}/run.XXXXXX").stdout.strip()
        if not made.startswith(base + "/run."):
            raise LocalFileError(f"Cannot create a staging directory under {base} on {self.target.display}.",
                                 "Check the free space on the device.")
        return made

    def _staging_place(self) -> str:
        """STAGING_ROOT/<user>, emptied (made anew) on the session's first call."""
        import hashlib
        user = self.target.user or "root"
        name = user if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", user) else \
            "u-" + hashlib.sha256(user.encode()).hexdigest()[:16]  # never a path of its own
        base = f"{STAGING_ROOT}/{name}"
        if self._staging_base is None:
            q = shlex.quote(base)
            result = self.run(f"umask 022; mkdir -p {STAGING_ROOT} && chmod 0711 {STAGING_ROOT} && rm -rf -- {q} && "
                              f"mkdir -m 0700 -- {q} && chown -- {shlex.quote(user)}: {q}", sudo=True)
            if not result.ok:
                raise LocalFileError(
                    f"Cannot prepare the staging directory {base} on {self.target.display}: "
                    f"{result.stderr.strip()[-300:]}", "Check the free space and permissions under /var/lib on the "
                    "device.")
            self._staging_base = base
        return base

    def install_file(self, data: bytes, dest: str, mode: int = 0o600, owner: str = "root",
                     group: str = "root") -> None:
        """Atomically replace `dest` (as root) with `data`: the bytes go to a private staging
        directory over SFTP, then `install` writes `dest.tmp-edgetpm` with the final mode and
        owner next to `dest`, and `mv -f` renames it into place. A failure leaves `dest` as it was.
        """
        import secrets
        # The staging place is this session's (made anew by its first use, 0700, the login
        # user's): a random name in it needs no directory of its own.
        staged = f"{self._staging_place()}/{secrets.token_hex(8)}.payload"
        try:
            self.upload(data, staged, 0o600, exclusive=True)
        except BaseException:
            try:
                self.run(f"rm -f -- {shlex.quote(staged)}")
            except EdgeTpmError:
                pass  # (a lost connection: the next run's first staging empties the place)
            raise
        part = dest + ".tmp-edgetpm"
        q_staged, q_part = shlex.quote(staged), shlex.quote(part)
        # One command: install, rename into place, and remove the staged copy whatever happened.
        script = (f"install -m {mode:o} -o {shlex.quote(owner)} -g {shlex.quote(group)} {q_staged} {q_part} "
                  f"&& mv -f {q_part} {shlex.quote(dest)}; rc=$?; rm -f -- {q_staged} {q_part}; exit $rc")
        result = self.run(script, sudo=True)
        if not result.ok:
            raise LocalFileError(f"Cannot write {dest} on {self.target.display}: {result.stderr.strip()}",
                                 "Check the free space and permissions on the device.")


# Every command first reports its process group on stderr (the line is taken out again), so
# that an abandoned command can be stopped: sshd makes each session's shell a group leader, and
# sudo (use_pty) runs the command in a group of its own.
_REPORT_PGID = '{ read -r _ _ _ _ P _ < /proc/$$/stat; } 2>/dev/null; echo "@@EDGETPM-PGID ${P:-$$}" >&2\n'
_PGID_LINE = re.compile(rb"^@@EDGETPM-PGID \d+\n", re.MULTILINE)


def _send_signal(chan, name: str) -> None:
    """A "signal" channel request (RFC 4254 6.9), which paramiko's Channel has no method for;
    built as paramiko's own requests are (Channel.resize_pty). Best effort: no reply is asked for."""
    from paramiko.common import cMSG_CHANNEL_REQUEST
    from paramiko.message import Message
    message = Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(chan.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string(name)
    try:
        chan.transport._send_user_message(message)  # pylint: disable=protected-access
    except (paramiko.SSHException, EOFError, OSError):
        pass


def _answers(transport, timeout: float) -> bool:
    """Whether the SSH server replies to a keepalive request within `timeout` seconds (any reply,
    OpenSSH's "request failed" included, shows it is alive). paramiko waits without a limit, so
    the request runs in a helper thread; it ends with the connection if the server never answers."""
    import threading
    if transport is None or not transport.is_active():
        return False
    replied = threading.Event()

    def ask():
        try:
            transport.global_request("keepalive@openssh.com", wait=True)
        except Exception:  # pylint: disable=broad-except  # a dead transport: no reply
            return
        if transport.is_active():
            replied.set()

    threading.Thread(target=ask, name="edgetpm-keepalive", daemon=True).start()
    return replied.wait(timeout)


def _pgid(stderr: bytes) -> Optional[int]:
    match = re.search(rb"^@@EDGETPM-PGID (\d+)$", stderr or b"", re.MULTILINE)
    return int(match.group(1)) if match else None


def _unusable_key_files(paths) -> dict:
    """The key files paramiko cannot load, with why (an encrypted key counts as usable)."""
    out = {}
    for path in paths or []:
        try:
            paramiko.PKey.from_path(path)
        except (paramiko.PasswordRequiredException, TypeError):  # encrypted ("Password was not given")
            continue
        except (paramiko.SSHException, paramiko.UnknownKeyType, ValueError, OSError) as exc:
            out[path] = str(exc) or type(exc).__name__
    return out


def _describe_socket_error(target: SshTarget, exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        exc = next(iter(errors.values()))
    code = getattr(exc, "errno", None)
    if code == errno.ECONNREFUSED:
        return f"{target.display} refused the connection (nothing listens on port {target.port})."
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{target.display} is unreachable from this machine ({os.strerror(code)})."
    return f"Cannot connect to {target.display}: {exc}"


def default_sudo_password(target: SshTarget) -> str:
    """The sudo password: from the environment variable, else a prompt on a terminal."""
    secret = os.environ.get(SUDO_PASSWORD_ENV)
    if secret:
        return secret
    from knack.prompting import NoTTYException, prompt_pass
    try:
        return prompt_pass(f"sudo password for {target.user} on {target.hostname}: ")
    except NoTTYException as exc:
        raise AuthError(
            f"sudo on {target.display} needs a password for {target.user}, and there is no terminal to ask on.",
            f"Put the password in the environment variable {SUDO_PASSWORD_ENV} (in a pipeline, from a "
            "secret variable), configure NOPASSWD sudo, or log in as root. (sudo asks for a password "
            "before it checks whether the user has sudo rights at all.)") from exc
