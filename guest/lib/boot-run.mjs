// Host side of one bounded guest boot, shared by boot-check.sh and kvm-probe.sh.
// Starts QEMU (argv after "--"), timestamps what the guest shows on its serial log and on
// the agent's virtio-serial socket, talks to the agent, and always leaves with QEMU gone.
// Prints one JSON report on stdout.
//
//   node boot-run.mjs --log FILE --sock FILE --timeout-ms N [--no-poweroff]
//                     [--api [--container GUEST_ROOTFS --share-file GUEST_PATH]] -- qemu-system-x86_64 ARGS...
//
// Without --api it speaks the placeholder agent's JSON lines (ping, then poweroff). With --api it
// speaks the real agent's TTRPC API (through the repository's dist/js build): Health twice (ready,
// then "pong"), optionally a busybox container from GUEST_ROOTFS that prints the shared file
// GUEST_PATH, then Shutdown. Either way the report holds the same message types
// (ready, pong, check, bye), so the callers judge both alike.
//
// Timings are milliseconds since QEMU was spawned:
//   firstConsoleByte  first byte on the serial console (kernel or /init, depending on "quiet")
//   initStarted       "cocoon-init: stage 1" (the kernel is done and ran /init)
//   agentExec         "cocoon-init: exec agent"
//   agentReady        the agent's ready line arrived on the virtio-serial socket
//   pong              the agent answered a ping sent over the socket
//   qemuExit          QEMU exited after the agent powered off
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

function parseArgs(argv) {
  const sep = argv.indexOf('--');
  if (sep < 0 || sep === argv.length - 1) throw new Error('usage: boot-run.mjs --log F --sock F --timeout-ms N -- qemu ARGS');
  const opts = { log: '', sock: '', timeoutMs: 60_000, poweroff: true, api: false, container: '', shareFile: '', qemu: argv.slice(sep + 1) };
  const own = argv.slice(0, sep);
  for (let i = 0; i < own.length; i++) {
    const key = own[i];
    if (key === '--log') opts.log = own[++i];
    else if (key === '--sock') opts.sock = own[++i];
    else if (key === '--timeout-ms') opts.timeoutMs = Number(own[++i]);
    else if (key === '--no-poweroff') opts.poweroff = false;
    else if (key === '--api') opts.api = true;
    else if (key === '--container') opts.container = own[++i];
    else if (key === '--share-file') opts.shareFile = own[++i];
    else throw new Error(`unknown option ${key}`);
  }
  if (!opts.log || !opts.sock) throw new Error('--log and --sock are required');
  return opts;
}

let qemuChild = null;
const killQemu = () => {
  if (qemuChild && qemuChild.exitCode === null && qemuChild.signalCode === null) qemuChild.kill('SIGKILL');
};
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killQemu();
    process.exit(128 + 2);
  });
}

const CONSOLE_MARKS = {
  initStarted: 'cocoon-init: stage 1',
  agentExec: 'cocoon-init: exec agent',
};

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  fs.rmSync(opts.log, { force: true });
  fs.rmSync(opts.sock, { force: true });

  const t0 = performance.now();
  const since = () => Math.round(performance.now() - t0);
  const report = { ok: false, timings: {}, messages: [], console: '', error: null, qemuExitCode: null };
  const mark = (name) => {
    if (report.timings[name] === undefined) report.timings[name] = since();
  };

  const qemu = spawn(opts.qemu[0], opts.qemu.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  qemuChild = qemu;
  let qemuOutput = '';
  qemu.stdout.on('data', (d) => (qemuOutput += d));
  qemu.stderr.on('data', (d) => (qemuOutput += d));
  // A QEMU stuck in a KVM ioctl may not die at once even from SIGKILL; stop waiting for it
  // a few seconds after the kill so the caller is never held past its bound.
  let giveUp;
  const exited = new Promise((resolve) => {
    giveUp = resolve;
    qemu.on('exit', (code, signal) => {
      mark('qemuExit');
      report.qemuExitCode = code ?? signal;
      resolve();
    });
  });
  let qemuGone = false;
  exited.then(() => (qemuGone = true));

  let stuck;
  const deadline = setTimeout(() => {
    report.error ??= `timeout after ${opts.timeoutMs} ms`;
    qemu.kill('SIGKILL');
    stuck = setTimeout(() => {
      report.error += '; QEMU still alive 5 s after SIGKILL';
      giveUp();
    }, 5000);
  }, opts.timeoutMs);

  // The serial log is a plain file that QEMU appends to; poll it.
  const watchConsole = (async () => {
    while (!qemuGone) {
      let text = '';
      try {
        text = fs.readFileSync(opts.log, 'utf8');
      } catch {}
      if (text.length > 0) mark('firstConsoleByte');
      for (const [name, needle] of Object.entries(CONSOLE_MARKS)) if (text.includes(needle)) mark(name);
      report.console = text;
      await sleep(5);
    }
    try {
      report.console = fs.readFileSync(opts.log, 'utf8');
    } catch {}
  })();

  // Connect as soon as QEMU has made the socket. Until the host side is connected, guest
  // writes to the port block, so connecting late loses nothing.
  const talk = opts.api ? talkApi(opts, report, mark, since, exited, () => qemuGone) : (async () => {
    let sock;
    while (!qemuGone && !sock) {
      try {
        sock = await new Promise((resolve, reject) => {
          const s = net.createConnection(opts.sock, () => resolve(s));
          s.once('error', reject);
        });
      } catch {
        await sleep(5);
      }
    }
    if (!sock) return;
    mark('socketConnected');
    let pending = '';
    sock.setEncoding('utf8');
    sock.on('error', () => {});
    sock.on('data', (chunk) => {
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        let msg;
        try {
          msg = JSON.parse(line);
        } catch {
          msg = { type: 'raw', line };
        }
        msg.hostMs = since();
        report.messages.push(msg);
        if (msg.type === 'ready') {
          mark('agentReady');
          sock.write('ping\n');
        } else if (msg.type === 'pong') {
          mark('pong');
        } else if (msg.type === 'check') {
          mark('checkDone');
          if (opts.poweroff) sock.write('poweroff\n');
        }
      }
    });
    await exited;
    sock.destroy();
  })();

  await exited;
  clearTimeout(deadline);
  clearTimeout(stuck);
  await Promise.all([watchConsole, talk]);
  report.qemuOutput = qemuOutput.trim();
  report.ok = report.error === null && report.timings.agentReady !== undefined;
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  // Do not let a QEMU that ignored SIGKILL keep this process alive through its pipes.
  process.exit(0);
}

