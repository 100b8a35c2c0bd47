"""``python -m devkit demo``: the main job on the development kit, end to end.

Starts simulated TPM devices, the DPS emulator and the stand-in package repository, then
does what a cloud engineer would do with the real `az`:

1. `az cloud register` + `az login --service-principal` against the emulator's identity and
   ARM endpoints (the `az login` identity the extension then uses);
2. writes an inventory of the devices (logins as root, as `admin` through NOPASSWD sudo, and as
   `pwadmin` through sudo with a password taken from an environment variable the inventory
   names) and runs ONE command: `az edge-tpm provision --inventory ... --state ...`, which
   identifies, enrolls (in bulk), installs, waits for and checks every device in parallel;
3. prints its summary table; everything is torn down unless --keep.

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
        p.add_argument("--devices", type=int, default=3, help="how many devices (default 3)")
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

    def az(self, *args, check=True, stream_stderr=False):
        """Run the real az; show the command line (which never carries a secret). With
        stream_stderr, az's progress lines go straight to this terminal."""
        self.say("$ az " + " ".join(shlex.quote(a) for a in args))
        started = time.monotonic()
        proc = subprocess.run([AZ, *args], env=self.env, stdout=subprocess.PIPE,
                              stderr=None if stream_stderr else subprocess.PIPE, text=True, timeout=1800)
        proc.stderr = proc.stderr or ""
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
        try:
            with open(rig.json_path, encoding="utf-8") as handle:
                kit = json.load(handle)
            dps, packages = kit["dps"], kit["packages"]
            self.env = dict(os.environ, **azhome.prepare(os.path.join(self.dir, "az")))
            self.env.update(REQUESTS_CA_BUNDLE=dps["ca_bundle"], AZURE_CORE_INSTANCE_DISCOVERY="false",
                            AZURE_CORE_ONLY_SHOW_ERRORS="true")
            self.login(dps)
            inventory = self.inventory(rig.devices)
            self.say("\n== provisioning the fleet with one command (inventory %s)" % inventory)
            proc = self.az("edge-tpm", "provision", "--inventory", inventory, "--dps-name", dps["dps_name"],
                           "-g", dps["resource_group"], "--known-hosts", kit["known_hosts"],
                           "--package-source", packages["apt_line"], "--iot-hubs", dps["iot_hubs"][0],
                           "--allocation-policy", "static", "--initial-twin-tags", json.dumps({"site": "devkit"}),
                           "--max-parallel", str(self.count), "--state", os.path.join(self.dir, "fleet-state.json"),
                           "-o", "table", check=False, stream_stderr=True)
            self.say("\n== summary\n" + proc.stdout.rstrip())
            assigned = sum(1 for line in proc.stdout.splitlines() if " assigned " in line)
            self.say("%d of %d devices assigned" % (assigned, len(rig.devices)))
            if proc.returncode != 0:
                self.say(proc.stderr.strip())
            return proc.returncode
        finally:
            if self.keep:
                self.say("rig kept: python -m devkit down --dir %s" % self.dir)
            else:
                rig.down()

    def inventory(self, devices):
        """A CSV inventory: root, admin (NOPASSWD sudo) and pwadmin (sudo with a password) in turn."""
        import csv
        path = os.path.join(self.dir, "fleet.csv")
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["host", "ssh_key", "tcti", "sudo_password_env", "tags"])
            for index, dev in enumerate(devices):
                user = ("root", "admin", "pwadmin")[index % 3]
                secret_env = ""
                if user == "pwadmin":
                    # The password travels in the environment; the inventory only names the variable.
                    secret_env = "DEVKIT_PWADMIN_PASSWORD"
                    self.env[secret_env] = dev.users["pwadmin"]["password"]
                writer.writerow(["%s@%s:%d" % (dev.users[user]["user"], dev.host, dev.port), dev.key(user), dev.tcti,
                                 secret_env, json.dumps({"site": "devkit", "device": dev.name, "login": user})])
                self.say("  %s  %s@%s (%s)" % (dev.name, dev.users[user]["user"], dev.host, dev.variant))
        return path

    def login(self, dps):
        self.say("\n== az login with a service principal, against the emulator registered as a cloud")
        # (with the cloud's IoT Hub and DPS domains, which the product checks hub and DPS host names against)
        self.az("cloud", "register", "-n", dps["cloud_name"], "--cloud-config", json.dumps(dps["cloud_config"]))
        self.az("cloud", "set", "-n", dps["cloud_name"])
        secret_file = os.path.join(self.dir, "sp-secret")
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dps["sp"]["secret"])
        # az reads an argument's value from a file with @FILE: the secret stays off the command line.
        self.az("login", "--service-principal", "-u", dps["sp"]["app_id"], "-p", "@" + secret_file,
                "--tenant", dps["sp"]["tenant"], "-o", "none")
