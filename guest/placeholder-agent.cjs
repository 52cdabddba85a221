'use strict';
// Stand-in for dist/cocoon-agent.cjs until the real agent exists, so the guest image can be
// built and boot-checked on its own. It runs as PID 1 and speaks JSON lines on the
// virtio-serial port named "agent.0":
//   guest -> host  {"type":"ready","msg":"cocoon-agent ready <kernel release>",...}
//   guest -> host  {"type":"check",...}   what it found (9p share, crun, memory)
//   host  -> guest "ping"      -> {"type":"pong"}
//   host  -> guest "poweroff"  -> powers the VM off
// With no host command it powers off after IDLE_MS, so a lost host never leaves a VM behind.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const PORT_NAME = 'agent.0';
const SHARE_FILE = '/mnt/cocoon/hello.txt';
const IDLE_MS = 60_000;

const uptime = () => Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);

function openPort() {
  const byName = path.join('/dev/virtio-ports', PORT_NAME);
  return fs.openSync(byName, 'r+');
}

function powerOff(reason) {
  console.log(`cocoon-agent: power off (${reason})`);
  spawnSync('sync');
  spawnSync('poweroff', ['-f']);
  // Only reached if poweroff could not run: a PID 1 exit panics the kernel, and panic=-1
  // with QEMU's -no-reboot still ends the VM.
  process.exit(1);
}

function readShare() {
  try {
    return { ok: true, content: fs.readFileSync(SHARE_FILE, 'utf8') };
  } catch (err) {
    return { ok: false, error: String(err.message) };
  }
}

// Runs one throw-away container from a bundle made in /tmp, proving that crun, its shared
// libraries, cgroup v2 and pivot_root all work in this guest.
function crunSelfTest() {
  const bundle = fs.mkdtempSync('/tmp/selftest-');
  try {
    const rootfs = path.join(bundle, 'rootfs');
    for (const dir of ['bin', 'proc', 'dev', 'sys', 'tmp']) fs.mkdirSync(path.join(rootfs, dir), { recursive: true });
    fs.copyFileSync('/usr/bin/busybox', path.join(rootfs, 'bin/busybox'));
    fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
    const spec = spawnSync('crun', ['spec'], { cwd: bundle, encoding: 'utf8' });
    if (spec.status !== 0) return { ok: false, error: `crun spec: ${spec.stderr}` };
    const configPath = path.join(bundle, 'config.json');
    const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
    config.process.terminal = false;
    config.process.args = ['/bin/busybox', 'sh', '-c', 'echo hello-from-crun; cat /proc/self/cgroup'];
    fs.writeFileSync(configPath, JSON.stringify(config));
    const started = Date.now();
    const run = spawnSync('crun', ['run', '--bundle', bundle, 'selftest'], { encoding: 'utf8', timeout: 30_000 });
    return {
      ok: run.status === 0 && run.stdout.includes('hello-from-crun'),
      status: run.status,
      stdout: run.stdout,
      stderr: run.stderr,
      ms: Date.now() - started,
    };
  } finally {
    fs.rmSync(bundle, { recursive: true, force: true });
  }
}

// The real agent reaches a few syscalls through koffi; when the build shipped it, prove the
// native addon loads under this (stripped) node and can call into libc.
function koffiCheck() {
  let koffi;
  try {
    koffi = require('koffi');
  } catch {
    return { present: false };
  }
  try {
    const getpid = koffi.load('libc.so.6').func('int getpid()');
    return { present: true, ok: getpid() === process.pid, version: koffi.version };
  } catch (err) {
    return { present: true, ok: false, error: String(err.message) };
  }
}

function main() {
  const fd = openPort();
  const send = (msg) => fs.writeSync(fd, JSON.stringify(msg) + '\n');
  const ready = `cocoon-agent ready ${os.release()}`;
  console.log(ready);
  send({ type: 'ready', msg: ready, kernel: os.release(), node: process.version, uptime: uptime(), pid: process.pid });

  const crunVersion = spawnSync('crun', ['--version'], { encoding: 'utf8' });
  send({
    type: 'check',
    share: readShare(),
    crunVersion: crunVersion.stdout.split('\n')[0],
    crun: crunSelfTest(),
    koffi: koffiCheck(),
    cgroupControllers: fs.readFileSync('/sys/fs/cgroup/cgroup.subtree_control', 'utf8').trim(),
    memFreeKiB: Math.round(os.freemem() / 1024),
    memTotalKiB: Math.round(os.totalmem() / 1024),
    uptime: uptime(),
  });

  const idle = setTimeout(() => powerOff('idle'), IDLE_MS);
  let pending = '';
  const input = fs.createReadStream('', { fd, autoClose: false, encoding: 'utf8' });
  input.on('data', (chunk) => {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (line === 'ping') send({ type: 'pong', uptime: uptime() });
      else if (line === 'poweroff') {
        clearTimeout(idle);
        send({ type: 'bye' });
        powerOff('host asked');
      } else if (line) send({ type: 'error', msg: `unknown command ${line}` });
    }
  });
}

main();
