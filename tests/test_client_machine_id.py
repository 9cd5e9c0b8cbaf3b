"""asr_client's machine_id: the hash, and each platform's parsers on captured tool output and a fake /sys.

Pure and fast: no server, no model. The Windows and macOS texts are what those
tools print (wmic's CR CR LF line ends and UTF-16 when redirected included);
the CPUs are ones whose WMI ProcessorId is known.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from asr_client import hw_linux, hw_macos, hw_windows, machine_id
from asr_client.hwinfo import Components, decode

I7_8700 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 158
model name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz
stepping\t: 10
microcode\t: 0xf4
cpu MHz\t\t: 800.071
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi \
mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts \
rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 \
ssse3 sdbg fma cx16 xtpr pdcm pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm
bugs\t\t: cpu_meltdown spectre_v1 spectre_v2 spec_store_bypass l1tf mds swapgs taa itlb_multihit

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 999
stepping\t: 0
flags\t\t: fpu
"""

RYZEN_5800X = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 33
model name\t: AMD Ryzen 7 5800X 8-Core Processor
stepping\t: 0
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse \
sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid \
extd_apicid aperfmperf rapl pni pclmulqdq monitor ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx
"""

ARM = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""


def test_digest_is_sha256_of_the_six_values_joined() -> None:
    # sha256("abc"), the FIPS 180-2 test vector, computed independently of hashlib here.
    assert machine_id.digest(Components("a", "b", "c")) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    parts = Components(" PF1ABCDE ", "L1HF01234567\n", "LENOVO", "20QDS3E200", "BFEBFBFF000806EC",
                       "  WD-WCC4N1234567")
    assert machine_id.digest(parts) == hashlib.sha256(
        b"PF1ABCDEL1HF01234567LENOVO20QDS3E200BFEBFBFF000806ECWD-WCC4N1234567").hexdigest()
    assert machine_id.digest(Components(bios_serial="Ж")) == hashlib.sha256("Ж".encode()).hexdigest()


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (I7_8700, "BFEBFBFF000906EA"),
    (RYZEN_5800X, "178BFBFF00A20F10"),
    # Family 15 keeps its extended model: an Athlon 64 X2 "Brisbane", CPUID 00060FB2.
    ("vendor_id: AuthenticAMD\ncpu family: 15\nmodel: 107\nstepping: 2\nflags: fpu\n", "0000000100060FB2"),
    # Families below 6 have no extended model: a Pentium MMX, 0543.
    ("vendor_id: GenuineIntel\ncpu family: 5\nmodel: 4\nstepping: 3\nflags: fpu mmx\n", "0080000100000543"),
    (ARM, ""),
    ("", ""),
    ("cpu family: 6\nmodel: 158\nstepping: unknown\nflags: fpu\n", ""),
])
def test_processor_id_from_cpuinfo(cpuinfo: str, expected: str) -> None:
    assert hw_linux.processor_id(cpuinfo) == expected


def _write(root: Path, relative: str, text: str | bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def _dmi(root: Path) -> None:
    for name, value in {"product_serial": "PF1ABCDE\n", "board_serial": "L1HF01234567\n",
                        "board_vendor": "LENOVO\n", "board_name": "20QDS3E200\n",
                        "bios_version": "N2IET91W (1.69 )\n"}.items():
        _write(root, f"sys/class/dmi/id/{name}", value)


def test_linux_nvme_partition_root(tmp_path: Path) -> None:
    _dmi(tmp_path)
    _write(tmp_path, "proc/cpuinfo", I7_8700)
    _write(tmp_path, "proc/self/mountinfo",
           "22 29 0:21 / /proc rw,nosuid - proc proc rw\n"
           "29 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro\n"
           "30 29 259:1 / /boot/efi rw,relatime shared:2 - vfat /dev/nvme0n1p1 rw\n")
    _write(tmp_path, "sys/block/nvme0n1/dev", "259:0\n")
    _write(tmp_path, "sys/block/nvme0n1/device/serial", "S4EWNX0R123456      \n")
    for number in (1, 2):
        _write(tmp_path, f"sys/block/nvme0n1/nvme0n1p{number}/dev", f"259:{number}\n")
        _write(tmp_path, f"sys/block/nvme0n1/nvme0n1p{number}/partition", f"{number}\n")
    # A second disk, whose serial must not be taken.
    _write(tmp_path, "sys/block/sdb/dev", "8:16\n")
    _write(tmp_path, "sys/block/sdb/device/serial", "OTHERDISK\n")
    assert hw_linux.read(tmp_path) == Components("PF1ABCDE", "L1HF01234567", "LENOVO", "20QDS3E200",
                                                 "BFEBFBFF000906EA", "S4EWNX0R123456")


def test_linux_udev_serial_wins_and_lvm_is_followed(tmp_path: Path) -> None:
    _write(tmp_path, "proc/self/mountinfo", "26 1 253:0 / / rw,relatime - xfs /dev/mapper/vg-root rw\n")
    _write(tmp_path, "sys/block/dm-0/dev", "253:0\n")
    _write(tmp_path, "sys/block/dm-0/dm/name", "vg-root\n")
    (tmp_path / "sys/block/dm-0/slaves/sda3").mkdir(parents=True)
    _write(tmp_path, "sys/block/sda/dev", "8:0\n")
    _write(tmp_path, "sys/block/sda/sda3/dev", "8:3\n")
    _write(tmp_path, "sys/block/sda/sda3/partition", "3\n")
    _write(tmp_path, "sys/block/sda/device/vpd_pg80", b"\x00\x80\x00\x0fWD-WCC4N1234567")
    assert hw_linux.disk_serial(tmp_path) == "WD-WCC4N1234567"
    _write(tmp_path, "run/udev/data/b8:0",
           "S:disk/by-id/ata-WDC_WD10EZEX_WD-WCC4N1234567\nE:ID_SERIAL=WDC_WD10EZEX_WD-WCC4N1234567\n"
           "E:ID_SERIAL_SHORT=WD-WCC4N7654321\nG:systemd\n")
    assert hw_linux.disk_serial(tmp_path) == "WD-WCC4N7654321"


def test_linux_btrfs_anonymous_device_goes_by_source_name(tmp_path: Path) -> None:
    _write(tmp_path, "proc/self/mountinfo", "30 1 0:31 /@ / rw,relatime - btrfs /dev/vda3 rw,subvol=/@\n")
    _write(tmp_path, "sys/block/vda/dev", "252:0\n")
    _write(tmp_path, "sys/block/vda/serial", "2006635818091778\n")
    _write(tmp_path, "sys/block/vda/vda3/partition", "3\n")
    assert hw_linux.root_disk(tmp_path) == "vda"
    assert hw_linux.disk_serial(tmp_path) == "2006635818091778"


def test_linux_unreadable_values_are_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dmi(tmp_path)
    _write(tmp_path, "proc/cpuinfo", ARM)
    # A container: / is an overlay with no block device behind it.
    _write(tmp_path, "proc/self/mountinfo", "600 500 0:52 / / rw,relatime - overlay overlay rw,lowerdir=/l\n")
    real_read_text = Path.read_text

    def root_only(self: Path, *args: object, **kwargs: object) -> str:
        # The dmi serials are mode 0400 root: what a normal user gets (the tests may run as root).
        if self.name in ("product_serial", "board_serial"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", root_only)
    assert hw_linux.read(tmp_path) == Components("", "", "LENOVO", "20QDS3E200", "", "")
    assert hw_linux.read(tmp_path / "nothing-here") == Components()


CIM_JSON = ('{"BiosSerial":"PF1ABCDE","BoardSerial":"L1HF01234567 ","BoardManufacturer":"LENOVO",'
            '"BoardProduct":"20QDS3E200","ProcessorId":"BFEBFBFF000806EC",'
            '"DiskSerial":"E823_8FA6_BF53_0001_001B_448B_4A1B_2C3D."}\r\n')
# Windows PowerShell 5.1 prints ConvertTo-Json with these wide gaps; two sockets give a list.
CIM_TWO_CPUS = ('[\r\n    {\r\n        "ProcessorId":  "BFEBFBFF00050654"\r\n    },\r\n'
                '    {\r\n        "ProcessorId":  "BFEBFBFF00050657"\r\n    }\r\n]\r\n')


def test_windows_cim_json() -> None:
    assert parse_all(CIM_JSON) == Components("PF1ABCDE", "L1HF01234567", "LENOVO", "20QDS3E200",
                                             "BFEBFBFF000806EC", "E823_8FA6_BF53_0001_001B_448B_4A1B_2C3D.")
    assert hw_windows.parse_cim_json(CIM_TWO_CPUS, "ProcessorId") == "BFEBFBFF00050654"
    assert hw_windows.parse_cim_json('{"BiosSerial":null,"BoardSerial":"  "}', "BiosSerial") == ""
    assert hw_windows.parse_cim_json("Get-CimInstance : Access denied", "BiosSerial") == ""


def parse_all(output: str) -> Components:
    return Components(**{f: hw_windows.parse_cim_json(output, p) for f, p in hw_windows.FIELDS.items()})


def test_windows_wmic_value_output() -> None:
    bios = "\r\r\n\r\r\nSerialNumber=PF1ABCDE\r\r\n\r\r\n\r\r\n"
    assert hw_windows.parse_wmic_value(bios, "SerialNumber") == "PF1ABCDE"
    disk = "\r\r\n\r\r\nSerialNumber=      WD-WCC4N1234567\r\r\n\r\r\n"
    assert hw_windows.parse_wmic_value(disk, "SerialNumber") == "WD-WCC4N1234567"
    # Redirected to a file or a pipe from some shells, wmic writes UTF-16-LE with a BOM.
    redirected = ("\ufeff\r\r\n\r\r\nProcessorId=BFEBFBFF000906EA\r\r\n\r\r\n"
                  "ProcessorId=BFEBFBFF000906EB\r\r\n").encode("utf-16-le")
    assert hw_windows.parse_wmic_value(decode(redirected), "ProcessorId") == "BFEBFBFF000906EA"
    assert hw_windows.parse_wmic_value("\r\r\n\r\r\nSerialNumber=\r\r\n", "SerialNumber") == ""
    assert hw_windows.parse_wmic_value("No Instance(s) Available.\r\r\n", "SerialNumber") == ""


def test_windows_falls_back_to_wmic(monkeypatch: pytest.MonkeyPatch) -> None:
    wmic = {("bios", "SerialNumber"): "PF1ABCDE", ("baseboard", "SerialNumber"): "L1HF01234567",
            ("baseboard", "Manufacturer"): "LENOVO", ("baseboard", "Product"): "20QDS3E200",
            ("cpu", "ProcessorId"): "BFEBFBFF000806EC", ("diskdrive", "SerialNumber"): "WD-1"}
    calls: list[list[str]] = []

    def fake_run(args: list[str], timeout_s: float = 0) -> bytes | None:
        calls.append(args)
        if args[0] == "powershell.exe":
            return None  # not found, or timed out
        if args[1] == "diskdrive":
            assert args[2:4] == ["where", "Index=0"]
        return f"\r\r\n\r\r\n{args[-2]}={wmic[(args[1], args[-2])]}\r\r\n".encode()

    monkeypatch.setattr(hw_windows, "run", fake_run)
    assert hw_windows.read() == Components("PF1ABCDE", "L1HF01234567", "LENOVO", "20QDS3E200",
                                           "BFEBFBFF000806EC", "WD-1")
    assert calls[0][0] == "powershell.exe" and len(calls) == 7
    monkeypatch.setattr(hw_windows, "run", lambda args, timeout_s=0: CIM_JSON.encode())
    assert hw_windows.read().disk_serial == "E823_8FA6_BF53_0001_001B_448B_4A1B_2C3D."


IOREG_INTEL = """+-o MacBookPro15,1  <class IOPlatformExpertDevice, id 0x100000110, registered, matched, \
active, busy 0 (174182 ms), retain 35>
    {
      "IOPolledInterface" = "SMCPolledInterface is not serializable"
      "compatible" = <"MacBookPro15,1">
      "version" = <"1.0">
      "board-id" = <"Mac-937A206F2EE63C01">
      "platform-feature" = <0200000000000000>
      "serial-number" = <43303258583030303030303000000000000000000000000000000000000000>
      "IOPlatformSerialNumber" = "C02XX0000000"
      "target-type" = <"Mac">
      "manufacturer" = <"Apple Inc.">
      "IOPlatformUUID" = "12345678-ABCD-1234-ABCD-1234567890AB"
      "model" = <"MacBookPro15,1">
      "name" = <"/">
    }
