"""``python -m esl_operators`` is the ``esl-export`` command."""

import sys

from esl_operators.cli import main

sys.exit(main())
