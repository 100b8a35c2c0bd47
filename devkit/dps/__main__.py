"""``python -m devkit.dps serve --dir DIR [--host-ip IP ...] [--port N] [--admin-port N]``

Runs the emulator in the foreground until SIGINT/SIGTERM. Writes the devkit.json section (plus
the server's ``pid``) to ``--section-file`` (default ``DIR/section.json``, mode 0600: it holds
keys) once serving, and prints one JSON line with the endpoints and that path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from .emulator import Emulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m devkit.dps", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the emulator in the foreground")
    s.add_argument("--dir", required=True, help="state directory (CA, keys, enrollments)")
    s.add_argument("--host-ip", action="append", default=[],
                   help="address devices reach this host at (repeatable; the first is the device endpoint)")
    s.add_argument("--port", type=int, default=8443, help="HTTPS port (0: any free port)")
    s.add_argument("--admin-port", type=int, default=0, help="admin HTTP port on 127.0.0.1 (0: any free port)")
    s.add_argument("--bind", default="0.0.0.0", help="address to bind the HTTPS port to")
    s.add_argument("--dps-name", default="dps-devkit")
    s.add_argument("--resource-group", default="rg-devkit")
    s.add_argument("--hub", action="append", default=None, help="linked IoT hub host name (repeatable)")
    s.add_argument("--hub-address", default=None,
                   help="also serve the hubs' device registry on this address, port 443 ('auto': a free 127.x.y.z)")
    s.add_argument("--service-ops-per-minute", type=float, default=1000)
    s.add_argument("--device-registrations-per-minute", type=float, default=1000)
    s.add_argument("--disable-local-auth", action="store_true")
    s.add_argument("--no-persist", action="store_true", help="keep enrollments in memory only")
    s.add_argument("--section-file", help="where to write the devkit.json section (default DIR/section.json)")
    s.add_argument("-v", "--verbose", action="store_true", help="log every request (never headers)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    kwargs = {}
    if args.hub:
        kwargs["hubs"] = args.hub
    emu = Emulator(
        args.dir, host_ips=args.host_ip, port=args.port, admin_port=args.admin_port, bind=args.bind,
        dps_name=args.dps_name, resource_group=args.resource_group,
        service_ops_per_minute=args.service_ops_per_minute,
        device_registrations_per_minute=args.device_registrations_per_minute,
        local_auth_disabled=args.disable_local_auth, persist=not args.no_persist, hub_address=args.hub_address,
        **kwargs,
    ).start()
    section_file = os.path.abspath(args.section_file or os.path.join(emu.directory, "section.json"))
    tmp = section_file + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({**emu.section(), "pid": os.getpid()}, f, indent=2)
    os.replace(tmp, section_file)  # appears complete: a waiting parent may read it at once
    print(json.dumps({"url": emu.url, "device_endpoint": emu.device_endpoint, "admin_url": emu.admin_url,
                      "ca_bundle": emu.ca_bundle, "section_file": section_file}), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
