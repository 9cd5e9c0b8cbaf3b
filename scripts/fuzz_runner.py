"""The command line shared by the atheris harnesses (scripts/fuzz_metadata.py, scripts/fuzz_wav.py).

libFuzzer ends the process with exit() when its runs are done, so nothing after
``atheris.Fuzz()`` runs, not even ``atexit`` handlers. The harness therefore runs
twice: the parent writes the seed corpus and a dictionary to a temporary
directory, starts itself again as the worker (``--worker``, which calls
``atheris.Setup``/``atheris.Fuzz``), echoes the worker's libFuzzer output as it
comes, and prints the one summary line from libFuzzer's final stats and its own
wall clock. Its exit status is the worker's: 0 when no input made an exception
other than ``AsrError`` escape.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

SeedWriter = Callable[[Path], None]
TestOneInput = Callable[[bytes], None]

# The last libFuzzer status line ("#1000000 DONE cov: 312 ft: 1201 corp: 190/9077b ...").
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\S+)")
_RUNS = re.compile(r"^stat::number_of_executed_units: (\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def main(
    name: str,
    test_one_input: TestOneInput,
    write_seeds: SeedWriter,
    dictionary: Mapping[str, bytes],
    max_len: int,
) -> int:
    parser = argparse.ArgumentParser(
        description=f"atheris harness {name}; arguments it does not know are passed to libFuzzer "
        "(e.g. -seed=1 -artifact_prefix=out/)."
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="libFuzzer -runs (default 1000000)")
    parser.add_argument("--max-len", type=int, default=max_len,
                        help=f"libFuzzer -max_len (default {max_len})")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="corpus directory to use and grow (default: a temporary one with the seeds)")
    parser.add_argument("--worker", action="store_true",
                        help="run libFuzzer in this process with the arguments as given (what the parent "
                        "starts); given a file instead of a corpus, it runs that one input")
    args, extra = parser.parse_known_args()
    if not __debug__:
        parser.error("the harness checks results with assert: run it without -O")
    if args.worker:
        return _work(test_one_input, extra)
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        corpus = args.corpus or Path(tmp) / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        write_seeds(corpus)
        dict_path = Path(tmp) / "tokens.dict"
        dict_path.write_text("".join(f'{key}="{_escape(value)}"\n' for key, value in dictionary.items()))
        libfuzzer = [f"-runs={args.runs}", f"-max_len={args.max_len}", f"-dict={dict_path}",
                     "-keep_seed=1", "-print_final_stats=1", *extra, str(corpus)]
        return _supervise(name, libfuzzer)


def _work(test_one_input: TestOneInput, libfuzzer: list[str]) -> int:
    import atheris

    atheris.Setup(sys.argv[:1] + libfuzzer, test_one_input)
    atheris.Fuzz()  # exits the process
    return 0


def _supervise(name: str, libfuzzer: list[str]) -> int:
    command = [sys.executable, sys.argv[0], "--worker", *libfuzzer]
    print("worker:", " ".join(command), file=sys.stderr, flush=True)
    runs = status = artifact = None
    start = time.monotonic()
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace") as worker:
        assert worker.stderr is not None
        for line in worker.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if found := _STATUS.match(line):
                status = found
            elif found := _RUNS.match(line):
                runs = int(found.group(1))
            elif found := _ARTIFACT.search(line):
                artifact = found.group(1)
    wall = time.monotonic() - start
    iterations = runs if runs is not None else int(status.group(1)) if status else 0
    coverage = f"cov {status.group(2)} ft {status.group(3)} corp {status.group(4)}" if status else "cov ?"
    if worker.returncode == 0:
        outcome = "no crash"
    else:
        outcome = f"CRASH (exit {worker.returncode}" + (f", input {artifact})" if artifact else ")")
    rate = iterations / wall if wall > 0 else 0.0
    print(f"{name}: {iterations} iterations in {wall:.1f} s ({rate:.0f}/s), {coverage}, {outcome}",
          flush=True)
    return worker.returncode


def _escape(value: bytes) -> str:
    """A libFuzzer dictionary value: printable ASCII as is, the rest as \\xNN."""
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}" for b in value
    )
