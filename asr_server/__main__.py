"""Entry point: ``python -m asr_server`` and the ``asr-server`` script: env -> Config -> app."""

from __future__ import annotations

import os
import sys

# OpenMP reads these once, when torch (libgomp) loads. Unbounded spin-waiting made torch 2 to 8
# times slower whenever another process held a core; sleeping at once (passive, spin count 0)
# made every small op of a decoder step pay a thread wake-up: a third of a decode on 2 cores.
# A short bounded spin keeps the threads awake between the ops of one step and costs about
# 10-25% when a core is taken away (docs/benchmarks.md). GOMP_SPINCOUNT wins over the policy.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000"}
for _name, _value in OPENMP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)


def main() -> int:
    import asyncio

    from asr_server.heap import bound_allocator_retention

    bound_allocator_retention()

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
    import logging

    from asr_server import app, logs
    from asr_server.precision_names import replaced_settings

    logs.configure(config.log_level, config.log_format)
    for line in replaced_settings(os.environ, config.precision):
        logging.getLogger("asr_server").warning("%s", line)

    code = asyncio.run(app.run(config))
    # A request cut off by SIGTERM's grace period may still be decoding in a pool thread, which
    # the interpreter joins at exit (concurrent.futures does, daemon or not): leave without it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
