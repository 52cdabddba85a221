#!/usr/bin/env bash
# Does a cocoon guest actually run under KVM on this host? Opening /dev/kvm is not enough:
# on some hosts (nested virtualisation) KVM guests hang. Boots guest/out with -accel kvm,
# bounded by a hard timeout, and prints one line:
#   kvm: works (agent ready after N ms)       exit 0
#   kvm: hangs/unavailable (REASON)            exit 1
# QEMU is always killed before this script returns.
#
#   guest/kvm-probe.sh [--timeout SECONDS (default 10)] [--machine q35|pc|microvm] [--json]
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/qemu-args.sh
source "$HERE/lib/qemu-args.sh"

TIMEOUT=10 MACHINE=q35 JSON=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --timeout) TIMEOUT=$2; shift 2 ;;
    --machine) MACHINE=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    *) echo "usage: $0 [--timeout SECONDS] [--machine q35|pc|microvm] [--json]" >&2; exit 2 ;;
  esac
done

result() { # result OK REASON MS
  if [[ $JSON == 1 ]]; then
    node -e 'console.log(JSON.stringify({ kvm: process.argv[1] === "true", reason: process.argv[2] || null,
      readyMs: process.argv[3] ? Number(process.argv[3]) : null, timeoutS: Number(process.argv[4]) }))' "$1" "$2" "${3:-}" "$TIMEOUT"
  elif [[ $1 == true ]]; then
    echo "kvm: works (agent ready after $3 ms)"
  else
    echo "kvm: hangs/unavailable ($2)"
  fi
  [[ $1 == true ]]
  exit
}

GUEST_OUT=${COCOON_GUEST_OUT:-$HERE/out}
[[ -f $GUEST_OUT/manifest.json ]] || { echo "no guest build in $GUEST_OUT: run guest/build.sh" >&2; exit 2; }
[[ -e /dev/kvm ]] || result false "no /dev/kvm"
# Opening the device read-write is what QEMU does first; fail fast if even that is refused.
{ exec 3<>/dev/kvm; } 2>/dev/null || result false "cannot open /dev/kvm"
exec 3>&-

guest_run_dir cocoon-kvm-probe

# The 9p-root variant is the lightest boot; the question is only whether the guest runs.
ACCEL=kvm VARIANT=9p MEM=256M
export MACHINE ACCEL VARIANT MEM GUEST_OUT CONSOLE_LOG AGENT_SOCK SHARE_DIR PIDFILE KVM_CPU
# "-cpu host" is what a working KVM host gets. Some hosts refuse it at once (an MSR that
# cannot be set, e.g. IA32_ARCH_CAPABILITIES under nested virtualisation); then one retry
# without that MSR tells "QEMU refuses" apart from "the guest hangs".
reasons=()
API=()
[[ $(guest_agent_kind) == cocoon ]] && API=(--api)
for KVM_CPU in host host,-arch-capabilities; do
  guest_qemu_args
  # The outer timeout is a second fence in case node itself gets stuck.
  timeout -s KILL $((TIMEOUT + 10)) node "$HERE/lib/boot-run.mjs" --log "$CONSOLE_LOG" --sock "$AGENT_SOCK" \
    --timeout-ms "$((TIMEOUT * 1000))" "${API[@]}" -- "${QEMU_ARGS[@]}" >"$RUN/report.json" 2>/dev/null
  verdict=$(node -e '
    let r = {};
    try { r = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8")); } catch {}
    const cpu = process.argv[2];
    if (r.timings?.agentReady !== undefined) console.log(`ready ${r.timings.agentReady}`);
    else if (r.error?.startsWith("timeout")) console.log(`hang -cpu ${cpu}: no agent within the timeout, ${(r.console ?? "").length} console bytes`);
    else console.log(`error -cpu ${cpu}: ${((l) => l.find((x) => /error/i.test(x)) ?? l.pop())((r.qemuOutput || r.error || "no report").split("\n"))}`);
  ' "$RUN/report.json" "$KVM_CPU")
  case "$verdict" in
    ready*) result true "" "${verdict#ready }" ;;
    hang*) reasons+=("${verdict#hang }"); break ;;
    *) reasons+=("${verdict#error }") ;;
  esac
done
reason=$(IFS=';'; echo "${reasons[*]}")
result false "${reason//;/; }"
