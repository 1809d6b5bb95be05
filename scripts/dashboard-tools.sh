#!/usr/bin/env bash
# What the dashboard and monitoring tests drive (tests/e2e/test_dashboard_browser.py: a real
# headless browser; tests/e2e/test_monitoring.py: a real Prometheus and promtool): Debian's
# chromium and prometheus.
# - both on PATH: nothing to do;
# - under CI (CI=true) as root with apt-get: install the missing ones; failing that, fail:
#   under CI those tests must run, never skip;
# - elsewhere: say so; the tests skip with the reason.
set -u
missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || missing+=(chromium)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } \
  || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "${CI:-}" = "true" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "dashboard-tools: installing Debian's ${missing[*]}"
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}") >/tmp/meshpilot-dashboard-tools.log 2>&1 \
        && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } \
        && command -v prometheus >/dev/null && command -v promtool >/dev/null; then
      exit 0
    fi
    echo "dashboard-tools: ${missing[*]} could not be installed" \
         "(see /tmp/meshpilot-dashboard-tools.log)"
    exit 1
  fi
  echo "dashboard-tools: CI=true but not root with apt-get: cannot install ${missing[*]}"
  exit 1
fi
echo "dashboard-tools: no ${missing[*]} on PATH (apt-get install ${missing[*]});" \
     "the browser and Prometheus tests will be skipped"
exit 0
