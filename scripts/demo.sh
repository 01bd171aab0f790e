#!/usr/bin/env bash
# `make demo`: a simulated fleet of 3 ESL-Working servers on loopback, a throwaway SQLite Airflow home;
# first the 13 days before yesterday are published with the standalone command (`esl-export fetch`)
# against the simulator advanced day by day (`--as-of`), so the run has a history to compare with; then
# one real `airflow dags test esl_export <yesterday>` against the fleet as of yesterday, then the files
# it wrote. Works with or without history support in the aggregate step (without it the report simply
# has no "Since" and "Trends" sections).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
PORT=${DEMO_PORT:-18180}
DS=$(date -u -d yesterday +%F)
HISTORY_DAYS=${DEMO_HISTORY_DAYS:-13}  # earlier dates seeded before the DAG run

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
SIM_ARGS=(--servers 3 --base-port "$PORT" --stores 6 --esls 400 --page-size 50 --latency-ms 5 --capacity 8
  --seed 7)
SIM=
stop_simulator() {
  if [ -n "$SIM" ]; then kill "$SIM" 2>/dev/null || true; wait "$SIM" 2>/dev/null || true; SIM=; fi
}
trap stop_simulator EXIT

start_simulator() {  # $1: the day the simulated fleet is as of
  "$BIN/python" -m esl_operators.simulator "${SIM_ARGS[@]}" --as-of "$1" > "$AIRFLOW_HOME/simulator.log" 2>&1 &
  SIM=$!
  for _ in $(seq 100); do  # up to ~10 s for the last server to listen
    "$BIN/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$((PORT + 2))/api3/users', timeout=1)" \
      2>/dev/null && return 0
    kill -0 "$SIM" 2>/dev/null || { cat "$AIRFLOW_HOME/simulator.log"; exit 1; }
    sleep 0.1
  done
  echo "the simulator did not listen within 10 s; log: $AIRFLOW_HOME/simulator.log"; exit 1
}

# One line per published date: labels, and what changed since the previous one when it was computed.
summary() {
  "$BIN/python" - "$AIRFLOW_VAR_ESL_OUTPUT_ROOT/$1/_manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1], encoding="utf-8"))
h = m.get("history")
since = "" if not isinstance(h, dict) else (
    "  (no earlier published date)" if not h.get("previous_date") else
    f"  since {h['previous_date']}: " + ", ".join(f"{k} {h.get(k, 0)}" for k in ("new", "gone", "battery_drop", "moved", "firmware")))
print(f"{m['date']}  {m['rows']:>5} labels{since}")
PY
}

# The standalone command names each server like the DAG's connection id, so both write the same keys.
SERVERS=()
for i in 0 1 2; do
  SERVERS+=(--server "esl_store_$(printf '\x'"$(printf %x $((97 + i)))")=http://127.0.0.1:$((PORT + i))")
done
echo "== esl-export fetch for the $HISTORY_DAYS days before $DS, the simulator advanced day by day"
for k in $(seq "$HISTORY_DAYS" -1 1); do
  day=$(date -u -d "$DS -$k days" +%F)
  start_simulator "$day"
  "$BIN/esl-export" fetch "${SERVERS[@]}" --date "$day" --out "$AIRFLOW_VAR_ESL_OUTPUT_ROOT" \
    > "$AIRFLOW_HOME/fetch.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/fetch.log"; echo "esl-export fetch $day failed"; exit 1; }
  stop_simulator
  summary "$day"
done
start_simulator "$DS"

"$BIN/airflow" db migrate > "$AIRFLOW_HOME/migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/migrate.log"; exit 1; }
# The pool named by ESL_EXPORT_POOL must exist, or its tasks are never scheduled.
"$BIN/airflow" pools set "$ESL_EXPORT_POOL" 16 "ESL-Working fetch tasks" >> "$AIRFLOW_HOME/migrate.log" 2>&1 \
  || { tail -20 "$AIRFLOW_HOME/migrate.log"; exit 1; }
echo "== airflow dags test esl_export $DS"
"$BIN/airflow" dags test esl_export "$DS" > "$AIRFLOW_HOME/dags-test.log" 2>&1 \
  || { tail -40 "$AIRFLOW_HOME/dags-test.log"; echo "dags test failed; full log: $AIRFLOW_HOME/dags-test.log"; exit 1; }
grep -E "esl_operators|batch [0-9]|esl_id_part" "$AIRFLOW_HOME/dags-test.log" | tail -n 12 || true

OUT=$AIRFLOW_VAR_ESL_OUTPUT_ROOT/$DS
summary "$DS"
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
for name in ("_changes.csv", "_battery_forecast.csv", "_snapshot.parquet"):
    if (out / name).exists():
        lines = "" if name.endswith(".parquet") else f"  {len((out / name).read_text().splitlines()) - 1:>6} rows"
        print(f"{out / name}{lines}")
if (out / "report.html").exists():
    print(f"{out / 'report.html'}  (open in a browser)")
print("".join((out / manifest["partitions"][0]["file"]).open(encoding="utf-8").readlines()[:4]), end="")
PY
