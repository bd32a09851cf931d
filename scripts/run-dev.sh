#!/usr/bin/env bash
# `make run`: the bundled VSS server (SQLite under ./.data/) and a node pointed at it,
# both on loopback. Ctrl-C stops both (exit status 0). If either fails to start, the
# other is stopped and the script says which one and why (its last lines), exit 1.
# Ports: VSS_PORT (8081) and NODE_PORT (3001); data: DATA (.data).
set -uo pipefail
cd "$(dirname "$0")/.."
VSSNODE=.venv/bin/vssnode
VSS_PORT=${VSS_PORT:-8081}
NODE_PORT=${NODE_PORT:-3001}
DATA=${DATA:-.data}
mkdir -p "$DATA"
SERVER_LOG="$DATA/vss-server.log"
server="" node=""

stop() {
  for pid in $node $server; do kill "$pid" 2>/dev/null; done
  for pid in $node $server; do wait "$pid" 2>/dev/null; done
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

# wait_for_line PID FILE TEXT: until FILE holds TEXT (0) or PID has exited (1).
wait_for_line() {
  for _ in $(seq 1 300); do
    grep -q "$3" "$2" 2>/dev/null && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

"$VSSNODE" vss-server --listen "127.0.0.1:$VSS_PORT" --db "sqlite:///$DATA/vss.sqlite3" >"$SERVER_LOG" 2>&1 &
server=$!
if ! wait_for_line "$server" "$SERVER_LOG" "listening on"; then
  echo "make run: the VSS server did not start (port $VSS_PORT taken? set VSS_PORT):" >&2
  tail -n 3 "$SERVER_LOG" >&2
  exit 1
fi

cat <<TXT

  VSS server: http://127.0.0.1:$VSS_PORT/vss   (data: $DATA/vss.sqlite3, log: $SERVER_LOG)
  node API:   http://127.0.0.1:$NODE_PORT       (data dir: $DATA/node)

  Next, in another terminal (the README walks through a full recovery):
    curl -s -X POST localhost:$NODE_PORT/init   -H 'Content-Type: application/json' -d '{"password": "pw"}'
    curl -s -X POST localhost:$NODE_PORT/unlock -H 'Content-Type: application/json' -d '{"password": "pw"}'
    curl -s -X PUT  'localhost:$NODE_PORT/kv/k1?primary=demo' --data-binary 'hello'
    curl -s         'localhost:$NODE_PORT/kv/k1?primary=demo'
    curl -s         localhost:$NODE_PORT/vssbackupinfo
    .venv/bin/vssnode status --node http://127.0.0.1:$NODE_PORT

TXT
"$VSSNODE" run "$DATA/node" --listen "127.0.0.1:$NODE_PORT" --vss-url "http://127.0.0.1:$VSS_PORT/vss" &
node=$!
wait "$node"
status=$?
node=""
if [ "$status" -ne 0 ]; then
  echo "make run: the node stopped with status $status (port $NODE_PORT taken? set NODE_PORT)" >&2
  exit 1
fi
