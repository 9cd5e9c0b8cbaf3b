"""Entry point: ``python -m asr_server`` and the ``asr-server`` script: env -> Config -> app."""

from __future__ import annotations

import os
import sys

# OpenMP reads this once, when torch loads: spin-waiting threads make torch
# 2 to 8 times slower whenever another process holds a core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> int:
    import asyncio

    from asr_server.config import Config, ConfigError

    try:
        config = Config.from_env(os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"asr-server: config: {problem}", file=sys.stderr)
        return 2
    if not config.model_path.is_file():
        print(f"asr-server: model {config.model!r} not found at {config.model_path}: "
              "run `make model` (or set ASR_MODEL to a checkpoint path)", file=sys.stderr)
        return 2
    from asr_server import app, logs

    logs.configure(config.log_level, config.log_format)

    return asyncio.run(app.run(config))


if __name__ == "__main__":
    sys.exit(main())
