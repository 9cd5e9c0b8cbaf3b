"""OpenMP wait settings against each other, alone on the CPU and with one core taken by another process.

Each setting runs in a fresh interpreter (libgomp reads them once, at load): the encoder on
8 windows, 4 clips decoded one at a time and the same 8 decoded as one batch (beam 5, the
server's decoder). With ``--contended`` a busy loop holds one core meanwhile, as a test
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
from whisper.decoding import DecodingOptions
from asr_server.audio import decode_wav
from asr_server.config import Config
from asr_server.engine import load_model
from asr_server.inference import decode
from tests.harness import load_manifest
torch.set_num_threads(2)
model = load_model(Config().model_path, torch.device("cpu"))
clips = [c for c in load_manifest() if c.kind == "short"][::4][:8]
mels = [whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(
    decode_wav(c.path.read_bytes(), 600).samples))) for c in clips]
with torch.inference_mode():
    model.encoder(mels[0][None])
    started = time.perf_counter()
    features = torch.cat([model.encoder(m[None]) for m in mels])
    encoder = time.perf_counter() - started
    options = [DecodingOptions(beam_size=5, temperature=0.0, fp16=False, language=c.lang) for c in clips]
    decode(model, features[0], options[0])
    started = time.perf_counter()
    for i in range(4):
        decode(model, features[i], options[i])
    alone = time.perf_counter() - started
    started = time.perf_counter()
    decode(model, features, DecodingOptions(beam_size=5, temperature=0.0, fp16=False),
           [c.lang for c in clips])
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
