#!/usr/bin/env bash
# tools/compare between two "hosts" through ssh, end to end. Two network namespaces joined by a
# veth pair (198.18.0.1 and 198.18.0.2, as tools/two-hosts makes them); Debian's sshd runs in the
# first with a private config, host key and client key made here, on a port of its own (the
# namespace is private, so no port of the machine is taken). tools/compare then runs from the
# second:
#
#   compare_ssh_test.sh server   upcase-server on the sshd host (--server-host): every run has
#                                the server's CPU figures and its placement; nothing is left
#                                running there, also after a Ctrl-C of tools/compare
#   compare_ssh_test.sh loads    upcase-server here, upcase-load here and on the sshd host at once
#                                (--load-hosts=local,HOST --copy-bins): merged JSON of 2 instances
#                                whose requests add up
#
# Everything (sshd by PID, namespaces, files) is removed on exit, failure included. Exits 77
# (CTest: skipped) with the reason when not root or when ip netns, ssh or sshd is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:-server}
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces"
command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || skip "'ip netns' unavailable"
[ -x /usr/sbin/sshd ] || skip "/usr/sbin/sshd missing (tools/install-deps installs openssh-server)"
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || skip "ssh client missing"
[ -x "$root/build/release/bin/upcase-server" ] || fail "build/release is not built"

tag=$$
srv_ns=upcase-sshs-$tag
cli_ns=upcase-sshc-$tag
srv_ip=198.18.0.1
cli_ip=198.18.0.2
port=2222
tmp=$(mktemp -d /tmp/upcase-ssh-test.XXXXXX)
sshd_pid=""
compare_pid=""

cleanup() {
  local status=$?
  [ -n "$compare_pid" ] && kill -KILL "$compare_pid" 2>/dev/null || true
  if [ -n "$sshd_pid" ] && kill -0 "$sshd_pid" 2>/dev/null; then
    kill -TERM "$sshd_pid" 2>/dev/null || true
    wait "$sshd_pid" 2>/dev/null || true
  fi
  ip netns del "$cli_ns" 2>/dev/null || true
  ip netns del "$srv_ns" 2>/dev/null || true
  [ $status -eq 0 ] || { echo "--- sshd log"; cat "$tmp/sshd.log" 2>/dev/null || true; }
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ip netns add "$srv_ns"
ip netns add "$cli_ns"
ip link add "ups$tag" netns "$srv_ns" type veth peer name "upc$tag" netns "$cli_ns"
ip -n "$srv_ns" addr add "$srv_ip/30" dev "ups$tag"
ip -n "$cli_ns" addr add "$cli_ip/30" dev "upc$tag"
for ns in "$srv_ns" "$cli_ns"; do ip -n "$ns" link set lo up; done
ip -n "$srv_ns" link set "ups$tag" up
ip -n "$cli_ns" link set "upc$tag" up

ssh-keygen -q -t ed25519 -N '' -C upcase-test-host -f "$tmp/host_key"
ssh-keygen -q -t ed25519 -N '' -C upcase-test-client -f "$tmp/client_key"
cp "$tmp/client_key.pub" "$tmp/authorized_keys"
echo "[$srv_ip]:$port $(cut -d' ' -f1,2 "$tmp/host_key.pub")" >"$tmp/known_hosts"
cat >"$tmp/sshd_config" <<EOF
Port $port
ListenAddress $srv_ip
HostKey $tmp/host_key
PidFile none
AuthorizedKeysFile $tmp/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel ERROR
SetEnv TMPDIR=$tmp/remote
Subsystem sftp internal-sftp
EOF
# sshd's privilege-separation directory (the ssh service creates it at boot; harmless to keep).
mkdir -p /run/sshd
ip netns exec "$srv_ns" /usr/sbin/sshd -D -e -f "$tmp/sshd_config" 2>"$tmp/sshd.log" &
sshd_pid=$!
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=5 -o IdentitiesOnly=yes
          -o "IdentityFile=$tmp/client_key" -o "UserKnownHostsFile=$tmp/known_hosts"
          -o StrictHostKeyChecking=yes -o "Port=$port")
# Wait (bounded) until sshd answers; polling for the condition, not a blind sleep.
for _ in $(seq 200); do
  ip netns exec "$cli_ns" ssh "${ssh_opts[@]}" "root@$srv_ip" true 2>/dev/null && break
  kill -0 "$sshd_pid" 2>/dev/null || fail "sshd exited: $(cat "$tmp/sshd.log")"
  read -rt 0.05 <> <(:) || true
done
ip netns exec "$cli_ns" ssh "${ssh_opts[@]}" "root@$srv_ip" true || fail "no ssh login to $srv_ip"

compare_flags=(--quick --no-build --out "$tmp/out")
for o in IdentitiesOnly=yes "IdentityFile=$tmp/client_key" "UserKnownHostsFile=$tmp/known_hosts" \
         StrictHostKeyChecking=yes "Port=$port"; do
  compare_flags+=("--ssh-option=$o")
done

