#!/usr/bin/env bash
# The Debian packages the tests drive for real, installed once, idempotently:
# kcat (a plain Kafka client, docs/integrating.md) and Chromium with ChromeDriver (the
# dashboard's browser test). Needs root or sudo and Debian's package mirrors.
set -euo pipefail
want=()
command -v kcat >/dev/null 2>&1 || want+=(kcat)
[ -x /usr/bin/chromium ] || want+=(chromium)
[ -x /usr/bin/chromedriver ] || want+=(chromium-driver)
if [ "${#want[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "[tools] installing ${want[*]}" >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi
