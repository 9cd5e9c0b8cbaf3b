"""OpenMP wait settings against each other, alone on the CPU and with one core taken by another process.

Each setting runs in a fresh interpreter (libgomp reads them once, at load): the encoder on
8 windows, 4 clips transcribed one at a time and 8 as one batch (beam 5, the server's
decoding loop). With ``--contended`` a busy loop holds one core meanwhile, as a test
client or another service would. Prints a table for docs/benchmarks.md.

Run: .venv/bin/python scripts/openmp_policy.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {
    "OMP_WAIT_POLICY=PASSIVE (no spin)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "PASSIVE + GOMP_SPINCOUNT=3000 (the server's default)": {"OMP_WAIT_POLICY": "PASSIVE",
                                                             "GOMP_SPINCOUNT": "3000"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "libgomp's default (spin about 300,000 times)": {},
}

MEASURE = """
import time, torch, whisper
from asr_server.engine.audio_decoding import decode_wav
from asr_server.config import Config
from asr_server.engine.transcriber import Engine, EngineSettings
from asr_server.contract.domain import TranscribeOptions
from tests.harness import load_manifest
engine = Engine(EngineSettings(Config().model_path, "cpu", threads=2, beam_size=5, vad=False))
model = engine.model
clips = [c for c in load_manifest() if c.kind == "short"][::4][:8]
samples = [decode_wav(c.path.read_bytes(), 600).samples for c in clips]
mels = [whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(s))) for s in samples]
items = [(s, TranscribeOptions(c.lang, "transcribe")) for s, c in zip(samples, clips)]
with torch.inference_mode():
    model.encoder(mels[0][None])
    started = time.perf_counter()
    features = torch.cat([model.encoder(m[None]) for m in mels])
    encoder = time.perf_counter() - started
engine.transcribe(*items[0])
started = time.perf_counter()
engine.transcribe_batch(items[:4], capacity=1)
alone = time.perf_counter() - started
started = time.perf_counter()
engine.transcribe_batch(items, capacity=8)
batch = time.perf_counter() - started
print(f"{encoder:.2f} {alone:.2f} {batch:.2f}")
"""


def measure(env: dict[str, str]) -> list[float]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", MEASURE], cwd=REPO, env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    return [float(x) for x in out.split()[-3:]]


def main() -> int:
    print("| setting | CPU | encoder, 8 windows s | 4 clips decoded one by one s | 8 clips as one batch s |")
    print("|---|---|---|---|---|")
    for contended in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if contended else None
        try:
            time.sleep(0.5)
            for name, env in SETTINGS.items():
                encoder, alone, batch = measure(env)
                where = "one core busy elsewhere" if contended else "alone"
                print(f"| {name} | {where} | {encoder:.2f} | {alone:.2f} | {batch:.2f} |", flush=True)
        finally:
            if hog:
                hog.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
