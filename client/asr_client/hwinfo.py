"""The six hardware values the spec's machine_id hashes, and the guarded subprocess every reader uses.

Each platform reader (``hw_linux``, ``hw_windows``, ``hw_macos``) fills a
``Components``; a value it cannot read is ``""``. ``run`` is how they call
tools: a short timeout, no shell, and ``None`` for every failure (tool missing,
non-zero exit, timeout), so a locked-down or odd machine never makes the
client crash, it only gets a less specific id.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

# PowerShell's cold start is the slowest thing run here (1-3 s on a busy laptop).
TIMEOUT_S = 8.0


@dataclass(frozen=True)
class Components:
    """The inputs of the hash, in the spec's order; each stripped, ``""`` when unreadable."""

    bios_serial: str = ""
    board_serial: str = ""
    board_manufacturer: str = ""
    board_product: str = ""
    cpu_id: str = ""
    disk_serial: str = ""

    def __post_init__(self) -> None:
        # Readers strip already; this keeps the hash input canonical whatever built the object.
        for name in ("bios_serial", "board_serial", "board_manufacturer", "board_product", "cpu_id",
                     "disk_serial"):
            object.__setattr__(self, name, str(getattr(self, name) or "").strip())

    def joined(self) -> str:
        return (self.bios_serial + self.board_serial + self.board_manufacturer + self.board_product
                + self.cpu_id + self.disk_serial)


def run(args: list[str], timeout_s: float = TIMEOUT_S) -> bytes | None:
    """The stdout of ``args``, or None if it could not run, failed or took longer than ``timeout_s``."""
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                              check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def decode(output: bytes | None) -> str:
    """Tool output as text: UTF-16 when it looks like it (wmic redirected), else UTF-8, never raising."""
    if not output:
        return ""
    if output.startswith((b"\xff\xfe", b"\xfe\xff")):
        return output.decode("utf-16", errors="replace")
    if output[1:2] == b"\x00":  # ASCII text in UTF-16-LE without a byte-order mark
        return output.decode("utf-16-le", errors="replace")
    return output.decode("utf-8", errors="replace").lstrip("\ufeff")
