#!/usr/bin/env bash
# Best effort: install and start Debian's PostgreSQL, create a role and a database for the
# distributed-Optuna test, and print its URL. Any failure exits non-zero; the test then skips.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true  # "already running" is fine
for _ in $(seq 1 20); do pg_isready -q && break; sleep 0.5; done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='segtricks'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"CREATE ROLE segtricks LOGIN PASSWORD 'segtricks'\"" >/dev/null
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='segtricks_test'\"" | grep -q 1 ||
  su postgres -c "createdb -O segtricks segtricks_test"
echo "postgresql://segtricks:segtricks@127.0.0.1:5432/segtricks_test"
