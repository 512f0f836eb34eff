#!/usr/bin/env bash
# tools/two-hosts end to end: a TCP and a UDP session between two network namespaces, with real
# addresses, and no namespace left behind. Exits 77 (CTest: skipped) when not root.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: tools/two-hosts needs root to create network namespaces"
  exit 77
fi
before=$(ip netns list | grep -c '^upcase-' || true)

out=$(printf 'eecs563\n' | timeout 60 "$root/tools/two-hosts" --backend=threads \
  upcase-client tcp 198.18.0.1 5050)
grep -q 'Local address: 198.18.0.2:' <<<"$out" || { echo "FAIL tcp local: $out"; exit 1; }
grep -q 'Foreign address: 198.18.0.1:5050' <<<"$out" || { echo "FAIL tcp foreign: $out"; exit 1; }
grep -q 'Return text from the server: EECS563' <<<"$out" || { echo "FAIL tcp reply: $out"; exit 1; }

out=$(timeout 60 "$root/tools/two-hosts" --port=6000 bash -c \
  'upcase-client --bind-port=5432 udp "$SERVER" "$PORT" <<< "datagram"')
grep -q 'Local address: 198.18.0.2:5432' <<<"$out" || { echo "FAIL udp bind-port: $out"; exit 1; }
grep -q 'Return text from the server: DATAGRAM' <<<"$out" || { echo "FAIL udp reply: $out"; exit 1; }

# A failing client command's status comes back, and cleanup still happens.
if timeout 60 "$root/tools/two-hosts" false 2>/dev/null; then echo "FAIL: status lost"; exit 1; fi

after=$(ip netns list | grep -c '^upcase-' || true)
[ "$before" = "$after" ] || { echo "FAIL: namespaces left behind: $(ip netns list)"; exit 1; }
echo "PASS"
