"""Turns `--host user@host[:port]` and the SSH options into one connection target.

Pure parsing, no network and no paramiko import (paramiko's SSHConfig is imported lazily),
so it can be used when validating arguments.
"""
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from azext_edgetpm.echo import shown
from azext_edgetpm.errors import UserInputError, option

DEFAULT_SSH_CONFIG = os.path.join("~", ".ssh", "config")
DEFAULT_KNOWN_HOSTS = os.path.join("~", ".ssh", "known_hosts")
MAX_HOST_LENGTH = 300  # user (32) @ host name (253) : port

_HOST_RE = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<name>[A-Za-z0-9_.\-]+))"
    r"(?::(?P<port>\d{1,5}))?$"
)


@dataclass
class SshTarget:
    """Where and as whom to connect. `alias` is what the user typed; `hostname` is where
    ~/.ssh/config sends it (they differ for a Host alias)."""
    alias: str
    hostname: str
    port: int = 22
    user: Optional[str] = None
    key_filenames: List[str] = field(default_factory=list)
    proxy_jump: Optional[str] = None
    connect_timeout: float = 15.0
    ssh_config: Optional[str] = None

    @property
    def display(self) -> str:
        """user@host:port, as shown in messages (never carries secrets)."""
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{user}{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name under which OpenSSH records this host's key in known_hosts."""
        if self.port == 22:
            return self.hostname
        return f"[{self.hostname}]:{self.port}"


def split_host(value: str):
    """Split `user@host[:port]` (IPv6 as `[addr]:port`) into (user, host, port)."""
    if len(value or "") > MAX_HOST_LENGTH:
        raise UserInputError(
            f"{option('host')} is {len(value):,} characters long; at most {MAX_HOST_LENGTH} are accepted: "
            f"{shown(value)}",
            "Give [user@]host[:port]: a host name has at most 253 characters.")
    match = _HOST_RE.match((value or "").strip())
    name = match and (match.group("v6") or match.group("name"))
    if name and (len(name) > 253 or any(len(label) > 63 for label in name.split("."))):
        raise UserInputError(f"{option('host')} {shown(value)} names no valid host: a host name has at most 253 "
                             "characters, 63 per dot-separated label.", f"Check the spelling of {option('host')}.")
    if not match:
        raise UserInputError(
            f"{option('host')} {shown(value)} is not of the form [user@]host[:port].",
            "Give a host name, an IP address (IPv6 in brackets: [fd00::1]:22) or a Host alias "
            "from ~/.ssh/config, optionally preceded by user@ and followed by :port.")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise UserInputError(f"Port {port} in {option('host')} is out of range.",
                             "Use a TCP port between 1 and 65535.")
    return match.group("user"), match.group("v6") or match.group("name"), int(port) if port else None


def resolve_target(host: str, ssh_user: Optional[str] = None, ssh_port: Optional[int] = None,
                   ssh_key: Optional[str] = None, ssh_config: Optional[str] = None,
                   connect_timeout: float = 15.0) -> SshTarget:
    """Combine --host, the explicit SSH options and ~/.ssh/config into a target.

    Precedence, as with OpenSSH: explicit options, then what --host spells out, then the
    matching ~/.ssh/config entry (HostName, User, Port, IdentityFile, ProxyJump), then
    defaults (port 22, the local user name).
    """
    user, name, port = split_host(host)
    cfg = _lookup_ssh_config(name, ssh_config)
    hostname = cfg.get("hostname", name)
    final_user = ssh_user or user or cfg.get("user") or _local_user()
    final_port = ssh_port or port or _config_port(cfg.get("port", "22"), name)
    keys = [os.path.expanduser(ssh_key)] if ssh_key else [
        os.path.expanduser(k) for k in cfg.get("identityfile", []) if os.path.exists(os.path.expanduser(k))]
    if ssh_key and not os.path.isfile(keys[0]):
        raise UserInputError(f"SSH key file {shown(ssh_key)} does not exist.",
                             f"Check the path given with {option('ssh_key')}.")
    proxy = cfg.get("proxyjump")
    if proxy and proxy.lower() == "none":
        proxy = None
    return SshTarget(alias=name, hostname=hostname, port=final_port, user=final_user,
                     key_filenames=keys, proxy_jump=proxy, connect_timeout=connect_timeout,
                     ssh_config=ssh_config)


def _config_port(value: str, name: str) -> int:
    if not str(value).isdigit() or not 0 < int(value) < 65536:
        raise UserInputError(
            f"The SSH config gives Port {shown(value)} for {shown(name)}, which is not a TCP port.",
            f"Fix the Port line of that Host entry (1-65535), or pass {option('ssh_port')}.")
    return int(value)


class _IndexedConfig:
    """An ssh_config parsed once (paramiko's SSHConfig) with its Host blocks indexed by literal host
    name: a lookup hands paramiko the blocks that can match (those naming the host, in file order,
    and every block with a wildcard, a negation or a Match), so that its cost does not grow with a
    file of one Host block per device. With canonicalization configured, the whole file is used."""

    def __init__(self, config, stamp):
        self.config, self.stamp = config, stamp
        self.literal: Dict[str, List[int]] = {}
        self.always: List[int] = []
        blocks = config._config  # pylint: disable=protected-access
        self.whole = any(str(b["config"].get("canonicalizehostname", "no")).lower() in ("yes", "always")
                         for b in blocks)
        for number, block in enumerate(blocks):
            hosts = block.get("host")
            if "matches" in block or not hosts or any(c in h for h in hosts for c in "*?[!"):
                self.always.append(number)
            else:
                for host in set(hosts):
                    self.literal.setdefault(host, []).append(number)

    def lookup(self, name: str) -> dict:
        if self.whole:
            return dict(self.config.lookup(name))
        import paramiko
        blocks = self.config._config  # pylint: disable=protected-access
        chosen = sorted(set(self.always).union(self.literal.get(name, ())))
        subset = paramiko.SSHConfig()
        subset._config = [blocks[i] for i in chosen]  # pylint: disable=protected-access
        return dict(subset.lookup(name))


_CONFIGS: Dict[str, _IndexedConfig] = {}
_CONFIGS_LOCK = threading.Lock()


def _lookup_ssh_config(name: str, path: Optional[str]) -> dict:
    """The options ~/.ssh/config gives `name` (parsed once per run and indexed: see _IndexedConfig;
    parsed again when the file changes)."""
    path = os.path.abspath(os.path.expanduser(path or DEFAULT_SSH_CONFIG))
    try:
        info = os.stat(path)
    except OSError:
        return {}
    if not stat.S_ISREG(info.st_mode):
        return {}
    stamp = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    with _CONFIGS_LOCK:
        indexed = _CONFIGS.get(path)
        if indexed is None or indexed.stamp != stamp:
            import paramiko  # deferred: only when a config file exists and a command runs
            try:
                config = paramiko.SSHConfig.from_path(path)
            except (OSError, UnicodeDecodeError, paramiko.ssh_exception.ConfigParseError) as exc:
                raise UserInputError(f"Cannot read SSH config {path}: {exc}",
                                     f"Fix the file, or point {option('ssh_config')} at another one.") from exc
            indexed = _CONFIGS[path] = _IndexedConfig(config, stamp)
    return indexed.lookup(name)


def _local_user() -> str:
    import getpass
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root"
