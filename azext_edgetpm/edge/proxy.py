"""An HTTP proxy for IoT Edge on a device: the URL (validated, credentials kept out of every
message), the files that carry it (the package manager's: apt's here, dnf's in edge/pkg/dnf.py;
systemd drop-ins of docker / aziot-edged / aziot-identityd, the proxy's CA in the OS's store), and
the reachability probe run on the device before anything changes. ../shared/docs/proxy.md has
the facts.

Credentials: the URL with user:password goes only into root-only files (systemd drop-ins,
config.toml); apt gets them from auth.conf.d, dnf from dnf.conf made root-only; the probe
receives them on stdin. Every message shows `Proxy.display` (password replaced by ***).
"""
import base64
import re
import shlex
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from azext_edgetpm.errors import AuthError, TransientError, UserInputError, option

APT_CONF = "/etc/apt/apt.conf.d/80edge-tpm-proxy"
APT_AUTH = "/etc/apt/auth.conf.d/edge-tpm-proxy.conf"
UNITS = ("docker", "aziot-edged", "aziot-identityd")
OS_CA = "/usr/local/share/ca-certificates/edge-tpm-proxy-ca.crt"            # Debian's store
RHEL_CA = "/etc/pki/ca-trust/source/anchors/edge-tpm-proxy-ca.crt"         # RHEL's (update-ca-trust(8))
DNF_CONF = "/etc/dnf/dnf.conf"   # (read: its [main] gets proxy= lines of ours, edge/pkg/dnf.py)
TRUST_BUNDLE = "/var/aziot/certs/edge-tpm-proxy-ca.pem"
TRUST_BUNDLE_URI = "file://" + TRUST_BUNDLE
DEFAULT_NO_PROXY = ("localhost", "127.0.0.1")
HEADER = "# HTTP proxy of IoT Edge (written by az edge-tpm install; --proxy none removes it)\n"
# The AMQP/MQTT connectivity checks of `iotedge check` go direct (5671/8883): they fail in
# networks where only the proxy leads out.
DIRECT_ONLY_CHECKS = ("host-connect-iothub-amqp", "host-connect-iothub-mqtt",
                      "container-default-connect-upstream-amqp", "container-default-connect-upstream-mqtt",
                      "container-connect-upstream-amqp", "container-connect-upstream-mqtt")
_SECRET_IN_URL = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/@\s\"']*):[^@\s\"']*@", re.IGNORECASE)
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*://")


