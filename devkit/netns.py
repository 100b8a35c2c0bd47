"""Network plumbing of a rig: one bridge and one /24 per rig, one netns + veth per device.

Several rigs may run at once on one machine (tests, the demo, other helpers), so every name
and address is derived from the rig's *slot* ``X``, the third octet of its subnet
``10.213.X.0/24``:

- bridge ``edkXbr`` on the host, address ``10.213.X.1/24``, its ifalias set to the rig's
  directory (so leftovers can be traced back to their rig after a crash);
- device ``i``: network namespace ``edkXdI``, host-side veth ``edkXvI`` (enslaved to the
  bridge), ``eth0`` inside the namespace with ``10.213.X.(10+I)/24``.

A slot is claimed by creating its bridge: the kernel refuses a second bridge of that name,
so two rigs starting at the same moment cannot both get the same slot. Only interfaces and
namespaces with these names are ever touched.
"""
import ipaddress
import json
import os
import random
import re
import subprocess

PREFIX = "edk"
SUPERNET = ipaddress.ip_network("10.213.0.0/16")
FIRST_DEVICE_HOST = 10
MAX_DEVICES = 244
SLOTS = range(1, 255)


class NetError(RuntimeError):
    """An ip(8) command failed or no subnet was free."""


def ip(*args, input=None, check=True):
    """Run ``ip`` with an argument list; return stdout (raise NetError on failure)."""
    proc = subprocess.run(["ip", *args], input=input, capture_output=True, text=True,
                          check=False)
    if check and proc.returncode != 0:
        raise NetError("ip %s: %s" % (" ".join(args), proc.stderr.strip()))
    return proc.stdout


def ip_json(*args):
    """Run ``ip -j`` and parse its JSON output (an empty output is an empty list)."""
    out = ip("-j", *args)
    return json.loads(out) if out.strip() else []


def bridge_name(slot):
    """Host bridge of a rig."""
    return "%s%dbr" % (PREFIX, slot)


def netns_name(slot, index):
    """Network namespace of device ``index`` (1-based)."""
    return "%s%dd%d" % (PREFIX, slot, index)


def veth_name(slot, index):
    """Host-side veth of device ``index``."""
    return "%s%dv%d" % (PREFIX, slot, index)


def host_ip(slot):
    """The host's address on the rig's bridge."""
    return str(SUPERNET.network_address + slot * 256 + 1)


def device_ip(slot, index):
    """Address of device ``index`` (1-based): 10.213.X.(10+index)."""
    if not 1 <= index <= MAX_DEVICES:
        raise NetError("device index %d out of range 1..%d" % (index, MAX_DEVICES))
    return str(SUPERNET.network_address + slot * 256 + FIRST_DEVICE_HOST + index)


def hollow_netns_name(slot):
    """Network namespace of a slot's hollow devices (see devkit/hollow): one for many addresses."""
    return "%s%dh" % (PREFIX, slot)


def hollow_veth_name(slot):
    """Host-side veth of a slot's hollow namespace."""
    return "%s%dvh" % (PREFIX, slot)


def subnet(slot):
    """The rig's /24."""
    return ipaddress.ip_network("%s/24" % host_ip(slot), strict=False)


def _subnets_in_use():
    """Third octets of 10.213.X.0/24 networks already addressed or routed on the host."""
    used = set()
    for entry in ip_json("-4", "addr", "show"):
        for a in entry.get("addr_info", []):
            net = ipaddress.ip_network("%s/%s" % (a["local"], a["prefixlen"]), strict=False)
            if net.overlaps(SUPERNET):
                used.update(_slots_of(net))
    for route in ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst", "")
        if dst and dst != "default" and not dst.startswith(("local", "broadcast")):
            try:
                net = ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False)
            except ValueError:
                continue
            if net.overlaps(SUPERNET) and net.prefixlen >= 16:
                used.update(_slots_of(net))
    return used


