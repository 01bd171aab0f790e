"""``python -m esl_operators`` is the ``esl-export`` command.

This module owns the process, so it tunes what only a process may (issue 11, target 2): the cyclic
garbage collector runs after 10,000 new container objects instead of 700 (the fetch allocates a few
hundred per request, almost all freed by reference counting; measured: about 350 collections and
0.16 s of CPU in the CPU-bound scenario's command, 36 and 0.08-0.1 s after), and the interpreter's
teardown is skipped once the command is done (freeing every object and module one by one, pyarrow's
and pandas' included, costs 0.1-0.2 s of CPU; the OS reclaims the memory at once). Output and log
handlers are flushed first; every file the command writes is closed by then.
"""

import gc
import logging
import os
import sys

gc.set_threshold(10_000, 10, 10)

from esl_operators.cli import main  # noqa: E402 (after the collector's setting, which imports obey)

code = main()
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
