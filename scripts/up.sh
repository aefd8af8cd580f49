#!/usr/bin/env bash
# `make up` / `make down`: the long-running parts for interactive use, stopped by PID.
#   embedded: Dagster UI (with the project loaded) + the HTTP ingestion endpoint + the canary watcher
#   services: the same + the RabbitMQ consumer + the S3-compatible photo server + Prometheus
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOME_DIR=$($PY -c 'from gymops.settings import load_settings; print(load_settings().home)')
PROFILE=$($PY -c 'from gymops.settings import load_settings; print(load_settings().profile)')
RUN="$HOME_DIR/run"; LOGS="$HOME_DIR/logs"
mkdir -p "$RUN" "$LOGS"
DAGSTER_PORT=${DAGSTER_PORT:-3000}

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

launch() {  # name, command...
  local name=$1; shift
  if running "$name"; then echo "$name already running (pid $(cat "$RUN/$name.pid"))"; return; fi
  set -m  # own process group, so SIGINT/SIGTERM reach the whole tree
  "$@" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  set +m
  echo "$name started (pid $!, log $LOGS/$name.log)"
}

halt() {  # name, signal
  local name=$1 sig=${2:-TERM}
  running "$name" || { rm -f "$RUN/$name.pid"; return; }
  local pid; pid=$(cat "$RUN/$name.pid")
  kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid"
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$RUN/$name.pid"
  echo "$name stopped"
}

case "${1:-start}" in
  start)
    # the variables the profile's config files expand (GYMOPS_PG_*, GYMOPS_DAGSTER_PG_URL, ...)
    eval "$($PY -c 'import shlex; from gymops.settings import load_settings
for k, v in load_settings().environment().items(): print(f"export {k}={shlex.quote(v)}")')"
    export DAGSTER_HOME; DAGSTER_HOME=$($PY -c 'from gymops.settings import load_settings; from gymops.dagster_home import prepare; print(prepare(load_settings()))')
    if [ "$PROFILE" = services ]; then
      $PY -m gymops s3 start
      launch consumer "$PY" -m gymops -v ingest consume
    fi
    launch ingest "$PY" -m gymops ingest serve
    launch watcher "$PY" -m gymops serving watch  # canary watcher + the tier's metrics endpoint
    [ "$PROFILE" = services ] && launch prometheus "$PY" -m gymops serving prometheus
    launch dagster .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p "$DAGSTER_PORT"
    echo "Dagster UI: http://127.0.0.1:$DAGSTER_PORT   ingestion: POST http://127.0.0.1:${GYMOPS_INGEST_PORT:-8088}/v1/events"
    echo "token: GYMOPS_INGEST_TOKEN or $HOME_DIR/ingest.token   stop with: make down"
    ;;
  stop)
    halt dagster INT
    halt ingest
    halt consumer
    halt watcher
    halt prometheus
    [ "$PROFILE" = services ] && $PY -m gymops s3 stop || true
    ;;
  status)
    for name in dagster ingest consumer watcher prometheus; do
      if running "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"))"; else echo "$name: stopped"; fi
    done
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