def _slots_of(net):
    """Slots (third octets) covered by a network overlapping 10.213.0.0/16."""
    if net.prefixlen <= 16:
        return set(SLOTS)
    first = int(net.network_address) - int(SUPERNET.network_address)
    last = int(net.broadcast_address) - int(SUPERNET.network_address)
    return set(range(first // 256, last // 256 + 1))


def existing_bridges():
    """``{slot: ifalias}`` of every devkit bridge on the host."""
    found = {}
    for link in ip_json("-d", "link", "show", "type", "bridge"):
        m = re.fullmatch(r"%s(\d+)br" % PREFIX, link.get("ifname", ""))
        if m:
            found[int(m.group(1))] = link.get("ifalias", "")
    return found


def claim_slot(owner):
    """Create a free rig bridge (atomically) labelled with ``owner``; return its slot."""
    used = _subnets_in_use() | set(existing_bridges())
    candidates = [s for s in SLOTS if s not in used]
    random.shuffle(candidates)
    for slot in candidates:
        proc = subprocess.run(["ip", "link", "add", bridge_name(slot), "type", "bridge"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            if "exists" in proc.stderr:
                continue  # another rig got it between our scan and now
            raise NetError("ip link add %s: %s" % (bridge_name(slot), proc.stderr.strip()))
        br = bridge_name(slot)
        ip("link", "set", "dev", br, "alias", owner[:255])
        ip("addr", "add", "%s/24" % host_ip(slot), "dev", br)
        ip("link", "set", "dev", br, "up")
        return slot
    raise NetError("no free /24 left in %s" % SUPERNET)


def slots_owned_by(owner):
    """Slots whose bridge carries ``owner`` as ifalias (to find a crashed rig's leftovers)."""
    return sorted(s for s, alias in existing_bridges().items() if alias == owner)


def add_device(slot, index):
    """Create the netns and veth of device ``index``; return (netns, veth, address)."""
    ns, veth, addr = netns_name(slot, index), veth_name(slot, index), device_ip(slot, index)
    ip("netns", "add", ns)
    # The veth of a device removed a moment ago with this index can outlive its namespace
    # for a while (the kernel frees it when the last process of the namespace is gone).
    ip("link", "del", veth, check=False)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("link", "set", "dev", veth, "master", bridge_name(slot), "up")
    ip("-n", ns, "-batch", "-", input="\n".join([
        "link set dev lo up",
        "addr add %s/24 dev eth0" % addr,
        "link set dev eth0 up",
        "route add default via %s" % host_ip(slot),
    ]) + "\n")
    # A device index (so its address) is reused after a device is removed, with a new MAC:
    # forget the host's neighbour entry for it, or the host keeps sending to the old MAC
    # until ARP revalidates (tens of seconds of TCP retransmissions).
    ip("neigh", "flush", "to", addr, "dev", bridge_name(slot), check=False)
    return ns, veth, addr


def add_hollow(slot, addresses):
    """Create the slot's hollow namespace: one veth on the slot's bridge, every address of
    ``addresses`` on its ``eth0`` (the first is the one its connections leave from); return
    (netns, veth). The slot is new (claimed for this namespace): no stale neighbour entries."""
    ns, veth = hollow_netns_name(slot), hollow_veth_name(slot)
    ip("netns", "add", ns)
    ip("link", "del", veth, check=False)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("link", "set", "dev", veth, "master", bridge_name(slot), "up")
    ip("-n", ns, "-batch", "-", input="\n".join(
        ["link set dev lo up"] + ["addr add %s/24 dev eth0" % a for a in addresses]
        + ["link set dev eth0 up", "route add default via %s" % host_ip(slot)]) + "\n")
    return ns, veth


def netns_of_slot(slot):
    """Names of the existing namespaces of a rig (by name prefix)."""
    pattern = re.compile(r"%s%d(d\d+|h)" % (PREFIX, slot))
    names = []
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if pattern.fullmatch(name):
            names.append(name)
    return names


def links_of_slot(slot):
    """Names of the host interfaces of a rig (its bridge and veths)."""
    pattern = re.compile(r"%s%d(br|v\d+|vh)" % (PREFIX, slot))
    return [link["ifname"] for link in ip_json("link", "show")
            if pattern.fullmatch(link.get("ifname", ""))]


def netns_pids(ns):
    """Host pids of the processes in a network namespace."""
    out = ip("netns", "pids", ns, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def delete_netns(ns):
    """Delete a namespace (its veth pair goes with it); missing is fine."""
    ip("netns", "delete", ns, check=False)
    if os.path.exists(os.path.join("/run/netns", ns)):
        raise NetError("netns %s still present after delete" % ns)


def delete_link(name):
    """Delete a host interface; missing is fine."""
    ip("link", "delete", "dev", name, check=False)
