"""macOS' machine_id inputs, from ``ioreg`` and ``sysctl`` (no root needed).

- bios_serial: ``IOPlatformSerialNumber`` of ``IOPlatformExpertDevice``, the Mac's serial
  (what Boot Camp's ``Win32_BIOS.SerialNumber`` shows);
- board_serial: ``""``: macOS publishes no logic-board serial without root;
- board_manufacturer: its ``manufacturer`` (``Apple Inc.``);
- board_product: its ``board-id`` (Intel Macs, ``Mac-…``), else its ``model`` (Apple silicon,
  ``MacBookPro18,3``);
- cpu_id: WMI's ProcessorId from ``sysctl machdep.cpu.signature`` (CPUID leaf 1 EAX) and the
  low 32 bits of ``machdep.cpu.feature_bits`` (EDX) on Intel; ``""`` on Apple silicon,
  which has neither;
- disk_serial: ``Serial Number`` of the first ``IONVMeBlockStorageDevice``, else of the first
  ``IOAHCIBlockStorageDevice``, in registry order (the internal disk comes first).

The parsers are pure functions over ``ioreg``'s text, tested on captured output.
"""

from __future__ import annotations

import re

from asr_client.hwinfo import Components, decode, run

_PROPERTY = re.compile(r'^\s*"([^"]+)"\s*=\s*(.*?)\s*$')
_SERIAL = re.compile(r'"Serial Number"\s*=\s*"([^"]*)"')


def ioreg_value(raw: str) -> str:
    """An ioreg property's value as text: ``"text"``, ``<"data as text">`` (the first string) or ``<hex>``."""
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return raw[1:-1].strip()
    if raw.startswith('<"'):
        return raw[2:].split('"', 1)[0].strip()
    if raw.startswith("<") and raw.endswith(">"):
        try:
            data = bytes.fromhex(raw[1:-1])
        except ValueError:
            return ""
        # Data properties are NUL-padded C strings; one that is not text is of no use here.
        text = data.split(b"\x00", 1)[0].decode("ascii", errors="replace").strip()
        return text if text.isprintable() else ""
    return raw.strip()


def parse_ioreg_properties(output: str) -> dict[str, str]:
    """The top-level ``"key" = value`` lines of ``ioreg -rd1`` output, as text; first wins."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        if match := _PROPERTY.match(line):
            found.setdefault(match[1], ioreg_value(match[2]))
    return found


def parse_ioreg_serial(output: str) -> str:
    """The first ``"Serial Number"="…"`` in ``ioreg`` output (inside ``Device Characteristics``)."""
    match = _SERIAL.search(output)
    return match[1].strip() if match else ""


def processor_id(sysctl_output: str) -> str:
    """``sysctl -n machdep.cpu.signature machdep.cpu.feature_bits`` output as a ProcessorId, or ``""``."""
    try:
        signature, features = (int(v) for v in sysctl_output.split())
    except ValueError:
        return ""
    return f"{features & 0xFFFFFFFF:08X}{signature & 0xFFFFFFFF:08X}"


def read() -> Components:
    platform = parse_ioreg_properties(decode(run(["ioreg", "-rd1", "-c", "IOPlatformExpertDevice"])))
    disk = ""
    for cls in ("IONVMeBlockStorageDevice", "IOAHCIBlockStorageDevice"):
        if disk := parse_ioreg_serial(decode(run(["ioreg", "-rd1", "-c", cls]))):
            break
    return Components(
        bios_serial=platform.get("IOPlatformSerialNumber", ""),
        board_manufacturer=platform.get("manufacturer", ""),
        board_product=platform.get("board-id") or platform.get("model", ""),
        cpu_id=processor_id(decode(run(["sysctl", "-n", "machdep.cpu.signature",
                                        "machdep.cpu.feature_bits"]))),
        disk_serial=disk,
    )
