"""Imported by the local engine's fork server: heavy libraries are imported and the stages'
models loaded once there, and every worker forked from it inherits them (a clean,
single-threaded parent to fork from). What that cost is recorded here, so the build can count
it once in the CPU it reports for all its processes."""

import os

from .lifetime import fork_server_exits_fast
from .pipeline import cpu_now, preload_modules

preload_modules()
PRELOAD_PID = os.getpid()
PRELOAD_CPU = cpu_now()
fork_server_exits_fast()  # last: its exit handler runs first (see avf_data.lifetime)
