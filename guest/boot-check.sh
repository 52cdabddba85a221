#!/usr/bin/env bash
# Boots guest/out under QEMU (TCG by default) and checks, within a time bound, that:
#   - the agent's ready line arrives on the virtio-serial port (host side: a unix socket),
#     and the agent answers a ping sent back over the same port;
#   - the guest runs the Debian kernel release recorded in out/manifest.json;
#   - the guest mounted the 9p share "cocoon" and read a file the host put there;
#   - crun ran a container inside the guest (cgroup v2, pivot_root);
#   - the agent powered the VM off and QEMU exited by itself.
# It talks to whichever agent the build ships (manifest.json agent.kind): the placeholder's JSON
# lines, or the real agent's TTRPC API (Health = ready/ping; a busybox container from the share
# that prints the host's file = 9p + crun + reaper/koffi; Shutdown = power off). The API mode
# uses the repository's dist/js build (npm run build).
# Prints the timings (ms since QEMU started). QEMU is always killed on the way out.
#
#   guest/boot-check.sh [--machine q35|pc|microvm] [--variant initramfs|9p|pmem] [--mem 256M]
#                       [--accel tcg|kvm] [--kernel vmlinux|vmlinuz] [--timeout SECONDS] [--append "WORDS"] [--json] [--no-build]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/qemu-args.sh
source "$HERE/lib/qemu-args.sh"

MACHINE=q35 VARIANT=initramfs MEM=256M ACCEL=tcg KERNEL_IMAGE=vmlinux TIMEOUT=120 EXTRA_APPEND="" JSON=0 BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --machine) MACHINE=$2; shift 2 ;;
    --variant) VARIANT=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --accel) ACCEL=$2; shift 2 ;;
    --kernel) KERNEL_IMAGE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --append) EXTRA_APPEND=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    --no-build) BUILD=0; shift ;;
    *) echo "usage: $0 [--machine M] [--variant initramfs|9p|pmem] [--mem SIZE] [--accel tcg|kvm] [--kernel vmlinux|vmlinuz] [--timeout S] [--append WORDS] [--json] [--no-build]" >&2; exit 2 ;;
  esac
done

GUEST_OUT=${COCOON_GUEST_OUT:-$HERE/out}
if [[ $BUILD == 1 ]]; then "$HERE/build.sh"; fi
[[ -f $GUEST_OUT/manifest.json ]] || { echo "no guest build in $GUEST_OUT: run guest/build.sh" >&2; exit 1; }

guest_run_dir cocoon-boot-check
TOKEN="share-token-$RANDOM$RANDOM"
echo "$TOKEN" >"$SHARE_DIR/hello.txt"
AGENT_KIND=$(guest_agent_kind)
API_ARGS=()
if [[ $AGENT_KIND == cocoon ]]; then
  # The real agent runs containers only from what the host shares: a busybox rootfs.
  mkdir -p "$SHARE_DIR/rootfs/bin" "$SHARE_DIR"/rootfs/{proc,sys,dev,tmp,etc}
  install -m 0755 /bin/busybox "$SHARE_DIR/rootfs/bin/busybox"
  for applet in sh cat echo; do ln -s busybox "$SHARE_DIR/rootfs/bin/$applet"; done
  API_ARGS=(--api --container /mnt/cocoon/rootfs --share-file /mnt/cocoon/hello.txt)
fi

export MACHINE ACCEL VARIANT MEM KERNEL_IMAGE GUEST_OUT CONSOLE_LOG AGENT_SOCK SHARE_DIR PIDFILE EXTRA_APPEND
guest_qemu_args
REPORT=$RUN/report.json
node "$HERE/lib/boot-run.mjs" --log "$CONSOLE_LOG" --sock "$AGENT_SOCK" --timeout-ms "$((TIMEOUT * 1000))" \
  "${API_ARGS[@]}" -- "${QEMU_ARGS[@]}" >"$REPORT" || true

MANIFEST=$GUEST_OUT/manifest.json TOKEN=$TOKEN JSON=$JSON AGENT_KIND=$AGENT_KIND MACHINE=$MACHINE VARIANT=$VARIANT ACCEL=$ACCEL MEM=$MEM KERNEL_IMAGE=$KERNEL_IMAGE \
  QEMU_CMD="$(printf '%q ' "${QEMU_ARGS[@]}")" node - "$REPORT" <<'EOF'
