"""`iotedge check` for the stand-in runtime.

JSON output has the real shape: ``{"additional_info": {...}, "checks": {ID: {"result":
{"result": "ok"|"warning"|"error"|"fatal"|"skipped"|"ignored", "details": [...]},
"additional_info": ...}}}``; the exit code is 1 when any check is an error or fatal.
"""
import base64
import http.client
import json
import os
import platform
import socket
import ssl
import sys
import urllib.parse

from . import services, store, superconfig
from . import tomlcompat as tomllib

MARKS = {"ok": "\u221a", "warning": "\u203c", "error": "\u00d7", "fatal": "\u00d7",
         "skipped": "\u00d7", "ignored": "\u221a"}


def _well_formed(service):
    """``<service>-config-well-formed``: the per-service file parses."""
    path = services.CONFIG_D % service
    try:
        with open(path, "rb") as f:
            tomllib.load(f)
    except FileNotFoundError:
        return "error", ["%s does not exist." % path,
                         "Did you run 'iotedge config apply'?"]
    except (OSError, tomllib.TOMLDecodeError) as err:
        return "error", ["could not parse %s: %s" % (path, err)]
    return "ok", []


def _up_to_date(names):
    """``configs-up-to-date`` / ``config-up-to-date``: config.toml not newer than the files."""
    config = "/etc/aziot/config.toml"
    if not os.path.exists(config):
        return "ignored", []
    for name in names:
        path = services.CONFIG_D % name
        if not os.path.exists(path):
            return "warning", ["%s does not exist." % path, "Did you run 'iotedge config apply'?"]
        if os.stat(config).st_mtime > os.stat(path).st_mtime:
            return "warning", ["%s was modified after %s's config" % (config, name),
                               "You must run 'iotedge config apply' to update %s's config "
                               "with the latest config.toml" % name]
    return "ok", []


def _tpmd_running():
    """``tpmd-running`` as aziotctl/src/internal/check/checks/daemons_running.rs: it only
    connects to tpmd's socket. Under systemd that socket belongs to aziot-tpmd.socket, which
    accepts connections even while aziot-tpmd itself fails and restarts, so it passes whenever
    the socket unit listens; it says nothing about access to the TPM."""
    if os.path.exists("/var/lib/devkit-systemctl/disabled/aziot-tpmd.socket") and \
            store.services()["aziot-tpmd"]["state"] != "active":
        return "error", ["Could not connect to tpmd on unix:///run/aziot/tpmd.sock",
                         "caused by: No such file or directory (os error 2)"]
    return "ok", []