def dropin(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.service.d/edge-tpm-proxy.conf"


MANAGED_FILES = (APT_CONF, APT_AUTH, OS_CA, RHEL_CA, TRUST_BUNDLE, DNF_CONF) + tuple(dropin(u) for u in UNITS)


def redact(text: Optional[str]) -> Optional[str]:
    """`text` (what a device or a tool printed) with the password of every scheme://user:password@
    URL in it replaced by ***. For a proxy value itself use redact_value, which needs no URL shape."""
    return _SECRET_IN_URL.sub(r"\1:***@", text) if text else text


def redact_value(value) -> str:
    """A proxy value as it may be shown anywhere: everything between the scheme (or the start)
    and the LAST @ replaced by *** -- on the raw text, before any parsing, so that no shape of
    password (spaces, quotes, control characters, / # ? @ :, no scheme at all) gets through."""
    text = "" if value is None else str(value)
    at = text.rfind("@")
    if at < 0:
        return text
    scheme = _SCHEME.match(text)
    start = scheme.end() if scheme and scheme.end() <= at else 0
    return text[:start] + "***" + text[at:]


@dataclass(frozen=True)
class Proxy:
    """A validated http:// proxy (repr and display never show the password)."""
    host: str
    port: int
    user: Optional[str] = field(default=None, repr=False)
    password: Optional[str] = field(default=None, repr=False)
    no_proxy: Tuple[str, ...] = DEFAULT_NO_PROXY
    ca_pem: Optional[bytes] = field(default=None, repr=False)

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """What the runtime's daemons and containers get (Basic auth from the URL only)."""
        if self.user is None:
            return f"http://{self.hostport}"
        user, password = (urllib.parse.quote(v, safe="") for v in (self.user, self.password or ""))
        return f"http://{user}:{password}@{self.hostport}"

    @property
    def display(self) -> str:
        return f"http://{self.user}:***@{self.hostport}" if self.user is not None else f"http://{self.hostport}"

    @property
    def basic_auth(self) -> Optional[str]:
        if self.user is None:
            return None
        return base64.b64encode(f"{self.user}:{self.password or ''}".encode("utf-8")).decode("ascii")


def parse(value: Optional[str], no_proxy: Optional[str] = None, ca_pem: Optional[bytes] = None) -> Optional[Proxy]:
    """--proxy (None / "none": no proxy) with --no-proxy and --proxy-ca's PEM; an
    UserInputError that never echoes the password for anything else."""
    if value is None or value.strip().lower() in ("", "none"):
        if no_proxy or ca_pem:
            raise UserInputError(f"{option('no_proxy')} and {option('proxy_ca')} only go with {option('proxy')} URL.",
                                 f"Add {option('proxy')} http://host:port, or drop them.")
        return None
    text = value.strip()
    # What any message may show of the value: redacted on the raw text, escaped and bounded.
    shown = _shown(redact_value(text))
    form = "http://[user:password@]host:port"
    if re.search(r"[\s\"'\\\x00-\x1f\x7f]", text):
        raise UserInputError(f"{option('proxy')} {shown} contains spaces, quotes, backslashes or control characters.",
                             f"Give the URL as {form} (percent-encode special characters of the password).")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
        host = parts.hostname
    except ValueError:
        # (urllib's text quotes the netloc, the password included: never passed on, nor chained;
        # without an @, what urllib took for host:port may be user:password: not shown either)
        if "@" not in text:
            scheme = _SCHEME.match(text)
            shown = _shown((scheme.group(0).strip() if scheme else "") + "***")
        raise UserInputError(f"{option('proxy')} {shown} is not a URL of the form {form}: its host or port cannot "
                             "be read.", f"Give it as {form}; percent-encode / # ? @ : in the password.") from None
    if parts.scheme.lower() != "http":
        scheme = _shown(parts.scheme) if _SCHEME.match(text) else "(none)"
        raise UserInputError(
            f"{option('proxy')} {shown}: the scheme {scheme} is not supported.",
            "IoT Edge's daemons and containers reach a proxy over plain HTTP (TLS goes through CONNECT): "
            f"give http://host:port, even for a proxy that inspects TLS (add its CA with {option('proxy_ca')}).")
    if not host or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UserInputError(f"{option('proxy')} {shown} is not of the form {form}.",
                             "Give the proxy's host and port only, without a path; percent-encode / # ? in the "
                             "password.")
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    if user is not None and (not user or re.search(r"[\s:\x00-\x1f]", user) or
                             re.search(r"[\s\x00-\x1f]", password or "")):
        raise UserInputError(f"{option('proxy')} {shown}: the user name or password is empty or holds spaces or "
                             "control characters.", "apt's auth.conf cannot hold such credentials; use "
                             "an account whose name and password have none.")
    hosts = list(DEFAULT_NO_PROXY)
    for item in (no_proxy or "").split(","):
        item = item.strip()
        if not item:
            continue
        if not re.fullmatch(r"[A-Za-z0-9.*:\-_/\[\]]+", item):
            raise UserInputError(f"{option('no_proxy')} entry {item!r} is not a host name, domain or address.",
                                 "Give a comma-separated list such as 10.0.0.0/8,.corp.example.com.")
        if item not in hosts:
            hosts.append(item)
    if ca_pem is not None:
        _check_ca(ca_pem)
    return Proxy(host=host.lower(), port=port or 80, user=user, password=password, no_proxy=tuple(hosts),
                 ca_pem=ca_pem)


def _shown(text: str) -> str:
    from azext_edgetpm.echo import shown
    return shown(text, 120)


def _check_ca(pem: bytes) -> None:
    from cryptography import x509
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise UserInputError(f"{option('proxy_ca')} is not a PEM certificate: {exc}",
                             "Give the PEM file of the proxy's root CA (-----BEGIN CERTIFICATE-----).") from exc
    if not certs:
        raise UserInputError(f"{option('proxy_ca')} holds no certificate.", "Give the proxy's root CA as PEM.")


# -- the files ---------------------------------------------------------------------------------
def _systemd(value: str) -> str:
    return value.replace("%", "%%")  # systemd specifiers: a literal % is %%


def apt_files(proxy: Optional[Proxy]) -> Dict[str, Optional[Tuple[bytes, int]]]:
    """apt's proxy files: the proxy in apt.conf.d, credentials in a root-only auth.conf.d file."""
    files: Dict[str, Optional[Tuple[bytes, int]]] = {APT_CONF: None, APT_AUTH: None}
    if proxy is None:
        return files
    bare = f"http://{proxy.hostport}/"
    apt_lines = [f'Acquire::http::Proxy "{bare}";', f'Acquire::https::Proxy "{bare}";']
    for host in proxy.no_proxy:
        if re.fullmatch(r"[A-Za-z0-9.\-]+", host):
            apt_lines += [f'Acquire::http::Proxy::{host} "DIRECT";', f'Acquire::https::Proxy::{host} "DIRECT";']
    files[APT_CONF] = ((HEADER.replace("#", "//", 1) + "\n".join(apt_lines) + "\n").encode(), 0o644)
    if proxy.user is not None:
        # With the scheme: apt (2.6 on Debian 12, apt_auth.conf(5)) matches a `machine` without one only for
        # https and tor+https, and ignores it for this http:// proxy ("Annotate with http:// to use").
        files[APT_AUTH] = ((HEADER + f"machine http://{proxy.hostport} login {proxy.user} password "
                            f"{proxy.password}\n").encode(), 0o600)
    return files


def wanted_files(proxy: Optional[Proxy], pkg=None, facts=None) -> Dict[str, Optional[Tuple[bytes, int]]]:
    """{path: (content, mode)} of every proxy file, None where the file must not exist. `pkg`: the
    device's package manager (edge/pkg; apt when not given), whose proxy settings and CA store apply;
    `facts`: the device's, for a file of the system that only gets lines of ours (dnf.conf)."""
    if pkg is None:
        from .pkg import by_name
        pkg = by_name("apt")
    files: Dict[str, Optional[Tuple[bytes, int]]] = {path: None for path in MANAGED_FILES
                                                     if path not in (TRUST_BUNDLE, DNF_CONF)}
    files.update(pkg.proxy_files(proxy, facts))
    if proxy is None:
        return files
    secret = proxy.user is not None
    url = _systemd(proxy.url)
    no_proxy = _systemd(",".join(proxy.no_proxy))
    for unit in UNITS:
        lines = [f'Environment="https_proxy={url}"']
        if unit == "docker":
            lines += [f'Environment="http_proxy={url}"', f'Environment="NO_PROXY={no_proxy}"']
        text = HEADER + "[Service]\n" + "\n".join(lines) + "\n"
        files[dropin(unit)] = (text.encode(), 0o600 if secret else 0o644)
    if proxy.ca_pem:
        files[pkg.ca_anchor] = (proxy.ca_pem if proxy.ca_pem.endswith(b"\n") else proxy.ca_pem + b"\n", 0o644)
    return files


def differences(facts, proxy: Optional[Proxy], pkg=None) -> Dict[str, Optional[Tuple[bytes, int]]]:
    """The proxy files whose content or mode differ from what they must be."""
    out = {}
    for path, want in wanted_files(proxy, pkg, facts).items():
        have = facts.file(path)
        if want is None:
            if have is not None:
                out[path] = None
        elif have is None or have.data != want[0] or have.mode != want[1] or have.owner != "root":
            out[path] = want
    return out


# -- can the device get out? -------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    label: str       # "the package source", "DPS"
    url: str         # what is fetched (shown to the user)
    host: str
    port: int
    tunnel: bool     # https: CONNECT through a proxy; http: GET with an absolute URL


def target(label: str, url: str) -> Optional[Target]:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    https = parts.scheme == "https"
    return Target(label, url, parts.hostname, port or (443 if https else 80), https)


_PROBE = r"""
IFS= read -r AUTH || true
direct() {
  out=$(timeout 6 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$2" "$3" 2>&1); rc=$?
  echo "@@DIRECT $1 $rc ${out##*: }"
}
viaproxy() {
  out=$(AUTH="$AUTH" timeout 10 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 7
    if [ "$2" = tunnel ]; then req="CONNECT $3 HTTP/1.1"; else req="HEAD $4 HTTP/1.1"; fi
    if [ -n "$AUTH" ]; then
      printf "%s\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\nConnection: close\r\n\r\n" "$req" "$3" "$AUTH" >&3
    else
      printf "%s\r\nHost: %s\r\nConnection: close\r\n\r\n" "$req" "$3" >&3
    fi
    IFS= read -r line <&3 && echo "$line"' "$PH" "$PP" "$2" "$3" "$4" 2>&1); rc=$?
  echo "@@PROXY $1 $rc $(printf %s "$out" | tr -d '\r' | head -n 1)"
}
"""


def bypasses(proxy: Proxy, host: str) -> bool:
    """Whether NO_PROXY sends `host` around the proxy (a name, a .domain suffix, an address or network)."""
    import ipaddress
    host = host.lower().strip("[]")
    for entry in proxy.no_proxy:
        entry = entry.lower().strip("[]")
        if entry == "*" or host == entry or (entry.startswith(".") and host.endswith(entry)) or \
                host.endswith("." + entry.lstrip("*.")):
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def probe_script(targets: List[Target], proxy: Optional[Proxy]) -> str:
    lines = [_PROBE]
    if proxy is not None:
        lines.append(f"PH={shlex.quote(proxy.host)}; PP={proxy.port}")
    for i, t in enumerate(targets):
        if proxy is None or bypasses(proxy, t.host):
            lines.append(f"direct {i} {shlex.quote(t.host)} {t.port}")
        else:
            hostport = f"[{t.host}]:{t.port}" if ":" in t.host else f"{t.host}:{t.port}"
            lines.append(f"viaproxy {i} {'tunnel' if t.tunnel else 'get'} {shlex.quote(hostport)} "
                         f"{shlex.quote(t.url)}")
    return "\n".join(lines) + "\n"


def check_reachable(session, targets: List[Target], proxy: Optional[Proxy], display: str) -> List[str]:
    """Probe, from the device (as the login user), the package source and DPS: directly, or
    through the proxy. Raises when the network clearly blocks them; returns notes otherwise."""
    if not targets:
        return []
    script = probe_script(targets, proxy)
    secret = ((proxy.basic_auth or "") + "\n").encode() if proxy is not None else b"\n"
    result = session.run("bash -c " + shlex.quote(script), stdin=secret, timeout=120)
    found = {}
    for line in result.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag in ("@@DIRECT", "@@PROXY"):
            index, _, rest = rest.partition(" ")
            rc, _, text = rest.partition(" ")
            if index.isdigit() and rc.lstrip("-").isdigit():
                found[int(index)] = (int(rc), _scrub(text.strip(), proxy))
    if len(found) != len(targets):
        if "bash" in result.stderr and ("not found" in result.stderr or result.rc == 127):
            return [f"Could not check the network of {display} (no bash): skipped."]
        return [f"Could not check the network of {display}: {_scrub(result.stderr.strip(), proxy)[:200]}"]
    notes = []
    for i, t in enumerate(targets):
        rc, text = found[i]
        if proxy is None or bypasses(proxy, t.host):
            _judge_direct(t, rc, text, display, notes)
        else:
            _judge_proxy(t, rc, text, proxy, display)
    return notes


def _scrub(text: str, proxy: Optional[Proxy]) -> str:
    """What the device printed, without any URL password nor this proxy's credentials in any form."""
    text = redact(text) or ""
    if proxy is not None and proxy.password:
        for secret in (proxy.password, urllib.parse.quote(proxy.password, safe=""), proxy.basic_auth):
            text = text.replace(secret, "***")
    return text


def _judge_direct(t: Target, rc: int, text: str, display: str, notes: List[str]) -> None:
    if rc == 0:
        return
    if "refused" in text.lower():
        notes.append(f"{display} reaches {t.host} but nothing accepts connections on port {t.port} ({t.label}).")
        return
    why = "timed out" if rc == 124 else (text or f"exit {rc}")
    raise TransientError(
        f"{display} cannot reach {t.label} ({t.host}:{t.port}) directly: {why}. Its network does not let it "
        "connect there; nothing was changed.",
        f"If the device's network leads out only through an HTTP proxy, pass {option('proxy')} http://proxy:port "
        f"(with credentials: {option('proxy')} @file, a file holding http://user:password@proxy:port); otherwise "
        "open the device's firewall to that address.")


def _judge_proxy(t: Target, rc: int, text: str, proxy: Proxy, display: str) -> None:
    status = re.match(r"HTTP/\d(?:\.\d)?\s+(\d{3})", text)
    code = int(status.group(1)) if status else None
    if code is None:
        why = "timed out" if rc == 124 else (text or f"exit {rc}")
        raise TransientError(
            f"{display} cannot reach the proxy {proxy.display}: {why}. Nothing was changed.",
            f"Check the proxy's host and port ({option('proxy')}) and that the device's network allows it.")
    if code in (401, 407):
        # (407 is the standard answer; some proxies, tinyproxy among them, answer wrong credentials with 401)
        raise AuthError(
            f"The proxy {proxy.display} refused {'the credentials' if proxy.user else 'to work without credentials'} "
            f"of {display} ({text}). Nothing was changed.",
            f"Give the proxy's user and password in the URL of {option('proxy')} (as a file: {option('proxy')} @file).")
    if code == 403 or code >= 500 or (t.tunnel and code != 200):
        raise TransientError(
            f"The proxy {proxy.display} did not let {display} reach {t.label} ({t.host}:{t.port}): {text}. "
            "Nothing was changed.",
            f"Allow {t.host}:{t.port} on the proxy (IoT Edge needs its DPS endpoint, IoT hub, package source and "
            f"container registries on 443), or list the host in {option('no_proxy')} if the device reaches it "
            "directly.")


def check_file_readable(path: str) -> bytes:
    """The proxy CA's PEM file (--proxy-ca, the proxy_ca column), read bounded."""
    from azext_edgetpm.files import LIMITS, read_bounded
    return read_bounded(path, LIMITS["ca_bundle"], f"The CA file of {option('proxy_ca')}", field="proxy_ca",
                        hint="Give the PEM file of the proxy's root CA.")
