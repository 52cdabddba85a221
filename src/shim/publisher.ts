// Publishes task events to containerd in order. containerd 1.6 accepts them over TTRPC
// (Events.Forward on TTRPC_ADDRESS); without that address we fall back to the publish binary.
import { spawn } from "node:child_process";
import { create, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { AnySchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ForwardRequestSchema } from "../gen/containerd/services/events/ttrpc/v1/events_pb.js";
import { TtrpcClient } from "../ttrpc/index.js";
import type { Logger } from "../core/log.js";

const EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events";
const MAX_ATTEMPTS = 5;

interface Pending {
  namespace: string;
  topic: string;
  typeUrl: string;
  value: Uint8Array;
  at: Date;
  attempts: number;
}

export interface EventSink {
  publish<D extends DescMessage>(namespace: string, topic: string, schema: D, event: MessageShape<D>): void;
  /** Resolves once everything queued so far has been sent (or given up on). */
  flush(): Promise<void>;
  close(): void;
}

export interface PublisherOptions {
  ttrpcAddress: string;
  grpcAddress: string;
  publishBinary: string;
  log: Logger;
  retryDelayMs?: number;
}

export class Publisher implements EventSink {
  private queue: Pending[] = [];
  private client: TtrpcClient | undefined;
  private draining: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly opts: PublisherOptions) {}

  publish<D extends DescMessage>(namespace: string, topic: string, schema: D, event: MessageShape<D>) {
    if (this.closed) return;
    this.queue.push({ namespace, topic, typeUrl: schema.typeName, value: toBinary(schema, event), at: new Date(), attempts: 0 });
    this.opts.log.debug("event", { topic, ns: namespace });
    this.draining ??= this.drain().finally(() => (this.draining = undefined));
  }

  async flush() {
    while (this.draining) await this.draining;
  }

  close() {
    this.closed = true;
    this.client?.close();
    this.client = undefined;
  }

  private async drain() {
    while (this.queue.length > 0 && !this.closed) {
      const ev = this.queue[0]!;
      try {
        await this.send(ev);
        this.queue.shift();
      } catch (err) {
        ev.attempts++;
        this.client?.close();
        this.client = undefined;
        if (ev.attempts >= MAX_ATTEMPTS) {
          this.opts.log.error("dropping event after retries", { topic: ev.topic, err: (err as Error).message });
          this.queue.shift();
          continue;
        }
        const delay = (this.opts.retryDelayMs ?? 1000) * ev.attempts;
        await new Promise((r) => setTimeout(r, delay).unref());
      }
    }
  }

  private async send(ev: Pending) {
    if (this.opts.ttrpcAddress) {
      // containerd restarted since the last event: dial the new one now rather than fail once first.
      if (this.client?.closed) this.client = undefined;
      this.client ??= await TtrpcClient.connect(this.opts.ttrpcAddress);
      const req = create(ForwardRequestSchema, {
        envelope: {
          timestamp: timestampFromDate(ev.at),
          namespace: ev.namespace,
          topic: ev.topic,
          event: { typeUrl: ev.typeUrl, value: ev.value },
        },
      });
      await this.client.call(EVENTS_SERVICE, "Forward", toBinary(ForwardRequestSchema, req), {
        timeoutMs: 5000,
        metadata: { "containerd-namespace-ttrpc": ev.namespace },
      });
      return;
    }
    await this.sendWithBinary(ev);
  }

  private sendWithBinary(ev: Pending): Promise<void> {
    const any = toBinary(AnySchema, create(AnySchema, { typeUrl: ev.typeUrl, value: ev.value }));
    return new Promise((resolve, reject) => {
      const child = spawn(
        this.opts.publishBinary,
        ["--address", this.opts.grpcAddress, "publish", "--topic", ev.topic, "--namespace", ev.namespace],
        { stdio: ["pipe", "ignore", "pipe"] },
      );
      let stderr = "";
      child.stderr!.on("data", (d) => (stderr += d));
      child.on("error", reject);
      child.on("close", (code) => (code === 0 ? resolve() : reject(new Error(`publish exited ${code}: ${stderr.trim()}`))));
      child.stdin!.end(any);
    });
  }
}

/** Discards events; for tools and tests that run a runtime without containerd. */
export class NullSink implements EventSink {
  publish() {}
  async flush() {}
  close() {}
}
