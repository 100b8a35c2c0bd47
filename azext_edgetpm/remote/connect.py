"""Opening SSH connections to a device: directly or through its ProxyJump hosts, with the
known_hosts file's keys and the host key policy (remote/hostkeys.py), ssh-agent and key files,
retries of transient handshake failures, and one domain error for every failure a user can cause.
"""
import errno
import os
import socket
import time

import paramiko
from knack.log import get_logger

from azext_edgetpm.echo import shown
from azext_edgetpm.errors import AuthError, TransientError, UnreachableError, UserInputError, option

from .hostkeys import HostKeyPolicy, changed_key_error
from .known_hosts import load_known_hosts
from .target import SshTarget, resolve_target, split_host

logger = get_logger(__name__)

TRANSIENT_CONNECT_ATTEMPTS = 4


class Transport(paramiko.Transport):
    """paramiko's transport preferring AES-GCM (every OpenSSH since 6.2 offers it): an AEAD cipher
    needs no separate HMAC per packet, which paramiko computes and compares in Python. Servers
    without it (Dropbear) get the usual CTR + HMAC choices, which stay listed after it."""
    _preferred_ciphers = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") + tuple(
        c for c in paramiko.Transport._preferred_ciphers if "gcm" not in c)  # pylint: disable=protected-access
    # The reader thread wakes on this timeout when the line is idle (10 times a second by default,
    # per device); closing does not wait for it (paramiko closes the socket and packetizer first).
    _active_check_timeout = 1.0


class Connector:
    """Opens the connections of one session with its known_hosts file and host key choice, and
    keeps every client it opened (the jump hosts' and the device's), which close() closes."""

    def __init__(self, known_hosts: str, accept_new_host_key: bool = False):
        self.known_hosts = known_hosts
        self.accept_new_host_key = accept_new_host_key
        self.clients = []

    def open(self, target: SshTarget) -> paramiko.SSHClient:
        """A client connected to `target`, through its ProxyJump chain if it has one."""
        sock = self._jump_channel(target) if target.proxy_jump else None
        return self.connect(target, sock)

    def close(self) -> None:
        for client in reversed(self.clients):
            client.close()
        self.clients = []

    def new_client(self, target: SshTarget) -> paramiko.SSHClient:
        """A client that knows `target`'s keys from known_hosts and refuses the others (HostKeyPolicy)."""
        client = paramiko.SSHClient()
        known = None
        if os.path.isfile(self.known_hosts) or not os.path.exists(self.known_hosts):
            # read once per run and shared; paramiko gets this host's keys only. Revoked keys are
            # left out, so that paramiko hands them to the policy, which refuses them.
            known = load_known_hosts(self.known_hosts)
            known.fill(client.get_host_keys(), target.known_hosts_name)
            if not known.stamp and not self.accept_new_host_key:
                logger.info("Known hosts file %s does not exist.", self.known_hosts)
        client.set_missing_host_key_policy(HostKeyPolicy(self.accept_new_host_key, self.known_hosts, target,
                                                         known))
        return client

    def connect(self, target: SshTarget, sock=None) -> paramiko.SSHClient:
        """A connected client (over `sock`: a jump host's channel), transient handshake failures
        retried; every failure a user can cause is one domain error."""
        delay = 0.5
        for attempt in range(1, TRANSIENT_CONNECT_ATTEMPTS + 1):
            client = self.new_client(target)
            started = time.monotonic()
            try:
                client.connect(
                    target.hostname, port=target.port, username=target.user,
                    key_filename=target.key_filenames or None,
                    allow_agent=True, look_for_keys=not target.key_filenames,
                    timeout=target.connect_timeout, banner_timeout=target.connect_timeout,
                    auth_timeout=target.connect_timeout, sock=sock, transport_factory=Transport)
                self.clients.append(client)
                return client
            except (paramiko.BadHostKeyException) as exc:
                client.close()
                raise changed_key_error(target, self.known_hosts, exc) from exc
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
                if attempt == TRANSIENT_CONNECT_ATTEMPTS or sock is not None:
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

    def _jump_channel(self, target: SshTarget):
        """Connect through the ProxyJump chain and return a channel to the final target."""
        sock = None
        hops = [h.strip() for h in target.proxy_jump.split(",") if h.strip()]
        for index, hop in enumerate(hops):
            user, name, port = split_host(hop)
            hop_target = resolve_target(name, ssh_user=user, ssh_port=port, ssh_config=target.ssh_config,
                                        connect_timeout=target.connect_timeout)
            client = self.connect(hop_target, sock)
            if index + 1 < len(hops):
                _, next_name, next_port = split_host(hops[index + 1])
                nxt = resolve_target(next_name, ssh_port=next_port, ssh_config=target.ssh_config)
                dest = (nxt.hostname, nxt.port)
            else:
                dest = (target.hostname, target.port)
            try:
                sock = client.get_transport().open_channel("direct-tcpip", dest, ("127.0.0.1", 0),
                                                           timeout=target.connect_timeout)
            except (paramiko.SSHException, OSError) as exc:
                raise UnreachableError(
                    f"The jump host {hop_target.display} could not reach {dest[0]}:{dest[1]}: {exc}",
                    "Check ProxyJump in ~/.ssh/config and that the jump host allows TCP forwarding.") from exc
        return sock


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
