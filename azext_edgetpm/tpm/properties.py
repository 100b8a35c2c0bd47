"""The TPM's fixed properties (TPM2_PT_*) as manufacturer, vendor and firmware version, from
`tpm2_getcap properties-fixed` text (remote) or from TPM2_GetCapability values (local)."""
from typing import Dict, List, Optional

# TPM2_PT_FIXED + n (TCG TPM 2.0 Library, Part 2, TPM_PT)
PROPERTY_NAMES = {
    0x100: "TPM2_PT_FAMILY_INDICATOR", 0x105: "TPM2_PT_MANUFACTURER",
    0x106: "TPM2_PT_VENDOR_STRING_1", 0x107: "TPM2_PT_VENDOR_STRING_2",
    0x108: "TPM2_PT_VENDOR_STRING_3", 0x109: "TPM2_PT_VENDOR_STRING_4",
    0x10B: "TPM2_PT_FIRMWARE_VERSION_1", 0x10C: "TPM2_PT_FIRMWARE_VERSION_2",
}


def from_capability(values: Dict[int, int]) -> Dict[str, dict]:
    """TPM2_GetCapability(TPM_PROPERTIES) values (property id -> value) in the same shape as
    `parse_fixed_properties` gives."""
    props = {name: {"raw": values[pid]} for pid, name in PROPERTY_NAMES.items() if pid in values}
    if "TPM2_PT_FAMILY_INDICATOR" in props:
        props["TPM2_PT_FAMILY_INDICATOR"]["value"] = _chars(props["TPM2_PT_FAMILY_INDICATOR"]["raw"]).strip()
    return props


def parse_fixed_properties(lines: List[str]) -> Dict[str, dict]:
    """`tpm2_getcap properties-fixed` YAML (a name line, then raw:/value: lines) to
    name -> {"raw": int, "value": str}."""
    props: Dict[str, dict] = {}
    current: dict = {}
    for line in lines:
        if line and not line.startswith(" ") and line.rstrip().endswith(":"):
            current = props.setdefault(line.rstrip()[:-1], {})
        elif current is not None and line.strip().startswith(("value:", "raw:")):
            key, _, value = line.strip().partition(":")
            value = value.strip().strip('"')
            if key == "raw":
                try:
                    current["raw"] = int(value, 0)
                except ValueError:
                    pass
            else:
                current["value"] = value
    return props


def _chars(raw: Optional[int]) -> str:
    if raw is None:
        return ""
    return raw.to_bytes(4, "big").replace(b"\0", b"").decode("ascii", "replace")


def describe_tpm(props: Dict[str, dict]) -> dict:
    """Manufacturer, vendor string and firmware version from the fixed properties."""
    def raw(name):
        return props.get(name, {}).get("raw")
    vendor = "".join(_chars(raw(f"TPM2_PT_VENDOR_STRING_{i}")) for i in range(1, 5)).strip()
    firmware = None
    if raw("TPM2_PT_FIRMWARE_VERSION_1") is not None:
        fw1, fw2 = raw("TPM2_PT_FIRMWARE_VERSION_1"), raw("TPM2_PT_FIRMWARE_VERSION_2")
        firmware = f"{fw1 >> 16}.{fw1 & 0xFFFF}" + (f".{fw2 >> 16}.{fw2 & 0xFFFF}" if fw2 is not None else "")
    return {
        "manufacturer": _chars(raw("TPM2_PT_MANUFACTURER")).strip() or None,
        "vendor": " ".join(vendor.split()) or None,
        "firmwareVersion": firmware,
        "specVersion": props.get("TPM2_PT_FAMILY_INDICATOR", {}).get("value"),
    }
