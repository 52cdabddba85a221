// Follows `ctr events` to time the steps inside containerd for each container: containerd publishes
// /containers/create itself, while /tasks/create and /tasks/start come from the shim right after the
// OCI runtime's create and start, so their gaps show where a start spends its time without ctr's
// own start-up and image resolution.
import { spawn, type ChildProcess } from "node:child_process";
import { CTR_BIN } from "../test/helpers/containerd.js";
import { sleep } from "../test/helpers/util.js";

export interface ContainerTimes {
  containerCreate?: number;
  taskCreate?: number;
  taskStart?: number;
}

/** Milliseconds since the epoch, sub-millisecond digits kept, from Go's `2006-01-02 15:04:05.999999999 +0000 UTC`. */
export function parseGoTime(date: string, time: string, zone: string): number {
  const [hms, frac = ""] = time.split(".");
  const base = Date.parse(`${date}T${hms}${zone === "+0000" ? "Z" : zone.slice(0, 3) + ":" + zone.slice(3)}`);
  return base + (frac ? Number(`0.${frac}`) * 1000 : 0);
}

const TOPICS: Record<string, keyof ContainerTimes> = {
  "/containers/create": "containerCreate",
  "/tasks/create": "taskCreate",
  "/tasks/start": "taskStart",
};

export class EventWatcher {
  private readonly times = new Map<string, ContainerTimes>();
  private readonly child: ChildProcess;
  private buf = "";

  constructor(address: string, namespace = "default") {
    this.child = spawn(CTR_BIN, ["--address", address, "-n", namespace, "events"], { stdio: ["ignore", "pipe", "ignore"] });
    this.child.on("error", () => {});
    this.child.stdout!.on("data", (d: Buffer) => {
      this.buf += d.toString("utf8");
      let nl: number;
      while ((nl = this.buf.indexOf("\n")) >= 0) {
        this.onLine(this.buf.slice(0, nl));
        this.buf = this.buf.slice(nl + 1);
      }
    });
  }

  private onLine(line: string) {
    const m = /^(\S+) (\S+) (\S+) \S+ \S+ (\S+) (\{.*\})$/.exec(line);
    if (!m) return;
    const key = TOPICS[m[4]!];
    if (!key) return;
    let body: { id?: string; container_id?: string };
    try {
      body = JSON.parse(m[5]!);
    } catch {
      return;
    }
    const id = body.container_id ?? body.id;
    if (!id) return;
    const t = this.times.get(id) ?? {};
    t[key] = parseGoTime(m[1]!, m[2]!, m[3]!);
    this.times.set(id, t);
  }

  /** The times seen for `id`, waiting briefly for /tasks/start (events may trail ctr's exit). */
  async get(id: string, waitMs = 1_000): Promise<ContainerTimes> {
    const deadline = Date.now() + waitMs;
    while (!this.times.get(id)?.taskStart && Date.now() < deadline) await sleep(10);
    const t = this.times.get(id) ?? {};
    this.times.delete(id);
    return t;
  }

  stop() {
    this.child.kill("SIGKILL");
  }
}
