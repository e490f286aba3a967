#!/usr/bin/env bash
# `make test`: lint, type-check, start the real services, run every test, stop the services again.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

$BIN/ruff check ticketblitz tests bench
$BIN/mypy

bash scripts/services.sh up
trap 'bash scripts/services.sh down' EXIT
eval "$(bash scripts/services.sh env)"
export TICKETBLITZ_DATABASE_URL TICKETBLITZ_REDIS_URL TICKETBLITZ_KAFKA_BOOTSTRAP

$BIN/python -m pytest -q -p no:cacheprovider "$@"
