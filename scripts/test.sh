#!/usr/bin/env bash
# Runs every test of the workspace, the PostgreSQL comparison tests included.
#
# The comparison tests need a real server: this script starts one on
# 127.0.0.1 with scripts/postgres.sh (installing Debian's postgresql package
# when missing) unless TALLY_PG_URL is already set. Where that cannot be done
# (no apt, no root), the rest still runs and each of those tests prints
# "SKIPPED <test>: <reason>" on stderr and passes, unless TALLY_REQUIRE_PG is
# set (CI sets it): then this script stops, and the tests themselves fail
# without a reachable server too.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${TALLY_PG_URL:-}" ] && [ -f scripts/postgres.sh ]; then
  if pg_env=$(bash scripts/postgres.sh); then
    eval "$pg_env"
  elif [ -n "${TALLY_REQUIRE_PG:-}" ]; then
    echo "scripts/test.sh: could not start PostgreSQL, and TALLY_REQUIRE_PG is set" >&2
    exit 1
  else
    echo "scripts/test.sh: could not start PostgreSQL; its comparison tests will be skipped" >&2
  fi
fi
echo "scripts/test.sh: TALLY_PG_URL=${TALLY_PG_URL:-<unset>}" >&2

cargo test --workspace --locked "$@"
