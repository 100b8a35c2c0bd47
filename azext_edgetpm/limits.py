"""How long a value may be, per kind (characters), wherever it comes from (an option, an
inventory row). Every value that reaches a device (a command line, a file on it) or DPS is
bounded, so that a pasted file or a runaway variable is refused at once with one error instead of
hanging a device's apt (issue 8). Standard library only: the face, the fleet and the adapters use it.
"""
from typing import Optional

MAX_LENGTHS = {
    "host": 300, "ssh_user": 64, "ssh_key": 4096, "ssh_config": 4096, "known_hosts": 4096,
    "tcti": 256, "id_scope": 64, "registration_id": 128, "device_id": 128, "edge_version": 64,
    "log_driver": 64, "package_source": 1024, "global_endpoint": 256, "payload": 4096,
    "offline_packages": 4096, "endorsement_key": 2048, "dps_name": 64, "resource_group_name": 90,
    "proxy": 1024, "no_proxy": 2048, "proxy_ca": 4096, "login": 4096, "ek_ca_bundle": 4096, "inventory": 4096,
}
# --payload is sent to DPS at every registration: a small JSON document.
MAX_PAYLOAD_BYTES = 64 * 1024


def too_long(kind: str, value) -> Optional[str]:
    """"is N characters long; at most M are accepted" when `value` is longer than its kind allows."""
    limit = MAX_LENGTHS.get(kind)
    if limit is None or not isinstance(value, str) or len(value) <= limit:
        return None
    return f"is {len(value):,} characters long; at most {limit:,} are accepted"
