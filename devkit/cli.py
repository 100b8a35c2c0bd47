"""The rig commands of ``python -m devkit``: up, down, status, add, power-cycle, exec, ssh, variants,
userlands, gc."""
import argparse
import json
import os
import shlex
import sys
import time

from devkit import netns, variants
from devkit.devices import DevkitError, Rig, missing_requirements, wait_ssh_banner


class Command:
    """A subcommand: one-line help, an argument configurator and a runner."""

    def __init__(self, help, configure, run):
        self.help = help
        self.configure = configure
        self.run = run


def _dir_arg(parser):
    parser.add_argument("--dir", required=True, help="rig directory (keys, logs, devkit.json)")


def _split(values):
    """Flatten ``["a,b", "c"]`` into ``["a", "b", "c"]``."""
    return [v for value in values or [] for v in value.split(",") if v]


def _check_machine():
    reasons = missing_requirements()
    if reasons:
        sys.stderr.write("devkit: cannot run devices here:\n  " + "\n  ".join(reasons) + "\n")
        return False
    return True


# ---- up


def _configure_up(p):
    _dir_arg(p)
    p.add_argument("--devices", "-n", type=int, default=None,
                   help="number of devices (default: one per listed variant, else 1)")
    p.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                   help="device variants, space- or comma-separated, cycled over the devices "
                        "(default: fresh). Combine with '+', e.g. mfg+notools. "
                        "See `python -m devkit variants`.")
    p.add_argument("--services", nargs="+", default=["dps", "packages", "proxy"], metavar="SERVICE",
                   help="rig services to start too (see devkit/services.py); default: dps packages proxy "
                        "(the DPS emulator, the stand-in package repository, the HTTP proxies); 'none' for devices only")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for all devices to accept SSH")
    p.add_argument("--hollow", action="store_true",
                   help="hollow devices (devkit/hollow: cheap while idle, up to 244 per namespace; "
                        "the fresh variant only)")
    p.add_argument("--json", action="store_true", help="print devkit.json instead of a summary")


def _run_up(args):
    if not _check_machine():
        return 2
    names = _split(args.variants) or ["fresh"]
    count = args.devices if args.devices is not None else (len(names) if args.variants else 1)
    if count < 1:
        sys.stderr.write("devkit: --devices must be at least 1\n")
        return 2
    chosen = [names[i % len(names)] for i in range(count)]
    rig = Rig(args.dir)
    start = time.monotonic()
    try:
        services = [name for name in _split(args.services) if name != "none"]
        if args.hollow:
            if args.variants:
                sys.stderr.write("devkit: hollow devices have no variants\n")
                return 2
            rig.up([], services=services, timeout=args.timeout, hollow=count)
        else:
            rig.up(chosen, services=services, timeout=args.timeout)
    except (DevkitError, ValueError, netns.NetError) as exc:
        sys.stderr.write("devkit up failed: %s\n" % exc)
        return 1
    elapsed = time.monotonic() - start
    if args.json:
        print(json.dumps(rig.to_json(), indent=2))
        return 0
    print("devkit: %d device(s) up in %.1fs, subnet %s, host %s" % (
        len(rig.devices), elapsed, rig.to_json()["subnet"], rig.host_ip))
    _print_devices(rig)
    first = rig.devices[0]
    print("\n  devkit.json:  %s" % rig.json_path)
    print("  ssh:          %s" % shlex.join(first.ssh_argv("admin")))
    print("  stop:         python -m devkit down --dir %s" % shlex.quote(rig.dir))
    return 0


def _print_devices(rig, extra=None):
    rows = [("NAME", "ADDRESS", "VARIANT", "PID", "TCTI") + (tuple(extra[0]) if extra else ())]
    for i, d in enumerate(rig.devices):
        rows.append((d.name, d.host, d.variant, str(d.pid), d.tcti or "-")
                    + (tuple(extra[i + 1]) if extra else ()))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


UP = Command("start simulated devices and write DIR/devkit.json", _configure_up, _run_up)


# ---- down


def _configure_down(p):
    _dir_arg(p)


def _run_down(args):
    try:
        Rig(args.dir).down()
    except (DevkitError, netns.NetError) as exc:
        sys.stderr.write("devkit down: %s\n" % exc)
        return 1
    print("devkit: %s is down" % os.path.abspath(args.dir))
    return 0


