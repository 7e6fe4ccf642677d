#!/usr/bin/env bash
# promtool (Debian's prometheus package) for checking and unit-testing the alert rules.
#   deploy/local/promtool.sh   -> installs it when missing, prints its path
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then echo "promtool is not installed: run 'apt-get install prometheus' as root" >&2; exit 1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # the package starts a server we do not want running on the machine
  (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus) >/dev/null 2>&1 || true
fi
command -v promtool
