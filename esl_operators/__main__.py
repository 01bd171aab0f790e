"""``python -m esl_operators`` is the ``esl-export`` command (:func:`esl_operators.cli.run`)."""

from esl_operators.cli import run

run()