# Processes in the sshd namespace other than sshd itself (its sessions included): must be none.
leftovers() {
  local pids
  pids=$(ip netns pids "$srv_ns" | grep -vx "$sshd_pid" || true)
  for p in $pids; do ps -o pid=,args= -p "$p" || true; done
}
# tools/compare's work folders on the ssh host: its sessions have TMPDIR=$tmp/remote.
mkdir "$tmp/remote"
workdirs() { ls -A "$tmp/remote"; }

check_runs() {  # $1: python expression over rec, run for every ok run
  /usr/bin/python3 - "$tmp/out" "$1" <<'EOF'
import json, pathlib, sys
out, check = pathlib.Path(sys.argv[1]), sys.argv[2]
runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
assert runs, "no runs"
bad = [r["point"]["key"] + ": " + r.get("error", "") for r in runs if not r["ok"]]
assert not bad, f"failed runs: {bad}"
for rec in runs:
    assert eval("(" + check + ")"), f"{rec['point']['backend']} {rec['point']['key']}: {check} is false"
print(f"{len(runs)} runs ok:", " ".join(p.name for p in sorted((out / "runs").glob("*.json"))))
EOF
}

case "$mode" in
server)
  ip netns exec "$cli_ns" timeout 240 "$root/tools/compare" "${compare_flags[@]}" \
    --server-host="root@$srv_ip" --backends=epoll,threads >"$tmp/compare.log" 2>&1 ||
    { cat "$tmp/compare.log"; fail "tools/compare --server-host failed"; }
  check_runs 'rec["server"]["utime_s"] + rec["server"]["stime_s"] > 0
    and rec["server"]["requests_served"] > 0
    and rec["placement"]["server_host"] == "root@198.18.0.1"
    and rec["placement"]["server_addr"] == "198.18.0.1"
    and rec["placement"]["server_cpus"] and rec["placement"]["load_cpus"]
    and rec["placement"]["load_hosts"] == ["local"]
    and rec["load"]["config"]["host"] == "198.18.0.1"
    and (rec["placement"]["shards"] is None) == (rec["point"]["backend"] == "threads")
    and rec["server"]["ctx_switches"]["total"] > 0
    and ("syscalls" in rec["server"]) == rec["point"]["probe"]'
  grep -q "root@198.18.0.1" "$tmp/out/report.md" || fail "report.md does not name the server host"
  [ -z "$(leftovers)" ] || fail "left running on the server host: $(leftovers)"

  # Ctrl-C in the middle of a run: the remote server is stopped all the same. Job control gives
  # tools/compare a process group of its own with SIGINT not ignored, as in a terminal.
  set -m
  ip netns exec "$cli_ns" "$root/tools/compare" "${compare_flags[@]}" --out "$tmp/out2" \
    --server-host="root@$srv_ip" --backends=epoll --duration=20s >"$tmp/compare2.log" 2>&1 &
  compare_pid=$!
  set +m
  for _ in $(seq 600); do  # until the first run's server is up there (bounded: 30 s)
    [ -n "$(leftovers | grep upcase-server || true)" ] && break
    read -rt 0.05 <> <(:) || true
  done
  [ -n "$(leftovers | grep upcase-server || true)" ] || { cat "$tmp/compare2.log"; fail "no remote server seen"; }
  kill -INT -- "-$compare_pid"  # what Ctrl-C does: SIGINT to the whole foreground group
  status=0
  timeout 60 tail --pid="$compare_pid" -f /dev/null || true
  wait "$compare_pid" || status=$?
  compare_pid=""
  [ "$status" -ne 0 ] || fail "interrupted tools/compare exited 0"
  [ -z "$(leftovers)" ] || fail "left running on the server host after Ctrl-C: $(leftovers)"
  ;;
loads)
  ip netns exec "$cli_ns" timeout 240 "$root/tools/compare" "${compare_flags[@]}" \
    --load-hosts="local,root@$srv_ip" --server-addr="$cli_ip" --copy-bins --backends=epoll \
    --protos=tcp --connections=2,64 --sizes=64 >"$tmp/compare.log" 2>&1 ||
    { cat "$tmp/compare.log"; fail "tools/compare --load-hosts failed"; }
  check_runs 'rec["load"]["instances"] == 2
    and rec["load"]["requests"] == sum(i["requests"] for i in rec["load_instances"])
    and [i["host"] for i in rec["load_instances"]] == ["local", "root@198.18.0.1"]
    and sum(i["connections"] for i in rec["load_instances"]) == rec["point"]["connections"]
    and rec["placement"]["load_hosts"] == ["local", "root@198.18.0.1"]
    and rec["server"]["requests_served"] >= rec["load"]["requests"]'
  grep -q "merged with .upcase-load merge" "$tmp/out/report.md" || fail "report.md has no merge note"
  [ -z "$(leftovers)" ] || fail "left running on the load host: $(leftovers)"
  ;;
*) fail "unknown mode '$mode' (server or loads)" ;;
esac
[ -z "$(workdirs)" ] || fail "remote work folders left behind: $(workdirs)"
echo "PASS"
