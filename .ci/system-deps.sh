#!/usr/bin/env bash
# System packages some tests use (ad-run's MQTT output and live view): mosquitto (a local MQTT
# broker), chromium + chromium-driver (headless browser test). Idempotent and quiet; it never fails
# the CI: without apt, root or network it says why and exits 0, and those tests skip with a reason.
set -u
PACKAGES="mosquitto chromium chromium-driver"
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -z "$missing" ]; then
    echo "system-deps: already installed ($PACKAGES)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: apt-get not available; skipping$missing (the MQTT and browser tests will skip)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "system-deps: not root and no password-less sudo; skipping$missing (the MQTT and browser tests will skip)"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -qq >/dev/null 2>&1; then
    echo "system-deps: apt-get update failed (no network?); skipping$missing"
    exit 0
fi
if ! $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1; then
    echo "system-deps: apt-get install$missing failed; the MQTT and browser tests will skip"
    exit 0
fi
echo "system-deps: installed$missing"
exit 0
