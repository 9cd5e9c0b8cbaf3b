"""``python -m asr_client``: the same as the ``asr-client`` command."""

import sys

from asr_client.cli import main

sys.exit(main())
