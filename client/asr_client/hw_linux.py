"""Linux's machine_id inputs, read from /sys and /proc under a root path (tests pass a fake tree).

- bios_serial: ``/sys/class/dmi/id/product_serial``, the SMBIOS system serial, which is
  what Windows' ``Win32_BIOS.SerialNumber`` reports (not ``bios_version``);
- board_serial, board_manufacturer, board_product: ``board_serial``, ``board_vendor``,
  ``board_name`` there;
- cpu_id: WMI's ``ProcessorId`` (CPUID leaf 1, EDX then EAX, 16 upper-case hex digits),
  rebuilt from the first processor of /proc/cpuinfo; ``""`` off x86;
- disk_serial: the disk holding ``/`` (from /proc/self/mountinfo; a partition counts as
  its disk, device-mapper and md as the first disk under them): udev's
  ``ID_SERIAL_SHORT``, else ``device/serial`` (NVMe), ``serial`` (virtio), ``device/vpd_pg80`` (SCSI).

The dmi serials are readable by root only: for anyone else they are ``""``, as is
anything missing (containers have no dmi and an overlay ``/`` has no disk).
"""

from __future__ import annotations

from pathlib import Path

from asr_client.hwinfo import Components

# CPUID leaf 1 EDX bit of each /proc/cpuinfo flag (the kernel's names for them).
EDX_FLAGS: dict[str, int] = {
    "fpu": 0, "vme": 1, "de": 2, "pse": 3, "tsc": 4, "msr": 5, "pae": 6, "mce": 7, "cx8": 8,
    "apic": 9, "sep": 11, "mtrr": 12, "pge": 13, "mca": 14, "cmov": 15, "pat": 16, "pse36": 17,
    "pn": 18, "clflush": 19, "dts": 21, "acpi": 22, "mmx": 23, "fxsr": 24, "sse": 25, "sse2": 26,
    "ss": 27, "ht": 28, "tm": 29, "ia64": 30, "pbe": 31,
}


def read_text(path: Path) -> str:
    """A sysfs or procfs file, stripped; ``""`` when missing, unreadable or not text."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except (OSError, ValueError):
        return ""


def processor_id(cpuinfo: str) -> str:
    """The first processor's ProcessorId (``BFEBFBFF000906EA``), or ``""`` if cpuinfo is not x86's."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: the others repeat it
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    try:
        family, model, stepping = (int(fields[k]) for k in ("cpu family", "model", "stepping"))
        flags = fields["flags"].split()
    except (KeyError, ValueError):
        return ""  # ARM, POWER, s390x, RISC-V: no CPUID, and no fields of these names
    if not 0 <= family <= 0xFF + 0xF or not 0 <= model <= 0xFF or not 0 <= stepping <= 0xF:
        return ""
    # The displayed family is base + extended, the extended part used only when base is 15;
    # the displayed model takes 4 extended bits when the base family is 6 or 15.
    base_family, ext_family = (family, 0) if family < 0xF else (0xF, family - 0xF)
    if base_family in (0x6, 0xF):
        base_model, ext_model = model & 0xF, model >> 4
    elif model > 0xF:
        return ""
    else:
        base_model, ext_model = model, 0
    eax = (ext_family << 20) | (ext_model << 16) | (base_family << 8) | (base_model << 4) | stepping
    edx = 0
    for flag in flags:
        if flag in EDX_FLAGS:
            edx |= 1 << EDX_FLAGS[flag]
    return f"{edx:08X}{eax:08X}"


def root_device(mountinfo: str) -> tuple[str, str]:
    """``(major:minor, source)`` of the filesystem mounted on ``/``; the last such mount is the one seen."""
    found = ("", "")
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/" and "-" in fields[5:]:
            after = fields[fields.index("-", 5) + 1:]
            found = (fields[2], after[1] if len(after) > 1 else "")
    return found


def _disk_of(block: Path, name: str) -> str:
    """The whole disk's name for block device ``name`` (itself, or the disk a partition is on)."""
    if (block / name).is_dir():
        return name
    for disk in _children(block):
        if (disk / name / "partition").exists():
            return disk.name
    return ""


def _children(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []


def _by_dev(block: Path, majmin: str) -> str:
    for disk in _children(block):
        if read_text(disk / "dev") == majmin:
            return disk.name
        for part in _children(disk):
            if (part / "partition").exists() and read_text(part / "dev") == majmin:
                return disk.name
    return ""


def _by_source(block: Path, source: str) -> str:
    # Btrfs and a few others report an anonymous 0:N in mountinfo: go by the device's name.
    if source.startswith("/dev/mapper/"):
        wanted = source.removeprefix("/dev/mapper/")
        return next((d.name for d in _children(block) if read_text(d / "dm" / "name") == wanted), "")
    if source.startswith("/dev/"):
        return _disk_of(block, source.removeprefix("/dev/"))
    return ""


def root_disk(root: Path = Path("/")) -> str:
    """The name in /sys/block of the disk holding ``/`` (``nvme0n1``, ``sda``, ``vda``), or ``""``."""
    block = root / "sys" / "block"
    majmin, source = root_device(read_text(root / "proc" / "self" / "mountinfo"))
    disk = (_by_dev(block, majmin) if majmin and not majmin.startswith("0:") else "") \
        or _by_source(block, source)
    # LVM, LUKS and md sit on other block devices: follow the first one down, a few levels at most.
    for _ in range(4):
        slaves = [s.name for s in _children(block / disk / "slaves")] if disk else []
        if not slaves:
            break
        disk = _disk_of(block, slaves[0])
    return disk


def _vpd_serial(raw: bytes) -> str:
    # SCSI VPD page 0x80: 4 header bytes, the length in byte 3, then the ASCII serial.
    if len(raw) < 4 or raw[1] != 0x80:
        return ""
    return raw[4:4 + raw[3]].decode("ascii", errors="replace").strip("\x00 ")


def disk_serial(root: Path = Path("/")) -> str:
    disk = root_disk(root)
    if not disk:
        return ""
    base = root / "sys" / "block" / disk
    majmin = read_text(base / "dev")
    if majmin:
        udev = read_text(root / "run" / "udev" / "data" / f"b{majmin}")
        for line in udev.splitlines():
            if line.startswith("E:ID_SERIAL_SHORT="):
                return line.removeprefix("E:ID_SERIAL_SHORT=").strip()
    for candidate in (base / "device" / "serial", base / "serial"):
        if value := read_text(candidate):
            return value
    try:
        return _vpd_serial((base / "device" / "vpd_pg80").read_bytes())
    except OSError:
        return ""


def read(root: Path = Path("/")) -> Components:
    dmi = root / "sys" / "class" / "dmi" / "id"
    return Components(
        bios_serial=read_text(dmi / "product_serial"),
        board_serial=read_text(dmi / "board_serial"),
        board_manufacturer=read_text(dmi / "board_vendor"),
        board_product=read_text(dmi / "board_name"),
        cpu_id=processor_id(read_text(root / "proc" / "cpuinfo")),
        disk_serial=disk_serial(root),
    )
