#!/usr/bin/env bash
# Make N node identities for the chart, printed as Helm values (keep the file secret: it
# holds private keys). Needs echomesh-node on PATH (or NODE_BIN).
#   helm/make-identities.sh 3 > identities.yaml
#   helm install mesh helm/echomesh -f identities.yaml
set -euo pipefail
n="${1:?usage: make-identities.sh NUMBER_OF_PODS}"
node="${NODE_BIN:-echomesh-node}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "identities:"
for i in $(seq 0 $((n - 1))); do
  fp=$("$node" --init --data-dir "$work/$i" | sed -n 's/^fingerprint *//p')
  echo "  - fingerprint: \"$fp\""
  echo "    cert: |"
  sed 's/^/      /' "$work/$i/node.crt"
  echo "    key: |"
  sed 's/^/      /' "$work/$i/node.key"
done
