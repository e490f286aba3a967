#!/usr/bin/env bash
# `make test`: lint, type-check, start the real services, run every test, stop the services again.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

$BIN/ruff check ticketblitz tests bench
$BIN/mypy

# The browser test (tests/e2e/test_visualizer.py) drives the system Chromium through Playwright: install
# Debian's package when it is missing (no Playwright browser download). Without it that test fails.
if ! command -v chromium >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || { echo "chromium is missing: apt-get install chromium (as root)" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

bash scripts/services.sh up
trap 'bash scripts/services.sh down' EXIT
eval "$(bash scripts/services.sh env)"
export TICKETBLITZ_DATABASE_URL TICKETBLITZ_REDIS_URL TICKETBLITZ_KAFKA_BOOTSTRAP

$BIN/python -m pytest -q -p no:cacheprovider "$@"
