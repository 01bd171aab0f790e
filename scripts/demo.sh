#!/usr/bin/env bash
# `make demo`: a simulated fleet of 3 ESL-Working servers on loopback, a throwaway SQLite Airflow home,
# one real `airflow dags test esl_export <yesterday>`, then the files it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
PORT=${DEMO_PORT:-18180}
DS=$(date -u -d yesterday +%F)

export AIRFLOW_HOME=$ROOT/airflow_home
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/dags
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW_VAR_ESL_OUTPUT_ROOT=$ROOT/data/esl_export
# The fetch tasks' pool (README: Scale-out), read when the DAG is parsed; created below.
export ESL_EXPORT_POOL=esl_working
export AIRFLOW_VAR_ESL_SERVERS='["esl_store_a", "esl_store_b", "esl_store_c"]'
for i in 0 1 2; do
  name=$(printf '\x'"$(printf %x $((65 + i)))")   # A, B, C
  export "AIRFLOW_CONN_ESL_STORE_${name}"="{\"conn_type\": \"http\", \"host\": \"127.0.0.1\", \"port\": $((PORT + i))}"
done

mkdir -p "$AIRFLOW_HOME"
"$BIN/python" -m esl_operators.simulator --servers 3 --base-port "$PORT" --stores 6 --esls 400 \
  --page-size 50 --latency-ms 5 --capacity 8 --seed 7 > "$AIRFLOW_HOME/simulator.log" 2>&1 &
SIM=$!
trap 'kill "$SIM" 2>/dev/null; wait "$SIM" 2>/dev/null || true' EXIT

for _ in $(seq 100); do  # up to ~10 s for the last server to listen
  "$BIN/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$((PORT + 2))/api3/users', timeout=1)" \
    2>/dev/null && break
  kill -0 "$SIM" 2>/dev/null || { cat "$AIRFLOW_HOME/simulator.log"; exit 1; }
  sleep 0.1
done

"$BIN/airflow" db migrate > "$AIRFLOW_HOME/migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/migrate.log"; exit 1; }
# The pool named by ESL_EXPORT_POOL must exist, or its tasks are never scheduled.
"$BIN/airflow" pools set "$ESL_EXPORT_POOL" 16 "ESL-Working fetch tasks" >> "$AIRFLOW_HOME/migrate.log" 2>&1 \
  || { tail -20 "$AIRFLOW_HOME/migrate.log"; exit 1; }
echo "== airflow dags test esl_export $DS"
"$BIN/airflow" dags test esl_export "$DS" > "$AIRFLOW_HOME/dags-test.log" 2>&1 \
  || { tail -40 "$AIRFLOW_HOME/dags-test.log"; echo "dags test failed; full log: $AIRFLOW_HOME/dags-test.log"; exit 1; }
grep -E "esl_operators|batch [0-9]|esl_id_part" "$AIRFLOW_HOME/dags-test.log" | tail -n 12 || true

OUT=$AIRFLOW_VAR_ESL_OUTPUT_ROOT/$DS
echo
echo "== output: $OUT"
"$BIN/python" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
manifest = json.loads((out / "_manifest.json").read_text())
for part in manifest["partitions"]:
    print(f"{out / part['file']}  {part['rows']:>6} rows  servers: {', '.join(part['servers'])}")
print(f"{out / '_manifest.json'}  errors: {len(manifest['errors'])}, "
      f"labels outside the heartbeat window: {manifest['stale_labels']}")
print("".join((out / manifest["partitions"][0]["file"]).open(encoding="utf-8").readlines()[:4]), end="")
PY