DOWN = Command("stop everything of a rig (also after a crash); idempotent",
               _configure_down, _run_down)


# ---- status


def _configure_status(p):
    _dir_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _tpm_listening(dev):
    """Whether the device's swtpm accepts connections (checked from inside the device)."""
    if not dev.tcti:
        return None
    opts = dict(o.split("=", 1) for o in dev.tcti.split(":", 1)[-1].split(",") if "=" in o)
    probe = ("import socket; socket.create_connection((%r, %d), timeout=1).close()"
             % (opts.get("host", "127.0.0.1"), int(opts.get("port", 2321))))
    return dev.exec(["python3", "-c", probe], timeout=10).returncode == 0


def _device_status(dev):
    alive = dev.alive()
    ssh = False
    if alive:
        try:
            wait_ssh_banner(dev.host, dev.port, time.monotonic() + 2.0)
            ssh = True
        except DevkitError:
            ssh = False
    return {"name": dev.name, "alive": alive, "ssh": ssh,
            "tpm": _tpm_listening(dev) if alive else None}


def _run_status(args):
    try:
        rig = Rig.load(args.dir)
    except DevkitError as exc:
        leftovers = netns.slots_owned_by(os.path.abspath(args.dir))
        if leftovers:
            print("devkit: no devkit.json but leftovers of slot(s) %s: run down" % leftovers)
        else:
            print("devkit: %s" % exc)
        return 1
    states = [_device_status(d) for d in rig.devices]
    healthy = all(s["alive"] and s["ssh"] and s["tpm"] is not False for s in states)
    if args.json:
        print(json.dumps({"dir": rig.dir, "state": rig.state, "healthy": healthy,
                          "devices": states}, indent=2))
    else:
        print("devkit: rig %s, state %s, host %s, %d device(s)%s" % (
            rig.dir, rig.state, rig.host_ip, len(states), "" if healthy else " (UNHEALTHY)"))

        def word(v):
            return {True: "ok", False: "DOWN", None: "-"}[v]
        extra = [("ALIVE", "SSH", "TPM")] + [
            (word(s["alive"]), word(s["ssh"]), word(s["tpm"])) for s in states]
        _print_devices(rig, extra)
    return 0 if healthy else 1


STATUS = Command("show a rig's devices and whether they answer", _configure_status, _run_status)


# ---- exec / ssh


def _configure_exec(p):
    _dir_arg(p)
    p.add_argument("--user", default="root", help="device account (root, admin, ...)")
    p.add_argument("--tpm", action="store_true", help="set TPM2TOOLS_TCTI to the device's TPM")
    p.add_argument("device", help="device name, e.g. d1")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="command and arguments")


def _run_exec(args):
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        sys.stderr.write("devkit exec: no command given\n")
        return 2
    dev = Rig.load(args.dir).device(args.device)
    proc = dev.exec(cmd, user=args.user, env=dev.tpm_env if args.tpm else None, timeout=None)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


EXEC = Command("run a command inside a device without SSH (nsenter)", _configure_exec,
               _run_exec)


def _configure_ssh(p):
    _dir_arg(p)
    p.add_argument("--user", default="root", help="device account (root, admin, ...)")
    p.add_argument("device", help="device name, e.g. d1")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="remote command (optional)")


def _run_ssh(args):
    dev = Rig.load(args.dir).device(args.device)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    argv = dev.ssh_argv(args.user) + cmd
    os.execvp(argv[0], argv)
    return 127  # not reached


SSH = Command("log into a device with OpenSSH (known_hosts enforced)", _configure_ssh, _run_ssh)


# ---- add / power-cycle


def _configure_add(p):
    _dir_arg(p)
    p.add_argument("variants", nargs="+", metavar="VARIANT",
                   help="variant of each new device (space- or comma-separated)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for SSH")


def _run_add(args):
    if not _check_machine():
        return 2
    try:
        rig = Rig.load(args.dir)
        added = rig.add_devices(_split(args.variants), timeout=args.timeout)
    except (DevkitError, ValueError, netns.NetError) as exc:
        sys.stderr.write("devkit add failed: %s\n" % exc)
        return 1
    print("devkit: added %s" % ", ".join(d.name for d in added))
    _print_devices(rig)
    return 0