"""
IOREG_ARM = """+-o J314sAP  <class IOPlatformExpertDevice, id 0x100000221, registered, matched, active, \
busy 0 (23486 ms), retain 39>
    {
      "manufacturer" = <"Apple Inc.">
      "compatible" = <"J314sAP","MacBookPro18,3","AppleARM">
      "model" = <"MacBookPro18,3">
      "IOPlatformSerialNumber" = "FVFXX0000000"
      "target-type" = <"J314s">
    }
"""
IOREG_NVME = """+-o IONVMeBlockStorageDevice  <class IONVMeBlockStorageDevice, id 0x100000384, registered, \
matched, active, busy 0 (0 ms), retain 10>
    {
      "Physical Interconnect Location" = "Internal"
      "Device Characteristics" = {"Serial Number"="0ba0123456789abc","Firmware Revision"="1153.40.",\
"Product Name"="APPLE SSD AP0512Q","Medium Type"="Solid State"}
      "Protocol Characteristics" = {"Physical Interconnect"="Apple Fabric"}
    }
"""


def test_macos_parsers() -> None:
    intel = hw_macos.parse_ioreg_properties(IOREG_INTEL)
    assert (intel["IOPlatformSerialNumber"], intel["manufacturer"], intel["board-id"]) == (
        "C02XX0000000", "Apple Inc.", "Mac-937A206F2EE63C01")
    assert intel["serial-number"] == "C02XX0000000"  # hex data decoded up to its NUL padding
    assert hw_macos.parse_ioreg_properties(IOREG_ARM)["compatible"] == "J314sAP"
    assert hw_macos.parse_ioreg_serial(IOREG_NVME) == "0ba0123456789abc"
    assert hw_macos.parse_ioreg_serial(IOREG_INTEL) == ""
    # An i7-8850H: signature 0x906EA; feature_bits is ECX << 32 | EDX.
    assert hw_macos.processor_id("591594\n9221959987971750911\n") == "BFEBFBFF000906EA"
    assert hw_macos.processor_id("") == ""  # Apple silicon: sysctl knows neither name


def test_macos_read_maps_each_value(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = {"IOPlatformExpertDevice": IOREG_ARM, "IONVMeBlockStorageDevice": IOREG_NVME}
    monkeypatch.setattr(hw_macos, "run", lambda args, timeout_s=0: (
        outputs[args[-1]].encode() if args[0] == "ioreg" and args[-1] in outputs else None))
    assert hw_macos.read() == Components("FVFXX0000000", "", "Apple Inc.", "MacBookPro18,3", "",
                                         "0ba0123456789abc")
    outputs["IOPlatformExpertDevice"] = IOREG_INTEL
    assert hw_macos.read().board_product == "Mac-937A206F2EE63C01"


def test_a_failing_reader_gives_the_empty_components(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Components:
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(hw_windows, "read", broken)
    assert machine_id.components("win32") == Components()
    assert machine_id.components("freebsd14") == Components()
