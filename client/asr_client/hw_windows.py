"""Windows' machine_id inputs: the WMI classes the spec names, through PowerShell's CIM, else wmic.

- bios_serial: ``Win32_BIOS.SerialNumber``;
- board_serial, board_manufacturer, board_product: ``Win32_BaseBoard.SerialNumber``,
  ``.Manufacturer``, ``.Product``;
- cpu_id: ``Win32_Processor.ProcessorId`` of the first processor;
- disk_serial: ``Win32_DiskDrive.SerialNumber`` of the boot disk, the drive holding
  ``%SystemDrive%`` (found through its partition), else the drive with ``Index=0``.

One ``powershell -NoProfile`` run with ``Get-CimInstance`` reads all six as one JSON
object. wmic (deprecated, gone from new Windows 11 installs) is the fallback when
PowerShell cannot run at all; it cannot follow the partition association in one
call, so there the disk is always ``Index=0``, which is the boot disk on almost
every machine. The parsers are pure functions, tested on captured outputs.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from asr_client.hwinfo import Components, decode, run

# Property name in the script's JSON for each Components field.
FIELDS: dict[str, str] = {
    "bios_serial": "BiosSerial", "board_serial": "BoardSerial", "board_manufacturer": "BoardManufacturer",
    "board_product": "BoardProduct", "cpu_id": "ProcessorId", "disk_serial": "DiskSerial",
}

SCRIPT = r"""
$ErrorActionPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [System.Text.Encoding]::UTF8
$bios = Get-CimInstance -ClassName Win32_BIOS | Select-Object -First 1
$board = Get-CimInstance -ClassName Win32_BaseBoard | Select-Object -First 1
$cpu = Get-CimInstance -ClassName Win32_Processor | Select-Object -First 1
$disk = Get-CimInstance -ClassName Win32_LogicalDisk -Filter "DeviceID='$env:SystemDrive'" |
    Get-CimAssociatedInstance -ResultClassName Win32_DiskPartition |
    Get-CimAssociatedInstance -ResultClassName Win32_DiskDrive | Select-Object -First 1
if (-not $disk) { $disk = Get-CimInstance -ClassName Win32_DiskDrive -Filter 'Index=0' }
[pscustomobject]@{
    BiosSerial = $bios.SerialNumber; BoardSerial = $board.SerialNumber
    BoardManufacturer = $board.Manufacturer; BoardProduct = $board.Product
    ProcessorId = $cpu.ProcessorId; DiskSerial = $disk.SerialNumber
} | ConvertTo-Json -Compress
"""

# (wmic alias and condition, property) for each field.
WMIC: dict[str, tuple[list[str], str]] = {
    "bios_serial": (["bios"], "SerialNumber"),
    "board_serial": (["baseboard"], "SerialNumber"),
    "board_manufacturer": (["baseboard"], "Manufacturer"),
    "board_product": (["baseboard"], "Product"),
    "cpu_id": (["cpu"], "ProcessorId"),
    "disk_serial": (["diskdrive", "where", "Index=0"], "SerialNumber"),
}


def _text(value: Any) -> str:
    if isinstance(value, list):  # several instances: the first one
        value = value[0] if value else None
    return "" if value is None or isinstance(value, dict | bool) else str(value).strip()


def parse_cim_json(output: str, prop: str) -> str:
    """``prop`` from ``... | ConvertTo-Json`` output: one object, or a list of them (the first)."""
    try:
        obj = json.loads(output)
    except ValueError:
        return ""
    if isinstance(obj, list):
        obj = next((o for o in obj if isinstance(o, dict)), {})
    return _text(obj.get(prop)) if isinstance(obj, dict) else ""


def parse_wmic_value(output: str, prop: str) -> str:
    """``prop`` from ``wmic <alias> get <prop> /value`` output (``Prop=value`` lines, first instance)."""
    match = re.search(rf"^\s*{re.escape(prop)}=(.*)$", output, re.M | re.I)
    return match[1].strip() if match else ""


def encoded_command(script: str) -> str:
    # -EncodedCommand takes base64 of UTF-16-LE, which spares every quoting rule of the command line.
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def read_powershell() -> Components | None:
    output = decode(run(["powershell.exe", "-NoProfile", "-NonInteractive",
                         "-EncodedCommand", encoded_command(SCRIPT)]))
    if not output.strip().startswith("{"):
        return None
    return Components(**{field: parse_cim_json(output, prop) for field, prop in FIELDS.items()})


def read_wmic() -> Components:
    values: dict[str, str] = {}
    for field, (alias, prop) in WMIC.items():
        values[field] = parse_wmic_value(decode(run(["wmic", *alias, "get", prop, "/value"])), prop)
    return Components(**values)


def read() -> Components:
    found = read_powershell()
    # PowerShell ran but CIM gave nothing (the WMI service stopped, a broken repository): try wmic.
    return found if found is not None and found.joined() else read_wmic()
