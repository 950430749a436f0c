#!/usr/bin/env bash
# Build the Debian package from the dist binary with cargo-deb, lint it (lintian: no error),
# verify its systemd unit (systemd-analyze verify), install it with dpkg, start it as its unit
# does (its user, its flags, its config), scrape /metrics, stop it, purge it and check that
# nothing is left behind. Needs root, cargo-deb, lintian and systemd (for systemd-analyze).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf target/debian
cargo deb --profile dist --no-build --no-strip --output target/debian/
deb=$(ls target/debian/oauth-token-exporter_*.deb)
echo "package: $deb ($(du -h "$deb" | cut -f1))"
# Lintian: no error. Warnings it gives for a binary-only package (no man page, no upstream
# changelog) are shown, not fatal.
lintian --fail-on error --no-tag-display-limit "$deb" || { echo "lintian found errors" >&2; exit 1; }
dpkg --purge oauth-token-exporter >/dev/null 2>&1 || true
dpkg -i "$deb"
unit=$(ls /lib/systemd/system/oauth-token-exporter.service /usr/lib/systemd/system/oauth-token-exporter.service 2>/dev/null | head -1)
test -n "$unit"
systemd-analyze verify "$unit"
getent passwd oauth-token-exporter >/dev/null
test "$(stat -c '%U:%G %a' /etc/oauth-token-exporter/config.yml)" = "root:oauth-token-exporter 640"
/usr/bin/oauth-token-exporter --config.file=/etc/oauth-token-exporter/config.yml --config.check
# Start it as the unit does: its user, its ExecStart flags, its environment file.
port=19877
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
# shellcheck disable=SC1091
. /etc/default/oauth-token-exporter
mkdir -p /var/lib/oauth-token-exporter
chown oauth-token-exporter:oauth-token-exporter /var/lib/oauth-token-exporter
runuser -u oauth-token-exporter -- ${exec_start//\$ARGS/} --web.listen-address=127.0.0.1:$port &
pid=$!
ok=
for _ in $(seq 1 50); do
  if curl -fsS "http://127.0.0.1:$port/metrics" | grep -q '^oauth_exporter_build_info{'; then ok=1; break; fi
  sleep 0.2
done
kill -TERM "$pid"
wait "$pid" || true
test -n "$ok" || { echo "the installed exporter did not serve /metrics" >&2; exit 1; }
echo "installed exporter served /metrics as user oauth-token-exporter"
dpkg --purge oauth-token-exporter
for left in /usr/bin/oauth-token-exporter /etc/oauth-token-exporter /var/lib/oauth-token-exporter "$unit"; do
  if [ -e "$left" ]; then echo "left after purge: $left" >&2; exit 1; fi
done
if getent passwd oauth-token-exporter >/dev/null; then echo "user left after purge" >&2; exit 1; fi
echo "debian package: OK"
