#!/usr/bin/env bash
# Start the local PostgreSQL the tests talk to, when it is not answering already.
set -euo pipefail
host=127.0.0.1
if ! command -v pg_isready >/dev/null; then
    echo "pg_isready not found: install PostgreSQL or set BATCHSERVE_TEST_DATABASE_URL" >&2
    exit 0
fi
if ! pg_isready -q -h "$host" -p 5432; then
    echo "PostgreSQL is down; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 30); do pg_isready -q -h "$host" -p 5432 && break; sleep 1; done
fi
pg_isready -h "$host" -p 5432
