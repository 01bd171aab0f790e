"""DAG files shipped with the package; ``esl-export install-dag`` copies them into Airflow's dags folder.

``esl_export.py`` here is a symlink to the repository's ``dags/esl_export.py`` (the one source, also
what the tests and ``make demo`` parse); wheels and sdists carry it as a regular file. Nothing imports
it: it is package data that happens to be Python, kept a module so setuptools ships it without extra
configuration.
"""
