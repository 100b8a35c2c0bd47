"""The seven steps of `az edge-tpm install`, each check -> change only what differs -> verify,
each in its own module of this package (base.py: what they share).

1 os               /etc/os-release + architecture against the runtime line's systems (refuses early)
2 package-source   Microsoft's packages-microsoft-prod (or a mirror's, an apt line, a dnf repository, .deb
                   files uploaded over SFTP), and tpm2-tools
3 container-engine moby-engine; /etc/docker/daemon.json merged; engine restarted only if it changed
4 iotedge          aziot-edge + aziot-identity-service, the newest LTS line for the system or pinned
5 config           /etc/aziot/config.toml for DPS + TPM (tomlkit; backup; atomic, 0600); payload;
                   the edgeAgent image of the installed line
6 tpm-access       aziottpm's access to /dev/tpm* (udev rule, tss group, or root); skipped for a
                   TPM reached over TCP
7 runtime          iotedge config apply when needed, then status / check / logs verified
"""
from .base import (  # noqa: F401  (the names other modules and tests import from edge.steps)
    APT_LIST, DAEMON_JSON, MANAGED_FILES, PAYLOAD_DIR, PAYLOAD_PATH, TPMD_OVERRIDE, TPMD_OVERRIDE_PATH, UDEV_RULE,
    UDEV_RULE_PATH, apt_install, backup, backup_name, ensure_candidates, policy, source_files, unindexed_sources,
    update_sources)
from .os_step import OsStep  # noqa: F401
from .source_step import PackageSourceStep, config_package_url, is_apt_line  # noqa: F401
from .engine_step import ContainerEngineStep, merge_daemon_json  # noqa: F401
from .iotedge_step import EDGE_PACKAGES, IotEdgeStep  # noqa: F401
from .config_step import ConfigStep  # noqa: F401
from .tpm_step import TCP_TCTIS, TpmAccessStep  # noqa: F401
from .runtime_step import RuntimeStep  # noqa: F401

__all__ = [
    'APT_LIST', 'DAEMON_JSON', 'MANAGED_FILES', 'PAYLOAD_DIR', 'PAYLOAD_PATH', 'TPMD_OVERRIDE',
    'TPMD_OVERRIDE_PATH', 'UDEV_RULE', 'UDEV_RULE_PATH', 'apt_install', 'backup', 'backup_name',
    'ensure_candidates', 'policy', 'source_files', 'unindexed_sources', 'update_sources', 'OsStep',
    'PackageSourceStep', 'config_package_url', 'is_apt_line', 'ContainerEngineStep', 'merge_daemon_json',
    'EDGE_PACKAGES', 'IotEdgeStep', 'ConfigStep', 'TCP_TCTIS', 'TpmAccessStep', 'RuntimeStep',
]