// The real agent: its TTRPC API, through the client the repository builds into dist/js.
async function talkApi(opts, report, mark, since, exited, gone) {
  const dist = new URL('../../dist/js/src/', import.meta.url);
  let ttrpc, agentPb;
  try {
    ttrpc = await import(new URL('ttrpc/index.js', dist));
    agentPb = await import(new URL('gen/cocoon/agent/v1/agent_pb.js', dist));
  } catch (err) {
    report.error ??= `cannot load the TTRPC client from dist/js (run npm run build): ${err.message}`;
    return;
  }
  let client;
  while (!gone() && !client) {
    try {
      client = await ttrpc.TtrpcClient.connect(opts.sock, { timeoutMs: 2000 });
    } catch {
      await sleep(5);
    }
  }
  if (!client) return;
  mark('socketConnected');
  const agent = client.makeClient(agentPb.Agent, 'cocoon.agent.v1.Agent');
  const msg = (m) => report.messages.push({ ...m, hostMs: since() });
  const call = { timeoutMs: opts.timeoutMs };
  try {
    const h = await agent.health({}, call);
    mark('agentReady');
    const ready = `cocoon-agent ready ${h.kernelRelease}`;
    msg({ type: 'ready', msg: ready, kernel: h.kernelRelease, agentVersion: h.agentVersion, uptime: Number(h.uptimeMs) / 1000 });
    await agent.health({}, call);
    mark('pong');
    msg({ type: 'pong' });
    const check = { type: 'check', share: { ok: false }, crun: { ok: false }, koffi: { present: true, ok: false } };
    if (opts.container) {
      const started = performance.now();
      try {
        const spec = await containerSpec(opts.container, opts.shareFile);
        const cid = 'boot-check';
        await agent.createContainer({ containerId: cid, specJson: Buffer.from(JSON.stringify(spec)), stdio: { stdout: true, stderr: true } }, call);
        const read = async (stream) => {
          let text = '';
          for (;;) {
            const r = await agent.readOutput({ containerId: cid, stream }, call);
            text += Buffer.from(r.data).toString();
            if (r.eof) return text;
          }
        };
        const out = read(agentPb.Stream.STDOUT);
        const errText = read(agentPb.Stream.STDERR);
        await agent.startProcess({ containerId: cid }, call);
        const [stdout, stderr] = await Promise.all([out, errText]);
        const exit = await agent.waitProcess({ containerId: cid }, call);
        await agent.removeContainer({ containerId: cid }, call);
        const [content = '', cgroup = ''] = stdout.split('---\n');
        check.share = { ok: content.length > 0, content };
        // The agent gives each container its own cgroup namespace: its cgroup v2 root reads as "/".
        check.crun = { ok: exit.exitStatus === 0 && /^0::\//m.test(cgroup), status: exit.exitStatus, stdout, stderr, ms: Math.round(performance.now() - started) };
        // The exit status reached us through the agent's reaper, which runs on koffi.
        check.koffi = { present: true, ok: exit.exitStatus === 0, version: 'used by the agent' };
      } catch (err) {
        check.crun = { ok: false, error: String(err.message ?? err) };
      }
    }
    mark('checkDone');
    msg(check);
    if (opts.poweroff) {
      await agent.shutdown({}, call);
      msg({ type: 'bye' });
    }
  } catch (err) {
    report.error ??= `agent API: ${err.message ?? err}`;
  }
  await exited;
  client.close();
}

/** crun's default spec, running a shell in the shared busybox rootfs that prints the shared file and its cgroup. */
async function containerSpec(rootfs, shareFile) {
  const { execFileSync } = await import('node:child_process');
  const dir = fs.mkdtempSync('/tmp/cocoon-boot-spec-');
  try {
    execFileSync('crun', ['spec'], { cwd: dir });
    const spec = JSON.parse(fs.readFileSync(`${dir}/config.json`, 'utf8'));
    spec.root = { path: rootfs, readonly: true };
    spec.process.terminal = false;
    spec.process.env = ['PATH=/bin'];
    spec.process.args = ['sh', '-c', 'cat /shared.txt; echo ---; cat /proc/self/cgroup'];
    spec.mounts.push({ destination: '/shared.txt', type: 'bind', source: shareFile, options: ['rbind', 'ro'] });
    return spec;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// Whatever happens, QEMU must not outlive this process.
main().catch((err) => {
  killQemu();
  process.stdout.write(JSON.stringify({ ok: false, error: String(err?.stack ?? err) }) + '\n');
  process.exitCode = 2;
});
