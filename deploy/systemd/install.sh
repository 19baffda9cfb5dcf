#!/usr/bin/env bash
# Install echomesh as a systemd service on Debian/Ubuntu, from a built clone:
#   ./scripts/run-node (once, it builds) && sudo deploy/systemd/install.sh
# Binaries come from the build every script uses (~/.cache/echomesh/target/release of the user
# who ran sudo), or from ECHOMESH_BIN_DIR. On Debian, scripts/build-deb makes a package instead.
# Idempotent: binaries and the unit are replaced, an existing configuration is kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
home=$(getent passwd "${SUDO_USER:-$(id -un)}" | cut -d: -f6)
bin="${ECHOMESH_BIN_DIR:-${CARGO_TARGET_DIR:-$home/.cache/echomesh/target}/release}"
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
for b in echomesh-node echomeshctl; do
  [ -x "$bin/$b" ] || { echo "install.sh: $bin/$b missing: run ./scripts/run-node once (it builds), or set ECHOMESH_BIN_DIR" >&2; exit 1; }
  install -m 0755 "$bin/$b" /usr/local/bin/
done
install -d -m 0755 /etc/echomesh /usr/local/share/doc/echomesh
install -m 0644 "$root"/docs/*.md /usr/local/share/doc/echomesh/
if [ ! -e /etc/echomesh/echomesh.toml ]; then
  # Every setting with its default; edit advertise, neighbors, cluster.
  /usr/local/bin/echomesh-node --data-dir /var/lib/echomesh --print-config > /etc/echomesh/echomesh.toml
  chmod 0644 /etc/echomesh/echomesh.toml
  echo "install.sh: wrote /etc/echomesh/echomesh.toml; set advertise = \"HOST:4710\" before joining other hosts"
fi
# Keep systemd's stop timeout above the drain deadline.
deadline=$(sed -n 's/^drain_deadline_secs *= *\([0-9]*\).*/\1/p' /etc/echomesh/echomesh.toml | head -1)
unit=/etc/systemd/system/echomesh.service
sed "s/^TimeoutStopSec=.*/TimeoutStopSec=$(( ${deadline:-60} + 15 ))/" "$root/deploy/systemd/echomesh.service" > "$unit"
systemctl daemon-reload
systemctl enable --now echomesh
echo "install.sh: echomesh running; try: sudo echomeshctl --token-file /var/lib/echomesh/admin.token status"