def _dps_endpoint():
    """``host-connect-dps-endpoint``: TCP + TLS handshake with the DPS global endpoint."""
    prov = services.service_config("identityd").get("provisioning", {})
    if prov.get("source") != "dps":
        return "ignored", []
    url = urllib.parse.urlparse(prov["global_endpoint"])
    host, port = url.hostname, url.port or 443
    # Like the real check: through the proxy of [agent.env] https_proxy (else the caller's
    # https_proxy), CONNECT then TLS; directly without one.
    proxy = ((services.service_config("edged").get("agent", {}).get("env") or {}).get("https_proxy")
             or os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY"))
    try:
        if proxy:
            parts = urllib.parse.urlsplit(proxy)
            headers = {}
            if parts.username is not None:
                pair = "%s:%s" % (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
                headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            conn = http.client.HTTPSConnection(parts.hostname, parts.port or 80, timeout=5,
                                               context=ssl.create_default_context())
            conn.set_tunnel(host, port, headers=headers)
            try:
                conn.connect()
            finally:
                conn.close()
        else:
            with socket.create_connection((host, port), timeout=5) as sock:
                with ssl.create_default_context().wrap_socket(sock, server_hostname=host):
                    pass
    except (OSError, ssl.SSLError, ValueError, http.client.HTTPException) as err:
        return "error", ["Could not connect to %s:%d" % (host, port), str(err)]
    return "ok", []


def _container_engine():
    """``container-engine-uri``: the engine answers on the configured URI."""
    uri = services.service_config("edged").get("moby_runtime", {}).get(
        "uri", superconfig.DEFAULT_MOBY_URI)
    if services.engine_reachable(uri):
        return "ok", []
    return "error", ["Could not communicate with container engine at %s." % uri,
                     "Please check your moby-engine installation and ensure the service "
                     "is running."]


def _logrotate():
    """``container-engine-logrotate``: the engine's log driver limits log growth."""
    try:
        with open("/etc/docker/daemon.json", "r", encoding="utf-8") as f:
            daemon = json.load(f)
    except (OSError, ValueError):
        daemon = {}
    if daemon.get("log-driver") == "local" or "max-size" in daemon.get("log-opts", {}):
        return "ok", []
    return "warning", ["Container engine is not configured to rotate module logs which may "
                       "cause it run out of disk space.",
                       "Please see https://aka.ms/iotedge-prod-checklist-logs for best "
                       "practices."]


def _proxy_settings():
    """``proxy-settings``: edgeAgent's https_proxy ([agent.env] of the applied config) and the
    https_proxy of aziot-edged, aziot-identityd and docker (`systemctl show`), compared as
    exact strings; all empty passes."""
    agent = (services.service_config("edged").get("agent", {}).get("env") or {}).get("https_proxy", "")
    daemons = [services.unit_environment(u).get("https_proxy", "")
               for u in ("aziot-edged", "aziot-identityd", "docker")]
    if all(v == agent for v in daemons):
        return "ok", []
    return "warning", ['The proxy setting for IoT Edge Agent "%s", IoT Edge Daemon "%s", IoT Identity Daemon '
                       '"%s", and Moby "%s" may need to be identical.' % tuple([agent] + daemons)]


CHECKS = (
    ("Configuration checks (aziot-identity-service)", (
        ("keyd-config-well-formed", "keyd configuration is well-formed",
         lambda: _well_formed("keyd")),
        ("certd-config-well-formed", "certd configuration is well-formed",
         lambda: _well_formed("certd")),
        ("tpmd-config-well-formed", "tpmd configuration is well-formed",
         lambda: _well_formed("tpmd")),
        ("identityd-config-well-formed", "identityd configuration is well-formed",
         lambda: _well_formed("identityd")),
        ("configs-up-to-date", "daemon configurations up-to-date with config.toml",
         lambda: _up_to_date(("keyd", "certd", "tpmd", "identityd"))),
        ("tpmd-running", "tpmd is running", _tpmd_running),
    )),
    ("Connectivity checks (aziot-identity-service)", (
        ("host-connect-dps-endpoint", "host can connect to and perform TLS handshake with "
         "DPS endpoint", _dps_endpoint),
    )),
    ("Configuration checks", (
        ("aziot-edged-config-well-formed", "aziot-edged configuration is well-formed",
         lambda: _well_formed("edged")),
        ("config-up-to-date", "configuration up-to-date with config.toml",
         lambda: _up_to_date(("edged",))),
        ("container-engine-uri", "container engine is installed and functional",
         _container_engine),
        ("container-engine-logrotate", "production readiness: logs policy", _logrotate),
        ("proxy-settings", "proxy settings are consistent in aziot-edged, aziot-identityd, moby daemon "
         "and config.toml", _proxy_settings),
    )),
)


def run(args):
    """`iotedge check [--output json|text] [--verbose] [--dont-run ID...]`."""
    as_json = any(a in ("json", "--output=json", "-ojson") for a in args)
    dont_run = set()
    if "--dont-run" in args:
        for arg in args[args.index("--dont-run") + 1:]:
            if arg.startswith("-"):
                break
            dont_run.add(arg)
    results = {}
    counts = {}
    for section, items in CHECKS:
        if not as_json:
            print(section)
            print("-" * len(section))
        for check_id, description, func in items:
            result, details = ("skipped", []) if check_id in dont_run else func()
            counts[result] = counts.get(result, 0) + 1
            entry = {"result": result}
            if result in ("warning", "error", "fatal"):
                entry["details"] = details
            results[check_id] = {"result": entry, "additional_info": None}
            if not as_json:
                print("%s %s - %s" % (MARKS[result], description,
                                      {"ok": "OK", "ignored": "OK"}.get(result, result.upper())))
                for line in details:
                    print("    %s" % line)
        if not as_json:
            print()
    failed = counts.get("error", 0) + counts.get("fatal", 0)
    if as_json:
        info = {"os": {"arch": platform.machine(), "bitness": 64},
                "aziot_edged_version": store.build_info().get("edge_version"),
                "aziot_identity_service_version": store.build_info().get("identity_version")}
        sys.stdout.write(json.dumps({"additional_info": info, "checks": results}) + "\n")
    else:
        print("%d check(s) succeeded." % (counts.get("ok", 0) + counts.get("ignored", 0)))
        if counts.get("warning"):
            print("%d check(s) raised warnings." % counts["warning"])
        if failed:
            print("%d check(s) raised errors." % failed)
    return 1 if failed else 0
