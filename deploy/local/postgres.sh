#!/usr/bin/env bash
# A private PostgreSQL for the tests and local runs: Debian's package, one cluster per port.
#   deploy/local/postgres.sh start|stop|url
# Env: NICHELOOP_PG_PORT (25432), NICHELOOP_PG_DATA (/tmp/nicheloop-pg-$PORT).
set -euo pipefail
cmd=${1:-start}
PORT=${NICHELOOP_PG_PORT:-25432}
DATA=${NICHELOOP_PG_DATA:-/tmp/nicheloop-pg-$PORT}
URL_BASE="postgresql+psycopg://postgres@127.0.0.1:$PORT"

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

if [ "$cmd" = url ]; then echo "$URL_BASE"; exit 0; fi

BIN=$(pg_bin)
if [ -z "$BIN" ]; then
  if [ "$(id -u)" != 0 ]; then echo "PostgreSQL is not installed: run 'apt-get install postgresql' as root" >&2; exit 1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  BIN=$(pg_bin)
fi
# initdb and the server refuse to run as root: use the package's `postgres` user then.
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); else AS=(); fi

case "$cmd" in
  start)
    if [ ! -f "$DATA/PG_VERSION" ]; then
      mkdir -p "$DATA"
      [ "$(id -u)" = 0 ] && chown postgres "$DATA"
      "${AS[@]}" "$BIN/initdb" -D "$DATA" -U postgres --auth=trust >/dev/null
    fi
    if ! "${AS[@]}" "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
      "${AS[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
        -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    fi
    echo "postgresql running on 127.0.0.1:$PORT (data $DATA)"
    ;;
  stop)
    if [ -f "$DATA/PG_VERSION" ]; then "${AS[@]}" "$BIN/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true; fi
    ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
