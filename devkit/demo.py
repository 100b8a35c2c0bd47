"""``python -m devkit demo``: the main job on the development kit, end to end.

Starts simulated TPM devices, the DPS emulator and the stand-in package repository, then
does what a cloud engineer would do with the real `az`, each step a real `az` command:

1. `az cloud register` + `az login --service-principal` against the emulator's identity and
   ARM endpoints (the `az login` identity the extension then uses);
2. per device: `az edge-tpm ek show`, `az edge-tpm enrollment create --host`,
   `az edge-tpm install` (package source: the dev kit's mirror), `az edge-tpm registration
   wait`, `az edge-tpm status`;
3. a summary; everything is torn down unless --keep.

Exit status 0 when every device ended assigned to an IoT hub.
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from . import azhome
from .devices import Rig

AZ = os.path.join(os.path.dirname(sys.executable), "az")


class Command:
    help = "provision simulated devices end to end with az edge-tpm (the main job)"

    @staticmethod
    def configure(p):
        p.add_argument("--devices", type=int, default=2, help="how many devices (default 2)")
        p.add_argument("--dir", help="rig directory (default: a new temporary one)")
        p.add_argument("--keep", action="store_true", help="leave the rig running at the end")

    @staticmethod
    def run(args):
        return Demo(args.dir or tempfile.mkdtemp(prefix="edgetpm-demo-"), args.devices, args.keep).run()


COMMAND = Command()


class Demo:
    def __init__(self, directory, count, keep):
        self.dir = os.path.abspath(directory)
        self.count = max(1, count)
        self.keep = keep
        self.env = None

    def say(self, text):
        print(text, flush=True)

    def az(self, *args, check=True):
        """Run the real az; show the command line (which never carries a secret)."""
        self.say("$ az " + " ".join(shlex.quote(a) for a in args))
        started = time.monotonic()
        proc = subprocess.run([AZ, *args], env=self.env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 and check:
            self.say(proc.stderr.strip())
            raise RuntimeError("az %s failed (exit %d)" % (args[0] if args else "", proc.returncode))
        self.say("  (%.1f s)" % (time.monotonic() - started))
        return proc

    def run(self):
        rig = Rig(self.dir)
        variants = [("fresh", "mfg")[i % 2] for i in range(self.count)]
        self.say("== starting %d simulated devices, the DPS emulator and the package mirror in %s"
                 % (self.count, self.dir))
        rig.up(variants, services=["dps", "packages"])
        results = []
        try:
            with open(rig.json_path, encoding="utf-8") as handle:
                kit = json.load(handle)
            dps, packages = kit["dps"], kit["packages"]
            self.env = dict(os.environ, **azhome.prepare(os.path.join(self.dir, "az")))
            self.env.update(REQUESTS_CA_BUNDLE=dps["ca_bundle"], AZURE_CORE_INSTANCE_DISCOVERY="false",
                            AZURE_CORE_ONLY_SHOW_ERRORS="true")
            self.login(dps)
            for index, dev in enumerate(rig.devices):
                user = "root" if index % 2 == 0 else "admin"   # the second one logs in through sudo
                results.append(self.provision(dev, user, dps, packages, kit["known_hosts"]))
        finally:
            if self.keep:
                self.say("rig kept: python -m devkit down --dir %s" % self.dir)
            else:
                rig.down()
        self.summary(results)
        return 0 if results and all(r["status"] == "assigned" for r in results) else 1

    def login(self, dps):
        self.say("\n== az login with a service principal, against the emulator registered as a cloud")
        self.az("cloud", "register", "-n", dps["cloud_name"], "--endpoint-resource-manager", dps["arm_endpoint"])
        self.az("cloud", "set", "-n", dps["cloud_name"])
        secret_file = os.path.join(self.dir, "sp-secret")
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dps["sp"]["secret"])
        # az reads an argument's value from a file with @FILE: the secret stays off the command line.
        self.az("login", "--service-principal", "-u", dps["sp"]["app_id"], "-p", "@" + secret_file,
                "--tenant", dps["sp"]["tenant"], "-o", "none")

    def provision(self, dev, user, dps, packages, known_hosts):
        started = time.monotonic()
        self.say("\n== device %s (%s, variant %s, login %s)" % (dev.name, dev.host, dev.variant, user))
        ssh = ["--host", "%s@%s:%d" % (dev.users[user]["user"], dev.host, dev.port), "--ssh-key", dev.key(user),
               "--known-hosts", known_hosts, "--tcti", dev.tcti]
        target = ["--dps-name", dps["dps_name"], "-g", dps["resource_group"]]
        ek = json.loads(self.az("edge-tpm", "ek", "show", *ssh, "-o", "json").stdout)
        reg_id = ek["registrationId"]
        self.say("  registration ID %s (EK created now: %s)" % (reg_id, ", ".join(ek["createdKeys"]) or "no"))
        self.az("edge-tpm", "enrollment", "create", *ssh, *target, "--iot-hubs", dps["iot_hubs"][0],
                "--allocation-policy", "static", "--initial-twin-tags", json.dumps({"site": "devkit"}),
                "-o", "table")
        install = self.az("edge-tpm", "install", *ssh, *target, "--registration-id", reg_id,
                          "--package-source", packages["apt_line"], "-o", "table", check=False)
        self.say(install.stdout.rstrip() or install.stderr.strip())
        wait = self.az("edge-tpm", "registration", "wait", "--registration-id", reg_id, *target,
                       "--timeout", "120", "-o", "json", check=False)
        state = json.loads(wait.stdout) if wait.returncode == 0 and wait.stdout.strip() else {}
        if wait.returncode != 0:
            self.say(wait.stderr.strip())
        status = self.az("edge-tpm", "status", *ssh, "-o", "json", check=False)
        health = json.loads(status.stdout) if status.returncode == 0 and status.stdout.strip() else {}
        return {"device": dev.name, "registrationId": reg_id, "status": state.get("status", "failed"),
                "assignedHub": state.get("assignedHub"), "deviceId": state.get("deviceId"),
                "runtime": (health.get("runtime") or {}).get("version"),
                "seconds": round(time.monotonic() - started, 1)}

    def summary(self, results):
        self.say("\n== summary")
        self.say("%-6s %-66s %-9s %-34s %s" % ("device", "registrationId", "status", "assignedHub", "seconds"))
        for r in results:
            self.say("%-6s %-66s %-9s %-34s %s" % (r["device"], r["registrationId"], r["status"],
                                                   r["assignedHub"] or "-", r["seconds"]))
        assigned = sum(r["status"] == "assigned" for r in results)
        self.say("%d of %d devices assigned" % (assigned, len(results)))
