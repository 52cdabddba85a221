// OOM kills in container cgroups (v2): the kernel bumps `oom_kill` in memory.events and notifies
// inotify watchers of the file. A slow poll backs the watch up (an event lost while the watch was
// being set up, or a kernel without the notification).
import { readFileSync, watch } from "node:fs";
import type { FSWatcher } from "node:fs";
import path from "node:path";
import { parseKeyed } from "./cgroup-stats.js";

const POLL_MS = 5000;
/** Events kept for a host that is not asking; older ones are dropped first. */
const MAX_QUEUED = 1000;

interface Waiter {
  resolve(id: string): void;
}

export class OomMonitor {
  private queue: string[] = [];
  private waiters: Waiter[] = [];

  /** Watches `cgroupDir`/memory.events for container `id`; returns an idempotent stop. */
  watch(id: string, cgroupDir: string): () => void {
    const file = path.join(cgroupDir, "memory.events");
    let last = readOomKills(file) ?? 0n;
    const check = () => {
      const now = readOomKills(file);
      if (now === undefined || now <= last) return;
      last = now;
      this.publish(id);
    };
    let watcher: FSWatcher | undefined;
    try {
      watcher = watch(file, { persistent: false }, check);
      watcher.on("error", () => watcher?.close());
    } catch {}
    const timer = setInterval(check, POLL_MS);
    timer.unref();
    let stopped = false;
    return () => {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      watcher?.close();
    };
  }

  publish(id: string) {
    const w = this.waiters.shift();
    if (w) w.resolve(id);
    else if (this.queue.push(id) > MAX_QUEUED) this.queue.shift();
  }

  /** The next container that had an OOM kill, waiting for one. */
  next(signal?: AbortSignal): Promise<string> {
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        resolve: (id) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(id);
        },
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(w);
    });
  }
}

function readOomKills(file: string): bigint | undefined {
  try {
    return parseKeyed(readFileSync(file, "utf8")).get("oom_kill");
  } catch {
    return undefined;
  }
}
