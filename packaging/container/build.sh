#!/usr/bin/env bash
# Build the container image offline with buildah (Debian package `buildah`), from the dist
# binary: target/oci/oauth-token-exporter.tar (an OCI archive), tagged
# oauth-token-exporter:<version>. Usage: packaging/container/build.sh [binary]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/dist/oauth-token-exporter}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/bin" "$root/etc/oauth-token-exporter" "$root/etc/ssl/certs" \
  "$root/var/lib/oauth-token-exporter" "$root/tmp"
install -m 0755 "$bin" "$root/usr/bin/oauth-token-exporter"
# The shared libraries it links (glibc, libgcc), at their paths, and the loader.
ldd "$bin" | awk '/=> \//{print $3} /^\s*\/[^ ]+ \(/{print $1}' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0::/nonexistent:/nonexistent\nnonroot:x:65532:65532::/nonexistent:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
install -m 0644 packaging/container/config.yml "$root/etc/oauth-token-exporter/config.yml"
chown 65532:65532 "$root/var/lib/oauth-token-exporter"
chmod 1777 "$root/tmp"
cp packaging/container/Containerfile "$ctx/"
mkdir -p target/oci
buildah --storage-driver=vfs bud --quiet --layers=false -f "$ctx/Containerfile" \
  -t "oauth-token-exporter:$version" "$ctx"
rm -f target/oci/oauth-token-exporter.tar
buildah --storage-driver=vfs push --quiet "oauth-token-exporter:$version" \
  "oci-archive:target/oci/oauth-token-exporter.tar:oauth-token-exporter:$version"
echo "target/oci/oauth-token-exporter.tar (oauth-token-exporter:$version)"