ADD = Command("start more devices in a running rig (they trust its services, as the first ones)",
              _configure_add, _run_add)


def _configure_power_cycle(p):
    _dir_arg(p)
    p.add_argument("devices", nargs="+", metavar="DEVICE", help="device names, e.g. d1")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for SSH again")


def _run_power_cycle(args):
    rig = Rig.load(args.dir)
    for name in args.devices:
        start = time.monotonic()
        try:
            dev = rig.power_cycle(name, timeout=args.timeout)
        except DevkitError as exc:
            sys.stderr.write("devkit power-cycle: %s\n" % exc)
            return 1
        print("devkit: %s power cycled in %.1fs (pid %d); disk and TPM state kept"
              % (dev.name, time.monotonic() - start, dev.pid))
    return 0


POWER_CYCLE = Command("cut a device's power and boot it again on the same disk and TPM state",
                      _configure_power_cycle, _run_power_cycle)


def _configure_tpm_clear(p):
    _dir_arg(p)
    p.add_argument("--keep-seed", action="store_true",
                   help="only tpm2_clear: the EK made next is the same key again (default: also "
                        "tpm2_changeeps, so the next EK is a new key, as after a replaced TPM)")
    p.add_argument("device", help="device name, e.g. d1")


def _run_tpm_clear(args):
    dev = Rig.load(args.dir).device(args.device)
    evicted = dev.clear_tpm(replace=not args.keep_seed)
    print("%s: TPM cleared%s; evicted %s" % (dev.name, "" if args.keep_seed else " with a new endorsement seed",
                                             ", ".join(evicted) or "nothing"))
    return 0


TPM_CLEAR = Command("clear a device's TPM (persistent keys gone; a new EK unless --keep-seed)",
                    _configure_tpm_clear, _run_tpm_clear)


# ---- variants / gc


def _run_variants(_args):
    for name in sorted(variants.VARIANTS):
        print("  %-10s %s" % (name, variants.VARIANTS[name].description))
    print("Combine with '+', e.g. mfg+notools.")
    return 0


VARIANTS = Command("list the device variants", lambda p: None, _run_variants)


# ---- userlands


def _configure_userlands(p):
    p.add_argument("names", nargs="*", help="userlands to build (default: every one a variant names)")


def _run_userlands(args):
    from devkit import userland  # pylint: disable=import-outside-toplevel
    names = args.names or sorted({v.userland for v in variants.VARIANTS.values() if v.userland})
    for name in names:
        try:
            root = userland.ensure(name, log=lambda msg: print("devkit userlands: " + msg, flush=True))
        except userland.UserlandError as exc:
            sys.stderr.write("devkit userlands: %s\n" % exc)
            return 1
        print("%s %s" % (name, root), flush=True)
    return 0


USERLANDS = Command("build the device userlands (once per machine, cached): all, or those named",
                    _configure_userlands, _run_userlands)


def abandoned_rigs():
    """Directories of rigs nobody can use any more: their directory is gone, or their
    owner process (throw-away rigs of a pytest session) has died."""
    found = []
    for _slot, owner in sorted(netns.existing_bridges().items()):
        if not owner:
            continue
        if not os.path.isdir(owner):
            found.append((owner, "directory is gone"))
            continue
        try:
            pid = Rig.load(owner).owner_pid
        except (DevkitError, ValueError, OSError):
            continue
        if pid and not _pid_alive(pid):
            found.append((owner, "owner process %d has exited" % pid))
    return found


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect_garbage(out=sys.stdout):
    """Bring down every abandoned rig; return the number of failures."""
    failures = 0
    for owner, why in abandoned_rigs():
        out.write("devkit gc: %s (%s): removing\n" % (owner, why))
        try:
            Rig(owner).down()
        except (DevkitError, netns.NetError) as exc:
            out.write("devkit gc: %s\n" % exc)
            failures += 1
    return failures


GC = Command("remove rigs whose directory is gone or whose owner (a test run) has exited",
             lambda p: None, lambda _args: 1 if collect_garbage() else 0)
