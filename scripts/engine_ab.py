"""The engine in-process, this checkout against another (a git worktree), taking turns process by process.

Each turn is a process of its own that imports the engine from one checkout, loads ``base`` with the
server's settings (ASR_PRECISION=auto, beam 5, the VAD, 2 threads, the server's OpenMP settings),
warms it up, and times 12 short eval clips (their languages given) twice: in one batch at
ASR_MAX_BATCH's 8, and one at a time. A drift in this shared host's speed falls on both alike;
compare only figures from one run.

Run: git worktree add /tmp/before <rev> && ln -s "$PWD/models" /tmp/before/models
     .venv/bin/python scripts/engine_ab.py /tmp/before [--turns 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def turn(checkout: str) -> None:
    """One process's timing of the engine imported from ``checkout`` (printed as one JSON line)."""
    sys.path.insert(0, checkout)
    import asr_server.__main__  # noqa: F401  (the server's OpenMP settings, before torch loads)
    from asr_server.config import Config
    from asr_server.contract.domain import TranscribeOptions
    from asr_server.engine.audio_decoding import decode_wav
    from asr_server.engine.transcriber import Engine, EngineSettings

    sys.path.insert(1, str(REPO))
    from tests.harness import load_manifest

    clips = [c for c in load_manifest() if c.kind == "short"][:12]
    items = [(decode_wav(c.path.read_bytes(), 60).samples, TranscribeOptions(c.lang, "transcribe"))
             for c in clips]
    engine = Engine(EngineSettings(Config().model_path, "cpu", 2, 5))
    engine.warm_up()
    timings: dict[str, list[float]] = {"batch": [], "alone": []}
    for _ in range(2):
        for kind, capacity in (("batch", 8), ("alone", 1)):
            started = time.perf_counter()
            results = engine.transcribe_batch(items, capacity=capacity)
            timings[kind].append(time.perf_counter() - started)
            if any(isinstance(r, Exception) or not r.text for r in results):
                raise SystemExit(f"{checkout}: a clip failed or came back empty")
    print(json.dumps({"checkout": checkout, "precision": engine.precision, **timings}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", help="the other checkout (a worktree with models/ linked)")
    parser.add_argument("--turns", type=int, default=2, help="processes per checkout")
    parser.add_argument("--turn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.turn:
        turn(args.turn)
        return
    sys.path.insert(0, str(REPO))
    from tests.harness import find_shared_dir

    env = {**os.environ, "ASR_SHARED_DIR": str(find_shared_dir())}  # a worktree elsewhere cannot find it
    found: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.turns):
        for checkout in (args.other, str(REPO)):
            out = subprocess.run([sys.executable, __file__, args.other, "--turn", checkout], check=True,
                                 capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
            result = json.loads(out)
            mine = found.setdefault(checkout, {"batch": [], "alone": []})
            for kind in ("batch", "alone"):
                mine[kind] += result[kind]
    print("| checkout | 12 clips in a batch of 8, mean s | one at a time, mean s |")
    print("|---|---|---|")
    for checkout, timings in found.items():
        batch, alone = statistics.mean(timings["batch"]), statistics.mean(timings["alone"])
        print(f"| {checkout} | {batch:.2f} | {alone:.2f} |")


if __name__ == "__main__":
    main()