const fs = require('node:fs');
const e = process.env;
const report = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const kernel = JSON.parse(fs.readFileSync(e.MANIFEST, 'utf8')).kernel.release;
const msgs = report.messages ?? [];
const ready = msgs.find((m) => m.type === 'ready');
const check = msgs.find((m) => m.type === 'check');
const t = report.timings ?? {};
const checks = [
  ['agent ready line on virtio-serial', ready?.msg === `cocoon-agent ready ${kernel}`],
  ['agent answers over virtio-serial (ping/pong)', msgs.some((m) => m.type === 'pong')],
  [`guest kernel is ${kernel}`, ready?.kernel === kernel],
  ['9p share mounted and read', check?.share?.ok === true && check.share.content.trim() === e.TOKEN],
  ['crun ran a container in the guest', check?.crun?.ok === true],
  ...(check?.koffi?.present ? [['koffi (shipped) calls libc in the guest', check.koffi.ok === true]] : []),
  ['guest powered off, QEMU exited by itself', report.error === null && t.qemuExit !== undefined && msgs.some((m) => m.type === 'bye')],
];
const failed = checks.filter(([, ok]) => !ok);
if (e.JSON === '1') {
  process.stdout.write(JSON.stringify({ machine: e.MACHINE, variant: e.VARIANT, accel: e.ACCEL, mem: e.MEM, kernel: e.KERNEL_IMAGE,
    agent: e.AGENT_KIND, ok: failed.length === 0, checks: Object.fromEntries(checks), timings: t, ready, check }, null, 2) + '\n');
} else {
  console.log(`boot-check: machine=${e.MACHINE} variant=${e.VARIANT} kernel=${e.KERNEL_IMAGE} accel=${e.ACCEL} mem=${e.MEM} agent=${e.AGENT_KIND}`);
  for (const [name, ok] of checks) console.log(`  ${ok ? 'ok  ' : 'FAIL'} ${name}`);
  const fmt = (k) => (t[k] === undefined ? '-' : `${t[k]} ms`);
  console.log('  timings since QEMU start:');
  console.log(`    first console byte        ${fmt('firstConsoleByte')}`);
  const initUptime = /cocoon-init: stage 1 \(uptime ([\d.]+)\)/.exec(report.console ?? '')?.[1] ?? '?';
  console.log(`    kernel done, /init runs   ${fmt('initStarted')}   (guest uptime ${initUptime} s)`);
  console.log(`    init execs agent          ${fmt('agentExec')}`);
  console.log(`    agent ready (virtio port) ${fmt('agentReady')}   (guest uptime ${ready?.uptime ?? '?'} s)`);
  console.log(`    checks done (crun etc.)   ${fmt('checkDone')}`);
  console.log(`    QEMU exited               ${fmt('qemuExit')}`);
  if (check && e.AGENT_KIND === 'cocoon') console.log(`  guest: agent ${ready?.agentVersion}, container run ${check.crun?.ms} ms (create, start, output, wait, remove)`);
  else if (check) {
    console.log(`  guest: node ${ready?.node}, ${check.crunVersion}, MemFree ${check.memFreeKiB} KiB of ${check.memTotalKiB} KiB, crun run ${check.crun?.ms} ms, koffi ${check.koffi?.present ? check.koffi.version : 'not shipped'}`);
    console.log(`  guest cgroup v2 controllers enabled at the root: ${check.cgroupControllers}`);
  }
  if (failed.length) {
    console.log(`  error: ${report.error ?? 'none'}; qemu exit ${report.qemuExitCode}`);
    if (report.qemuOutput) console.log(`  qemu said: ${report.qemuOutput}`);
    if (check?.crun && !check.crun.ok) console.log(`  crun: ${JSON.stringify(check.crun)}`);
    console.log('  console tail:\n' + (report.console ?? '').split('\n').slice(-25).map((l) => '    ' + l).join('\n'));
    console.log(`  qemu: ${e.QEMU_CMD}`);
  }
  // The plain "N passed, N failed" line is what CI reads as a test result.
  console.log(`boot-check: ${checks.length - failed.length} passed, ${failed.length} failed`);
}
process.exitCode = failed.length ? 1 : 0;
EOF
