"""Two checkouts' servers under the same concurrent load, taking turns round by round.

For a before/after of one change on a shared host whose speed drifts: both
servers are started at once (an idle one costs no CPU), then each round runs
``--clients`` concurrent clients over the same short clips against one and
then the other, the order alternating, every reply checked (scripts/bench.py's
own functions). Prints each round's throughput and the per-checkout medians.

Run: .venv/bin/python scripts/ab_servers.py --before /tmp/wt-before --after . --rounds 4
(each checkout needs its .venv and models/, links will do)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench import bench_concurrent, server_env
from tests.harness import ServerProcess, load_manifest


def server_of(checkout: Path, beam: int, max_batch: int) -> ServerProcess:
    """The server of ``checkout``: its package first on the path, whatever the working directory."""
    start = (f"import sys; sys.path.insert(0, {str(checkout.resolve())!r}); "
             "from asr_server.__main__ import main; sys.exit(main())")
    return ServerProcess(env=server_env(beam, max_batch), command=[sys.executable, "-c", start])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    clips = [c for c in load_manifest() if c.kind == "short"][: args.clips]
    decoding = "greedy" if args.beam == 1 else f"beam {args.beam}"
    with server_of(args.before, args.beam, args.max_batch) as before, \
            server_of(args.after, args.beam, args.max_batch) as after:
        servers = {"before": before, "after": after}
        runs = bench_concurrent(servers, clips, decoding, args.clients, args.rounds)
    for run in runs:
        print(f"{run.name}: {run.throughput:.2f} audio s/s over {args.rounds} rounds, p50 "
              f"{run.percentile(0.5):.2f} s, p95 {run.percentile(0.95):.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
