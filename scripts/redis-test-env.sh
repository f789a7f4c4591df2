#!/usr/bin/env bash
# Makes sure redis-server and redis-cli (Redis >= 7.0, for sharded pub/sub)
# are installed, for herald-broker's Redis tests:
#
#   scripts/redis-test-env.sh && cargo test -p herald-broker
#
# The tests start their own servers and clusters on free loopback ports.
set -euo pipefail

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "redis-server/redis-cli missing; run as root or: sudo apt-get install -y redis-server redis-tools" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server redis-tools >/dev/null
fi

version=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
if [ "${version:-0}" -lt 7 ]; then
    echo "redis-server $(redis-server --version) is older than 7.0 (no sharded pub/sub)" >&2
    exit 1
fi
redis-server --version
