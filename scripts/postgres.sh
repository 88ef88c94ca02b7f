#!/usr/bin/env bash
# scripts/postgres.sh: install (if missing) and start a local PostgreSQL for
# `tally-loadtest compare --against postgres` and its tests. Debian/Ubuntu,
# run as root. Idempotent: running it again on a ready server changes nothing.
#
# What it does:
#   1. apt-get installs the `postgresql` package when `pg_ctlcluster` is missing;
#   2. creates a cluster (Debian's `main`) if there is none, listening on
#      127.0.0.1 only, and starts it;
#   3. waits (at most ~60 s) until it accepts connections;
#   4. creates the role and the database for tally, with a password.
#
# Output: progress goes to stderr; stdout carries exactly one line,
#     export TALLY_PG_URL=postgres://tally:tally@127.0.0.1:5432/tally
# so that a shell or CI step can take it with
#     eval "$(bash scripts/postgres.sh)"
# Exit status is non-zero (with a one-line reason on stderr) when the server
# cannot be installed, started or reached.
#
# Settings (environment): TALLY_PG_PORT (default 5432), TALLY_PG_USER (tally),
# TALLY_PG_PASSWORD (tally), TALLY_PG_DB (tally). This is a throwaway local
# server for load tests: the password is not a secret.

set -euo pipefail

port="${TALLY_PG_PORT:-5432}"
user="${TALLY_PG_USER:-tally}"
password="${TALLY_PG_PASSWORD:-tally}"
db="${TALLY_PG_DB:-tally}"

say() { echo "postgres.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

for name in "$user" "$db"; do
    [[ "$name" =~ ^[a-z_][a-z0-9_]*$ ]] || die "'$name' is not a plain lower-case identifier"
done
[[ "$password" =~ ^[A-Za-z0-9_.-]+$ ]] || die "the password may only hold A-Z a-z 0-9 _ . -"
[[ "$port" =~ ^[0-9]+$ ]] || die "TALLY_PG_PORT must be a number"
[[ "$(id -u)" == 0 ]] || die "run as root (it installs packages and starts the cluster as user postgres)"

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "installing the postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq postgresql >&2 || die "apt-get install postgresql failed"
fi

version="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)"
[[ -n "$version" ]] || die "no PostgreSQL server under /usr/lib/postgresql"
cluster=main

if ! pg_lsclusters -h 2>/dev/null | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c { found = 1 } END { exit !found }'; then
    say "creating cluster $version/$cluster on port $port"
    pg_createcluster --port "$port" "$version" "$cluster" >&2 || die "pg_createcluster failed"
fi

# Loopback only, on the wanted port: a drop-in that Debian's postgresql.conf
# includes last (include_dir = 'conf.d'), so it wins. A change needs a restart.
conf_dir="/etc/postgresql/$version/$cluster/conf.d"
conf_file="$conf_dir/tally-loopback.conf"
wanted="$(printf "listen_addresses = '127.0.0.1'\nport = %s\n" "$port")"
conf_changed=0
if [[ "$(cat "$conf_file" 2>/dev/null || true)" != "$wanted" ]]; then
    mkdir -p "$conf_dir"
    printf '%s\n' "$wanted" >"$conf_file"
    chown postgres:postgres "$conf_file" 2>/dev/null || true
    conf_changed=1
fi

status="$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c { print $4 }')"
if [[ "$status" == online* ]]; then
    if [[ "$conf_changed" == 1 ]]; then
        say "restarting cluster $version/$cluster (configuration changed)"
        pg_ctlcluster "$version" "$cluster" restart >&2 || die "pg_ctlcluster restart failed"
    fi
else
    say "starting cluster $version/$cluster"
    pg_ctlcluster "$version" "$cluster" start >&2 ||
        die "pg_ctlcluster start failed (see /var/log/postgresql/postgresql-$version-$cluster.log)"
fi

for _ in $(seq 1 60); do
    if pg_isready -q -h 127.0.0.1 -p "$port"; then
        break
    fi
    sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$port" || die "the server does not accept connections on 127.0.0.1:$port"

psql_admin() {
    runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres "$@"
}

if [[ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" != 1 ]]; then
    say "creating role $user"
    psql_admin -c "CREATE ROLE $user LOGIN CREATEDB PASSWORD '$password'" >&2
else
    psql_admin -c "ALTER ROLE $user LOGIN CREATEDB PASSWORD '$password'" >&2
fi
if [[ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]]; then
    say "creating database $db"
    psql_admin -c "CREATE DATABASE $db OWNER $user" >&2
fi

url="postgres://$user:$password@127.0.0.1:$port/$db"
PGPASSWORD="$password" psql -X -q -h 127.0.0.1 -p "$port" -U "$user" -d "$db" -tAc 'SELECT 1' >/dev/null ||
    die "cannot log in as $user over 127.0.0.1:$port"
say "ready: $url"
echo "export TALLY_PG_URL=$url"
