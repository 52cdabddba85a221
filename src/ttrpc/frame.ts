// ttrpc framing: a 10-byte big-endian header (length, stream id, type, flags) before each message.

export const HEADER_LENGTH = 10;
/** Largest data length either side accepts (ttrpc v1.1.1 `messageLengthMax`). */
export const MAX_MESSAGE = 4 << 20;

export const MessageType = {
  REQUEST: 1,
  RESPONSE: 2,
  /** ttrpc >= 1.2 streaming data; a v1.1 peer ignores it. */
  DATA: 3,
} as const;

export interface Frame {
  kind: "frame";
  streamId: number;
  type: number;
  flags: number;
  data: Uint8Array;
}

/** A frame whose announced length exceeded the limit; its data was skipped, not stored. */
export interface OversizedFrame {
  kind: "oversized";
  streamId: number;
  type: number;
  flags: number;
  length: number;
}

export type FrameEvent = Frame | OversizedFrame;

export function encodeFrame(streamId: number, type: number, flags: number, data: Uint8Array): Buffer {
  if (data.length > 0xffffffff) throw new RangeError(`frame data too long: ${data.length}`);
  const out = Buffer.allocUnsafe(HEADER_LENGTH + data.length);
  out.writeUInt32BE(data.length, 0);
  out.writeUInt32BE(streamId >>> 0, 4);
  out.writeUInt8(type & 0xff, 8);
  out.writeUInt8(flags & 0xff, 9);
  out.set(data, HEADER_LENGTH);
  return out;
}

export function oversizedMessage(length: number, max = MAX_MESSAGE): string {
  return `message length ${length} exceed maximum message size of ${max}`;
}

/**
 * Incremental frame parser. Memory held is bounded by the header plus one accepted frame:
 * an oversized frame is counted off as it streams in so a peer cannot make us buffer it.
 * Frames wholly inside one chunk are returned as views of that chunk (no copy).
 */
export class FrameReader {
  private readonly header = Buffer.alloc(HEADER_LENGTH);
  private headerFill = 0;
  private streamId = 0;
  private type = 0;
  private flags = 0;
  private length = 0;
  /** Set while collecting the data of an accepted frame that spans chunks. */
  private body: Uint8Array | undefined;
  private bodyFill = 0;
  /** Bytes still to skip of an oversized frame, or -1 when not skipping. */
  private skipRemaining = -1;

  constructor(private readonly maxLength: number = MAX_MESSAGE) {}

  /** True when a frame has started but not completed (a close now truncates it). */
  get midFrame(): boolean {
    return this.headerFill > 0 || this.body !== undefined || this.skipRemaining >= 0;
  }

  push(chunk: Uint8Array): FrameEvent[] {
    const events: FrameEvent[] = [];
    let pos = 0;
    while (pos < chunk.length) {
      if (this.skipRemaining >= 0) {
        const n = Math.min(this.skipRemaining, chunk.length - pos);
        pos += n;
        this.skipRemaining -= n;
        if (this.skipRemaining === 0) this.finishSkip(events);
        continue;
      }
      if (this.body !== undefined) {
        const n = Math.min(this.length - this.bodyFill, chunk.length - pos);
        this.body.set(chunk.subarray(pos, pos + n), this.bodyFill);
        this.bodyFill += n;
        pos += n;
        if (this.bodyFill === this.length) {
          events.push(this.frame(this.body));
          this.body = undefined;
        }
        continue;
      }
      if (this.headerFill === 0 && chunk.length - pos >= HEADER_LENGTH) {
        this.parseHeader(chunk.subarray(pos, pos + HEADER_LENGTH));
        pos += HEADER_LENGTH;
      } else {
        const n = Math.min(HEADER_LENGTH - this.headerFill, chunk.length - pos);
        this.header.set(chunk.subarray(pos, pos + n), this.headerFill);
        this.headerFill += n;
        pos += n;
        if (this.headerFill < HEADER_LENGTH) continue;
        this.headerFill = 0;
        this.parseHeader(this.header);
      }
      // Header complete: decide how to take the data.
      if (this.length > this.maxLength) {
        this.skipRemaining = this.length;
        // Zero remaining is impossible here (length > max >= 0), so the loop continues skipping.
      } else if (this.length === 0) {
        events.push(this.frame(new Uint8Array(0)));
      } else if (chunk.length - pos >= this.length) {
        events.push(this.frame(chunk.subarray(pos, pos + this.length)));
        pos += this.length;
      } else {
        this.body = new Uint8Array(this.length);
        this.bodyFill = 0;
      }
    }
    return events;
  }

  private parseHeader(h: Uint8Array): void {
    const view = new DataView(h.buffer, h.byteOffset, HEADER_LENGTH);
    this.length = view.getUint32(0);
    this.streamId = view.getUint32(4);
    this.type = h[8]!;
    this.flags = h[9]!;
  }

  private frame(data: Uint8Array): Frame {
    return { kind: "frame", streamId: this.streamId, type: this.type, flags: this.flags, data };
  }

  private finishSkip(events: FrameEvent[]): void {
    this.skipRemaining = -1;
    events.push({
      kind: "oversized",
      streamId: this.streamId,
      type: this.type,
      flags: this.flags,
      length: this.length,
    });
  }
}
