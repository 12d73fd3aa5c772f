#!/usr/bin/env bash
# System packages the project needs beyond Python wheels, installed only when missing:
#   libpython3.11  the Triton python-backend stub links against the shared libpython
#   prometheus     provides `promtool`, which the Helm chart tests use to check alerting rules, and the `prometheus`
#                  server the monitoring end-to-end test runs (tests/integration/helm/test_monitoring_e2e.py)
set -euo pipefail

missing=()
ldconfig -p 2>/dev/null | grep -q 'libpython3\.11\.so\.1\.0' || missing+=(libpython3.11)
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: please install these system packages: ${missing[*]}" >&2
    exit 1
fi
echo "setup: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the prometheus package from starting its system service; the tests start their own server.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
