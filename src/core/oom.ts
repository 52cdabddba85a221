// OOM kills in a container's cgroup, for the host (runc mode) and the guest agent. The kernel's
// notification (cgroup v2: inotify on memory.events; v1: an eventfd on memory.oom_control) wakes us,
// the `oom_kill` counter says whether a kill happened, and a slow poll of the counter backs the
// notification up (one lost while the watch was set up, or a kernel that does not notify).
import { watch, type FSWatcher } from "node:fs";
import type { Cgroup } from "./cgroups.js";

export const OOM_POLL_MS = 5000;

export interface OomNotifier {
  /** cgroup v1 eventfd notifications (sys.watchOomV1): calls back per OOM; returns a stop. */
  watchOomV1(memCgroupDir: string, onOom: () => void): () => void;
}

/** Calls onOom once for each rise of the cgroup's OOM kill count; returns an idempotent stop. */
export function watchOom(cg: Cgroup, notifier: OomNotifier, onOom: () => void, pollMs = OOM_POLL_MS): () => void {
  let last = cg.oomKills() ?? 0n;
  let stopped = false;
  const check = (notified: boolean) => {
    if (stopped) return;
    const now = cg.oomKills();
    if (now === undefined) {
      // No counter (a kernel older than 4.13 on v1): the notification is all there is.
      if (notified && !cg.v2) onOom();
      return;
    }
    if (now > last) {
      last = now;
      onOom();
    } else if (notified && !cg.v2) {
      // v1 signals the eventfd before it counts the kill (and a removed cgroup never reaches here:
      // sys filters that out), and the container may be deleted before the count shows: count it now,
      // as runc-v2 reports every v1 notification. The count catching up later is not a second kill.
      last += 1n;
      onOom();
    }
  };
  const stops: Array<() => void> = [];
  try {
    if (cg.v2) {
      const w: FSWatcher = watch(cg.oomCounterFile(), { persistent: false }, () => check(true));
      w.on("error", () => w.close());
      stops.push(() => w.close());
    } else {
      stops.push(notifier.watchOomV1(cg.dir("memory"), () => check(true)));
    }
  } catch {
    // No notification (the file is gone, or the kernel refuses): the poll still sees kills.
  }
  const poll = setInterval(() => check(false), pollMs);
  poll.unref();
  return () => {
    if (stopped) return;
    stopped = true;
    clearInterval(poll);
    for (const s of stops) s();
  };
}
