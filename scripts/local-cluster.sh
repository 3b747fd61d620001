#!/usr/bin/env bash
# A local scale-out cluster on loopback: N stateless boxoffice nodes on one
# PostgreSQL database and one Redis, optionally behind nginx.
#
#   scripts/local-cluster.sh start [N]   # default 3 nodes on ports 8081..
#   scripts/local-cluster.sh status
#   scripts/local-cluster.sh stop
#
# Settings (environment):
#   BOXOFFICE_BIN        the binary (default: target/release/boxoffice, built if missing)
#   CLUSTER_DIR          pid files and logs (default: ./data/cluster)
#   CLUSTER_BASE_PORT    first node's port (default 8081)
#   CLUSTER_DB           database name (default boxoffice_cluster; created if missing)
#   CLUSTER_PG           PostgreSQL server URL without a database (default postgres://postgres@127.0.0.1:5432)
#   CLUSTER_REDIS        Redis URL (default redis://127.0.0.1:6379)
#   CLUSTER_NGINX_PORT   if set and nginx is installed, nginx balances the nodes on this port
#   BOXOFFICE_ADMIN_TOKEN  shared by every node (default: generated once and printed)
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=${1:-status}
n=${2:-3}
dir=${CLUSTER_DIR:-./data/cluster}
base=${CLUSTER_BASE_PORT:-8081}
db=${CLUSTER_DB:-boxoffice_cluster}
pg=${CLUSTER_PG:-postgres://postgres@127.0.0.1:5432}
redis=${CLUSTER_REDIS:-redis://127.0.0.1:6379}
bin=${BOXOFFICE_BIN:-target/release/boxoffice}

wait_ready() {
  local url=$1
  for _ in $(seq 1 100); do
    curl -fsS "$url/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node at $url did not become ready; see $dir" >&2
  return 1
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    if [ ! -x "$bin" ]; then
      echo "building $bin ..."
      cargo build --release --locked
    fi
    psql "$pg/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
      || psql "$pg/postgres" -qc "CREATE DATABASE $db"
    token=${BOXOFFICE_ADMIN_TOKEN:-$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | head -c 43)}
    # Migrate once, then start the nodes (migrations are also safe in parallel).
    BOXOFFICE_DATABASE_URL="$pg/$db" "$bin" migrate
    upstreams=""
    for i in $(seq 0 $((n - 1))); do
      port=$((base + i))
      BOXOFFICE_LISTEN="127.0.0.1:$port" BOXOFFICE_DATABASE_URL="$pg/$db" BOXOFFICE_REDIS_URL="$redis" \
        BOXOFFICE_ADMIN_TOKEN="$token" nohup "$bin" serve >"$dir/node$i.log" 2>&1 &
      echo $! >"$dir/node$i.pid"
      upstreams="$upstreams    server 127.0.0.1:$port;\n"
    done
    for i in $(seq 0 $((n - 1))); do wait_ready "http://127.0.0.1:$((base + i))"; done
    if [ -n "${CLUSTER_NGINX_PORT:-}" ] && command -v nginx >/dev/null; then
      sed -e "s|__UPSTREAMS__|$upstreams|" -e "s|__PORT__|$CLUSTER_NGINX_PORT|" -e "s|__DIR__|$(realpath "$dir")|g" \
        docs/nginx.conf >"$dir/nginx.conf"
      nginx -c "$(realpath "$dir/nginx.conf")"
      echo "nginx balances the nodes on http://127.0.0.1:$CLUSTER_NGINX_PORT"
    fi
    echo "$n nodes up on ports $base..$((base + n - 1)); admin token: $token"
    ;;
  status)
    for f in "$dir"/node*.pid; do
      [ -e "$f" ] || { echo "no cluster running"; exit 0; }
      pid=$(cat "$f")
      if kill -0 "$pid" 2>/dev/null; then echo "$(basename "$f" .pid): running (pid $pid)"; else echo "$(basename "$f" .pid): stopped"; fi
    done
    ;;
  stop)
    for f in "$dir"/node*.pid; do
      [ -e "$f" ] || continue
      kill "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    done
    if [ -e "$dir/nginx.pid" ]; then nginx -c "$(realpath "$dir/nginx.conf")" -s stop || true; fi
    echo "stopped"
    ;;
  *)
    echo "usage: $0 start [N] | status | stop" >&2
    exit 2
    ;;
esac
