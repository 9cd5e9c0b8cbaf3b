"""The spec's machine_id: SHA256 over six hardware values, read by this platform's reader.

``machine_id = SHA256(bios_serial + board_serial + board_manufacturer + board_product +
cpu_id + disk_serial)``: each value stripped, joined with no separator, UTF-8,
lower-case hex. The values come from ``hw_windows`` (WMI, the spec's sources),
``hw_linux`` (/sys and /proc) or ``hw_macos`` (ioreg, sysctl); any value that
cannot be read is ``""``, so this never raises. On one machine the id is stable
across runs; the same hardware under two operating systems may give two ids,
since each OS words some values its own way.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from asr_client import hw_linux, hw_macos, hw_windows
from asr_client.hwinfo import Components


def digest(components: Components) -> str:
    """The spec's hash of the six values."""
    return hashlib.sha256(components.joined().encode("utf-8")).hexdigest()


def components(platform: str | None = None, root: Path = Path("/")) -> Components:
    """This machine's six values; ``platform`` as in ``sys.platform``, ``root`` for Linux's /sys, /proc."""
    platform = sys.platform if platform is None else platform
    try:
        if platform == "win32":
            return hw_windows.read()
        if platform == "darwin":
            return hw_macos.read()
        if platform.startswith("linux"):
            return hw_linux.read(root)
    except Exception:  # telemetry: a reader's bug must never stop a transcription
        return Components()
    return Components()  # BSDs and others: no reader yet, the id is the hash of nothing


def machine_id() -> str:
    """This machine's id, 64 lower-case hex digits."""
    return digest(components())
