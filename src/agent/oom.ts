// The OOM kills of the pod's containers, queued for the host, which asks with NextOomEvent
// (a long-polling call: the answer waits until there is something to say).
import { AbortableWaiters } from "../core/waiters.js";

/** Events kept for a host that is not asking; older ones are dropped first. */
const MAX_QUEUED = 1000;

export class OomEvents {
  private queue: string[] = [];
  private waiters = new AbortableWaiters<string>();

  publish(id: string) {
    if (this.waiters.resolveOne(id)) return;
    if (this.queue.push(id) > MAX_QUEUED) this.queue.shift();
  }

  /** The next container that had an OOM kill, waiting for one. */
  next(signal?: AbortSignal): Promise<string> {
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return this.waiters.wait(signal);
  }
}
