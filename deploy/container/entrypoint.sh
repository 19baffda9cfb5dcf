#!/bin/sh
# Container entrypoint: run echomesh-node with the container's arguments.
#
# Bootstrap for a demo or a fixed set of containers (compose): with BOOTSTRAP_DIR (a volume
# shared by the nodes), BOOTSTRAP_NAME (this node) and BOOTSTRAP_PEERS (all names), each node
# creates its identity, publishes "HOST:PORT#FINGERPRINT" as BOOTSTRAP_DIR/NAME.spec, waits
# (bounded) for the others' and pins them as static neighbors. Trust model: whoever can write
# the shared volume decides who is pinned; use it only inside one host or project.
set -eu
data="${ECHOMESH_DATA_DIR:-/data}"
if [ -n "${BOOTSTRAP_DIR:-}" ]; then
  name="${BOOTSTRAP_NAME:?BOOTSTRAP_NAME must name this node}"
  fp=$(echomesh-node --init --data-dir "$data" | sed -n 's/^fingerprint *//p')
  [ -n "$fp" ] || { echo "entrypoint: could not create or read the node identity in $data" >&2; exit 1; }
  spec="${ECHOMESH_ADVERTISE:-$name:4710}#$fp"
  printf '%s\n' "$spec" > "$BOOTSTRAP_DIR/$name.tmp"
  mv "$BOOTSTRAP_DIR/$name.tmp" "$BOOTSTRAP_DIR/$name.spec"
  for peer in ${BOOTSTRAP_PEERS:-}; do
    [ "$peer" = "$name" ] && continue
    waited=0
    while [ ! -s "$BOOTSTRAP_DIR/$peer.spec" ]; do
      waited=$((waited + 1))
      if [ "$waited" -gt 240 ]; then
        echo "entrypoint: $peer did not publish its identity in $BOOTSTRAP_DIR within 60 s" >&2
        exit 1
      fi
      sleep 0.25
    done
    set -- "$@" --neighbor "$(cat "$BOOTSTRAP_DIR/$peer.spec")"
  done
fi
exec echomesh-node "$@"
