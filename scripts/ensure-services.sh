#!/usr/bin/env bash
# Start the local PostgreSQL and Redis the tests talk to, when they are not answering already.
set -euo pipefail
host=127.0.0.1

postgres() {
    if ! command -v pg_isready >/dev/null; then
        echo "pg_isready not found: install PostgreSQL or set BATCHSERVE_TEST_DATABASE_URL" >&2
        return 0
    fi
    if ! pg_isready -q -h "$host" -p 5432; then
        echo "PostgreSQL is down; starting it"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
        for _ in $(seq 1 30); do pg_isready -q -h "$host" -p 5432 && break; sleep 1; done
    fi
    pg_isready -h "$host" -p 5432
}

# Shared rate limits (--redis-url) are tested against a real Redis. A throwaway one: nothing is
# saved to disk, it listens on the loopback only.
redis() {
    if ! command -v redis-server >/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "redis-server not found (run as root: apt-get install -y redis-server, or set BATCHSERVE_TEST_REDIS_URL)" >&2
            return 0
        fi
        echo "installing Debian package: redis-server"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    fi
    if ! redis-cli -h "$host" -p 6379 ping >/dev/null 2>&1; then
        echo "Redis is down; starting it"
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
        for _ in $(seq 1 30); do redis-cli -h "$host" -p 6379 ping >/dev/null 2>&1 && break; sleep 0.2; done
    fi
    echo "Redis $host:6379 - $(redis-cli -h "$host" -p 6379 ping)"
}

postgres
redis
