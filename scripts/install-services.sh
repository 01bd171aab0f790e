#!/usr/bin/env bash
# Debian's PostgreSQL server and Redis for `make test-distributed`, installed only when missing.
# Nothing is started here and no system cluster is created: the test starts its own throwaway
# PostgreSQL and Redis on free 127.0.0.1 ports and stops them by PID.
set -euo pipefail

have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
have_redis() { command -v redis-server >/dev/null; }

if have_postgres && have_redis; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-services: need root to apt-get install postgresql redis-server" >&2
  exit 1
fi
# Debian would create and start a 'main' cluster on install; the tests never use one.
mkdir -p /etc/postgresql-common/createcluster.d
echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/esl-export.conf
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql redis-server >/dev/null
have_postgres && have_redis
