"""The stand-in `iotedge` command (the parts the product uses).

- ``iotedge config apply [-c FILE]``: root only; checks the service users, validates the
  super config (superconfig.parse), writes /etc/aziot/*/config.d/00-super.toml owned by each
  service user with mode 0600, then restarts the services (services.restart_all), which
  provisions synchronously.
- ``iotedge system status|logs|restart|stop|reprovision`` (status: aziotctl-common
  src/system/status.rs; reprovision: edgelet/iotedge/src/system.rs, the identity service's
  reprovision API then a restart of aziot-edged)
- ``iotedge list``, ``iotedge check [--output json|text]``, ``iotedge version``

Errors are printed like the real binary: the message, a blank line, exit code 1.
"""
import os
import pwd
import socket
import sys
import time

from . import checks, services, store, superconfig
from . import tomlcompat as tomllib

SERVICE_USERS = ("aziotks", "aziotcs", "aziotid", "aziottpm", "iotedge")
SERVICE_FILE_OWNER = {"keyd": "aziotks", "certd": "aziotcs", "identityd": "aziotid",
                      "tpmd": "aziottpm", "edged": "iotedge"}
DEFAULT_CONFIG = "/etc/aziot/config.toml"


class CommandError(Exception):
    """A failure printed as the real CLI prints its errors."""


def _users():
    """Look up the service users as `config apply` does (first missing one fails)."""
    found = {}
    for name in SERVICE_USERS:
        try:
            found[name] = pwd.getpwnam(name)
        except KeyError:
            raise CommandError("Command failed: could not query %s user information"
                               % name) from None
    return found


