"""Restarting a service on a device with whatever init system it runs.

systemd when it is PID 1 (/run/systemd/system exists, as sd_booted() tests); otherwise the
unit's /etc/init.d script (SysV init, OpenRC-style or containers and simulated devices
without systemd, where `systemctl` would only say "System has not been booted with systemd");
otherwise nothing can restart it, and the caller says so instead of failing.
"""
import shlex
from dataclasses import dataclass
from typing import Optional

SYSTEMD, INITD, NONE = "systemd", "init.d", "none"
# The units of aziot-edge and aziot-identity-service (their .service and .socket files in the packages:
# edgelet/contrib/systemd/debian/, and */aziot-*d.{service,socket}.in of iot-identity-service).
AZIOT_UNITS = ("aziot-edged.service", "aziot-edged.mgmt.socket", "aziot-edged.workload.socket",
               "aziot-identityd.service", "aziot-identityd.socket", "aziot-keyd.service", "aziot-keyd.socket",
               "aziot-certd.service", "aziot-certd.socket", "aziot-tpmd.service", "aziot-tpmd.socket")


@dataclass(frozen=True)
class ServiceManager:
    kind: str

    @classmethod
    def detect(cls, facts, unit: Optional[str] = None) -> "ServiceManager":
        if facts.systemd:
            return cls(SYSTEMD)
        if unit is None or unit in facts.init_scripts:
            return cls(INITD)
        return cls(NONE)

    def describe(self) -> str:
        return {SYSTEMD: "systemd", INITD: "no systemd: services through /etc/init.d scripts",
                NONE: "no systemd and no init script"}[self.kind]

    def restart_command(self, unit: str) -> Optional[str]:
        if self.kind == SYSTEMD:
            return f"systemctl restart {shlex.quote(unit)}"
        if self.kind == INITD:
            return f"/etc/init.d/{shlex.quote(unit)} restart"
        return None

    def active_command(self, unit: str) -> Optional[str]:
        if self.kind == SYSTEMD:
            return f"systemctl is-active --quiet {shlex.quote(unit)}"
        if self.kind == INITD:
            return f"/etc/init.d/{shlex.quote(unit)} status >/dev/null 2>&1"
        return None

    def restart(self, session, unit: str):
        """Restart `unit` as root; the Result, or None when nothing can restart it."""
        command = self.restart_command(unit)
        if command is None:
            return None
        return session.run(command, sudo=True, timeout=300)

    def is_active(self, session, unit: str) -> Optional[bool]:
        command = self.active_command(unit)
        if command is None:
            return None
        return session.run(command, sudo=True, timeout=60).rc == 0
