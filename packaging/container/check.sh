#!/usr/bin/env bash
# Check the image packaging/container/build.sh made: its configuration (non-root user, the
# entrypoint), its file system (no shell, nothing but the binary, its libraries, CA
# certificates and config), and the binary running from the extracted root file system.
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=target/oci/oauth-token-exporter.tar
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xf "$archive" -C "$work"
manifest=$(python3 -c 'import json,sys; i=json.load(open(sys.argv[1]+"/index.json")); print(i["manifests"][0]["digest"].split(":")[1])' "$work")
python3 - "$work" "$manifest" <<'PY'
import json, sys
work, digest = sys.argv[1], sys.argv[2]
m = json.load(open(f"{work}/blobs/sha256/{digest}"))
c = json.load(open(f"{work}/blobs/sha256/{m['config']['digest'].split(':')[1]}"))
cfg = c["config"]
assert cfg["User"] == "65532:65532", cfg["User"]
assert cfg["Entrypoint"] == ["/usr/bin/oauth-token-exporter"], cfg["Entrypoint"]
assert "9877/tcp" in cfg.get("ExposedPorts", {}), cfg
with open(f"{work}/layers", "w") as f:
    f.write("".join(l["digest"].split(":")[1] + "\n" for l in m["layers"]))
print("image config: user 65532, entrypoint the exporter, port 9877")
PY
mkdir -p "$work/rootfs"
while read -r layer; do tar -xf "$work/blobs/sha256/$layer" -C "$work/rootfs"; done <"$work/layers"
for sh in bin/sh bin/bash usr/bin/sh usr/bin/bash bin/busybox; do
  if [ -e "$work/rootfs/$sh" ]; then echo "the image has a shell: $sh" >&2; exit 1; fi
done
test -x "$work/rootfs/usr/bin/oauth-token-exporter"
extra=$(cd "$work/rootfs" && find . -type f | grep -v -E '^\./(usr/bin/oauth-token-exporter|lib|lib64|usr/lib|etc/(passwd|group|ssl/certs/ca-certificates.crt|oauth-token-exporter/config.yml))' || true)
if [ -n "$extra" ]; then echo "unexpected files in the image: $extra" >&2; exit 1; fi
# The binary runs from the image's own root file system (its libraries, not the host's).
chroot --userspec=65532:65532 "$work/rootfs" /usr/bin/oauth-token-exporter --version
chroot --userspec=65532:65532 "$work/rootfs" /usr/bin/oauth-token-exporter \
  --config.file=/etc/oauth-token-exporter/config.yml --config.check
echo "container image: OK ($(du -h "$archive" | cut -f1) archive)"
