#!/bin/sh
# The PostgreSQL test image's entrypoint (tests/containers/postgres.Dockerfile): a new
# cluster whose superuser is POSTGRES_USER with POSTGRES_PASSWORD (scram-sha-256, never
# trust), the database POSTGRES_DB, then the server in the foreground on PGLISTEN:PGPORT.
set -eu
: "${POSTGRES_PASSWORD:?the image refuses to start without POSTGRES_PASSWORD}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
bin=/usr/lib/postgresql/15/bin
data=/tmp/pgdata
pwfile=$(mktemp)
printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
"$bin/initdb" -D "$data" -U "$user" -E UTF8 --auth=scram-sha-256 --pwfile="$pwfile" >/dev/null
rm -f "$pwfile"
if [ "$db" != postgres ]; then
  echo "CREATE DATABASE \"$db\" OWNER \"$user\";" | "$bin/postgres" --single -D "$data" postgres >/dev/null
fi
exec "$bin/postgres" -D "$data" -c "listen_addresses=${PGLISTEN:-127.0.0.1}" -c "port=${PGPORT:-5432}" \
  -c unix_socket_directories=/tmp
