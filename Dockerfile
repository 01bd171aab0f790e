# Airflow 3.3.2 with esl-export installed; used by docker-compose.yaml (`docker compose build`).
# DAGs and plugins are mounted from ./dags and ./plugins, so editing them needs no rebuild.
FROM apache/airflow:3.3.2

# Only what the package needs to install; tests, data and the virtualenv stay out (.dockerignore).
# esl_operators/dags/esl_export.py is a symlink to dags/esl_export.py, so that file comes along.
COPY --chown=airflow:0 pyproject.toml README.md constraints.txt /opt/esl-export/
COPY --chown=airflow:0 esl_operators /opt/esl-export/esl_operators
COPY --chown=airflow:0 dags/esl_export.py /opt/esl-export/dags/esl_export.py

# The tested versions (constraints.txt), and apache-airflow pinned to the image's own version, so pip
# neither drifts from what the tests ran nor up- or downgrades Airflow itself. The image already ships
# the Celery, PostgreSQL, Redis and Amazon providers.
RUN pip install --no-cache-dir -c /opt/esl-export/constraints.txt \
        "apache-airflow==${AIRFLOW_VERSION}" "/opt/esl-export[amazon]"
