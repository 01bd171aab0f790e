# Airflow 3.3.2 with esl-export installed; used by docker-compose.yaml (`docker compose build`).
# DAGs and plugins are mounted from ./dags and ./plugins, so editing them needs no rebuild.
FROM apache/airflow:3.3.2

# Only what the package needs to install; tests, data and the virtualenv stay out (.dockerignore).
COPY --chown=airflow:0 pyproject.toml README.md /opt/esl-export/
COPY --chown=airflow:0 esl_operators /opt/esl-export/esl_operators

# Pinning apache-airflow to the image's own version keeps pip from up- or downgrading Airflow itself.
# The image already ships the Celery, PostgreSQL, Redis and Amazon providers.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "/opt/esl-export[amazon]"
