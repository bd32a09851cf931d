#!/usr/bin/env bash
# `make run`: the bundled VSS server (SQLite under ./.data/) and a node pointed at it,
# both on loopback. Ctrl-C stops both. Ports: VSS_PORT (8081) and NODE_PORT (3001).
set -euo pipefail
cd "$(dirname "$0")/.."
VSSNODE=.venv/bin/vssnode
VSS_PORT=${VSS_PORT:-8081}
NODE_PORT=${NODE_PORT:-3001}
DATA=${DATA:-.data}
mkdir -p "$DATA"

"$VSSNODE" vss-server --listen "127.0.0.1:$VSS_PORT" --db "sqlite:///$DATA/vss.sqlite3" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT INT TERM

cat <<TXT

  VSS server: http://127.0.0.1:$VSS_PORT/vss   (data: $DATA/vss.sqlite3)
  node API:   http://127.0.0.1:$NODE_PORT       (data dir: $DATA/node)

  Next, in another terminal (the README walks through a full recovery):
    curl -s -X POST localhost:$NODE_PORT/init   -d '{"password": "pw"}'     # prints your mnemonic once
    curl -s -X POST localhost:$NODE_PORT/unlock -d '{"password": "pw"}'
    curl -s -X PUT  'localhost:$NODE_PORT/kv/k1?primary=demo' --data-binary 'hello'
    curl -s         'localhost:$NODE_PORT/kv/k1?primary=demo'
    curl -s         localhost:$NODE_PORT/vssbackupinfo

TXT
"$VSSNODE" run "$DATA/node" --listen "127.0.0.1:$NODE_PORT" --vss-url "http://127.0.0.1:$VSS_PORT/vss"
