"""--no-proxy for dnf (Red Hat Enterprise Linux). dnf.conf's [main] proxy= applies to every
repository, and dnf has no list of hosts to reach directly (dnf.conf(5), dnf 4: only curl's
environment, which a dnf run over SSH does not have). A repository's own `proxy=` with an empty
value turns the inherited proxy off for it (dnf.conf(5) proxy: "Set to an empty string in the
repository configuration to disable proxy setting inherited from the main section"; '_none_' would
leave curl's environment variables in effect). So each repository whose baseurl hosts are all in
--no-proxy gets an empty proxy= after the DIRECT comment, in our .repo file and in the ones
packages-microsoft-prod installed; without a proxy (or once the host is no longer listed) those
lines go again. A repository that sets proxy= itself is left as it is. (Checked with Debian's dnf
4.14 on the dev kit's rhel9 device: test_rhel_install.py.)
"""
import re
from dataclasses import dataclass
from typing import List

DIRECT = "# direct, not through the HTTP proxy: its host is in the no-proxy list (written by az edge-tpm install)"
_REPO_PROXY = re.compile(r"\s*proxy\s*=")


def _direct(proxy, urls: List[str]) -> bool:
    import urllib.parse
    from ..proxy import bypasses
    hosts = []
    for url in urls:
        try:
            hosts.append(urllib.parse.urlsplit(url).hostname)
        except ValueError:
            return False
    return proxy is not None and bool(hosts) and all(h and bypasses(proxy, h) for h in hosts)


def url_is_direct(proxy, url: str) -> bool:
    """Does --no-proxy send `url` around the proxy (its host listed)?"""
    return _direct(proxy, [url])


def repo_with_direct_proxy(text: str, proxy) -> str:
    """A .repo file with our empty `proxy=` (after DIRECT) in each repository section whose baseurl
    hosts `proxy` reaches directly (--no-proxy), and nowhere else; every other line kept."""
    out: List[str] = []
    section: List[str] = []
    dropped = added = 0

    def flush():
        nonlocal added
        if not section:
            return
        header = section[0].strip()
        if header.startswith("[") and header.endswith("]") and header != "[main]":
            body = section[1:]
            urls = [u for line in body if re.match(r"\s*baseurl\s*=", line)
                    for u in re.split(r"[\s,]+", line.split("=", 1)[1]) if u]
            own = any(_REPO_PROXY.match(line) for line in body)
            if not own and _direct(proxy, urls):
                section[1:1] = [DIRECT, "proxy="]
                added += 1
        out.extend(section)
        section.clear()

    lines = (text or "").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == DIRECT:         # ours: the comment and the proxy= line after it
            i += 2 if i + 1 < len(lines) and _REPO_PROXY.match(lines[i + 1]) else 1
            dropped += 1
            continue
        if line.strip().startswith("["):
            flush()
        section.append(line)
        i += 1
    flush()
    if not dropped and not added:
        return text
    return "\n".join(out) + ("\n" if out else "")


@dataclass(frozen=True)
class RepoEdit:
    """A .repo file of packages-microsoft-prod rewritten for --no-proxy (its mode and owner kept)."""
    text: str
    mode: int
    owner: str
    group: str
    direct: bool

    def summary(self, path: str) -> str:
        return f"{path}: " + ("proxy= (direct: its host is in the no-proxy list)" if self.direct else
                              "the proxy= of ours removed")