def _write_owned(path, text, user):
    """Write ``text`` to ``path`` atomically, owned by ``user``, mode 0600."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chown(tmp, user.pw_uid, user.pw_gid)
    os.replace(tmp, path)


def config_apply(args):
    """`iotedge config apply`."""
    path = DEFAULT_CONFIG
    for flag in ("-c", "--config-file"):
        if flag in args:
            path = args[args.index(flag) + 1]
    if os.geteuid() != 0:
        raise CommandError("Command failed: this command must be run as root")
    users = _users()
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise CommandError("Command failed: could not read config file %s: %s (os error %d)"
                           % (path, err.strerror, err.errno)) from None
    try:
        cfg = superconfig.parse(text, store.build_info().get("agent_image"))
    except superconfig.ConfigError as err:
        raise CommandError("Command failed: %s" % err) from None
    uids = {name: u.pw_uid for name, u in users.items()}
    rendered = superconfig.render(cfg, uids, socket.gethostname())
    _refuse_hostname_change(rendered["identityd"])
    for service, body in rendered.items():
        os.makedirs("/etc/aziot/%s/config.d" % service, exist_ok=True)
        _write_owned(services.CONFIG_D % service, body, users[SERVICE_FILE_OWNER[service]])
    print("Azure IoT Edge has been configured successfully!")
    print()
    print("Restarting service for configuration to take effect...")
    sys.stdout.flush()
    services.restart_all()
    print("Done.")
    return 0


def _refuse_hostname_change(identityd_text):
    """edgelet/iotedge/src/config/apply.rs: a hostname other than the one applied before is
    refused while Edge module containers exist (all of them, running or not)."""
    old = services.service_config("identityd").get("hostname")
    new = tomllib.loads(identityd_text).get("hostname")
    if old is None or old == new or not store.modules():
        return
    raise CommandError(
        "Cannot apply config because the hostname in the config %s is different from the previous "
        "hostname %s. To update the hostname, run the following command which deletes all IoT Edge "
        "modules and reapplies the configuration. Or, revert the hostname change in the config.toml "
        "file.\n                    sudo iotedge system stop && sudo docker rm -f $(sudo docker ps -aq "
        "-f \"label=net.azure-devices.edge.owner=Microsoft.Azure.Devices.Edge.Agent\") && sudo iotedge "
        "config apply\n                Warning: Data stored in the modules is lost when above command is "
        "executed." % (old, new))


def system_status(_args):
    """`iotedge system status`."""
    states = store.services()
    print("System services:")
    for unit in store.AZIOT_UNITS:
        state = states[unit]["state"]
        # status.rs: `systemctl is-active` stdout and stderr joined by a space ("activating ").
        shown = {"active": "Running", "inactive": "Ready"}.get(state, "Down - %s " % state)
        print("    %-24s%s" % (unit, shown))
    print()
    for unit in store.AZIOT_UNITS:
        state = states[unit]["state"]
        if state in ("active", "inactive"):
            continue
        print("%s is in a bad state because:" % unit)
        print("%s.service: Down - %s : Printing the last 10 log lines." % (unit, state))
        for line in store.journal([unit], lines=10):
            print(line)
        print()
    print("Use 'iotedge system logs' to check for non-fatal errors.")
    print("Use 'iotedge check' to diagnose connectivity and configuration issues.")
    return 0


def system_logs(args):
    """`iotedge system logs [-- -n N]`."""
    lines, since = None, None
    for flag in ("-n", "--lines"):
        if flag in args:
            lines = int(args[args.index(flag) + 1])
    for arg in args:   # journalctl --since @EPOCH (systemd.time(7)), the form the product uses
        if arg.startswith("--since=@"):
            since = float(arg[len("--since=@"):])
    if "--since" in args and args[args.index("--since") + 1].startswith("@"):
        since = float(args[args.index("--since") + 1][1:])
    for line in store.journal(store.AZIOT_UNITS, lines=lines, since=since):
        print(line)
    return 0


def _require_root():
    """The service-control subcommands talk to systemd and need root."""
    if os.geteuid() != 0:
        raise CommandError("Command failed: this command must be run as root")


def system_restart(_args):
    """`iotedge system restart`."""
    _require_root()
    services.restart_all()
    return 0


def system_stop(_args):
    """`iotedge system stop` (aziotctl-common src/system/stop.rs): `systemctl stop` of each
    service, not of its sockets; the units stay enabled."""
    _require_root()
    with store.locked():
        for unit in reversed(services.START_ORDER):
            print("Stopping %s.service..." % unit, end="")
            services.stop(unit)
            print("Stopped!")
    return 0


def system_reprovision(_args):
    """`iotedge system reprovision`: the identity service's reprovision API (its socket starts
    the service when it is not running), then aziot-edged restarted."""
    _require_root()
    error = services.reprovision()
    if error:
        raise CommandError(error)
    print("Successfully reprovisioned with IoT Hub.")
    return 0


def _age(since):
    """Docker-style 'Up N seconds/minutes/hours'."""
    secs = int(time.time() - since)
    if secs < 60:
        return "Up %d seconds" % max(secs, 1)
    if secs < 3600:
        return "Up %d minutes" % (secs // 60)
    return "Up %d hours" % (secs // 3600)


def list_modules(_args):
    """`iotedge list`."""
    if store.services()["aziot-edged"]["state"] != "active":
        raise CommandError("A module runtime error occurred\n"
                           "\tcaused by: A module runtime error occurred\n"
                           "\tcaused by: error trying to connect: No such file or directory "
                           "(os error 2)\n"
                           "\tcaused by: No such file or directory (os error 2)")
    # edgelet/iotedge/src/list.rs: header "NAME STATUS DESCRIPTION Config" (Config so
    # spelled), sorted by name, through a TabWriter with minwidth 15 and padding 2.
    rows = [("NAME", "STATUS", "DESCRIPTION", "Config")]
    for mod in sorted(store.modules(), key=lambda m: m["name"]):
        rows.append((mod["name"], mod["status"], _age(mod["since"]), mod["image"]))
    widths = [max(15, max(len(r[i]) for r in rows) + 2) for i in range(3)]
    for row in rows:
        print("".join(cell.ljust(w) for cell, w in zip(row, widths)) + row[3])
    return 0


def version(_args):
    """`iotedge version`: "iotedge VERSION", as edgelet/iotedge/src/version.rs prints it with
    edgelet-core's version_with_source_version() (edgelet/edgelet-core/src/lib.rs): the VERSION
    the package build passes in (edgelet/Makefile), with " (SHA)" only when BUILD_SOURCEVERSION
    is set too, which the package build's container does not get (edgelet/build/linux/package.sh)."""
    print("iotedge %s" % store.build_info().get("edge_version", "unknown"))
    return 0


COMMANDS = {
    ("config", "apply"): config_apply,
    ("system", "status"): system_status,
    ("system", "logs"): system_logs,
    ("system", "restart"): system_restart,
    ("system", "stop"): system_stop,
    ("system", "reprovision"): system_reprovision,
    ("list",): list_modules,
    ("check",): checks.run,
    ("version",): version,
}

USAGE = """iotedge (devkit stand-in)
Usage: iotedge <COMMAND>
Commands: check, config apply, list, system {logs,restart,status,stop,reprovision}, version
"""


def main(argv):
    """Dispatch ``argv`` (without the program name); return the exit code."""
    if argv[:1] in (["--version"], ["-V"]):
        return version([])
    for key, func in COMMANDS.items():
        if tuple(argv[:len(key)]) == key:
            try:
                return func(argv[len(key):])
            except CommandError as err:
                sys.stdout.flush()
                sys.stderr.write("%s\n\n" % err)
                return 1
    sys.stderr.write(USAGE)
    return 2
