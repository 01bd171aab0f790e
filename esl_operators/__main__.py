"""``python -m esl_operators`` is the ``esl-export`` command."""

import logging
import os
import sys

from esl_operators.cli import main

code = main()
# The command is done and its files are closed: skip the interpreter's teardown (freeing every
# object and module one by one, pyarrow's and pandas' included: 0.1-0.2 s of CPU after a fetch,
# issue 11 target 2); the OS reclaims the memory at once. Output and log handlers are flushed first.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
