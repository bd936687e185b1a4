"""``chatgw`` started from inside a cgroup: ``python -m in_cgroup serve ...``.

The process joins the cgroup whose directory ``CHATGW_TEST_CGROUP`` names before the CLI
runs, as a container's process starts inside its cgroup: what ``chatgw serve`` reads of
its own CPU quota at start-up (``gateway.busypoll.cpu_quota``) is then that cgroup's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gateway.cli import main

if __name__ == "__main__":
    Path(os.environ["CHATGW_TEST_CGROUP"], "cgroup.procs").write_text(str(os.getpid()))
    sys.exit(main())
