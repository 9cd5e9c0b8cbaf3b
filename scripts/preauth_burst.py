"""Memory under a burst of unauthenticated clients: N of them each send a wrong key and a 160 MB frame.

The same burst as tests/test_preauth.py, against the real server from any
checkout (``--server-dir``, for the figures before a fix), printing RSS before,
at its peak (the kernel's high-water mark, reset at the start) and 5 s after.

    .venv/bin/python scripts/preauth_burst.py [--server-dir CHECKOUT] [--clients 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import REPO, ServerProcess
from tests.test_preauth import PeakRss, attack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-dir", type=Path, default=REPO)
    parser.add_argument("--clients", type=int, default=60)
    args = parser.parse_args()
    command = ["bash", "-c", f"cd {args.server_dir} && exec {sys.executable} -m asr_server"]
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": "right-key", "METADATA_TIMEOUT_S": "120"}
    with ServerProcess(env=env, command=command) as server:
        assert server.proc is not None
        rss = PeakRss(server.proc.pid)

        async def burst() -> list[bytes]:
            return await asyncio.gather(*(attack(server.port) for _ in range(args.clients)))

        started = time.monotonic()
        asyncio.run(burst())
        took = time.monotonic() - started
        peak = rss.peak
        time.sleep(5)  # the figure is what is still held 5 s after the burst
        print(f"{args.clients} clients x 160 MB in {took:.1f} s: RSS before {rss.before:.0f} MB, "
              f"peak {peak:.0f} MB (+{peak - rss.before:.0f}), 5 s after {rss.now:.0f} MB "
              f"(+{rss.now - rss.before:.0f}); health {server.health()[0]}")


if __name__ == "__main__":
    main()
