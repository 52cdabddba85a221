// The few small messages the `start` command reads and writes, decoded field by field with the
// protobuf library's wire reader. `start` runs for every container and containerd waits for it;
// loading the generated descriptors and the reflection runtime would cost more than everything
// else it does. Field numbers are those of our .proto files; a unit test checks these decoders
// against the generated ones.
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";

export interface AnyWire {
  typeUrl: string;
  value: Uint8Array;
}

export interface RuncOptionsWire {
  noPivotRoot: boolean;
  noNewKeyring: boolean;
  shimCgroup: string;
  ioUid: number;
  ioGid: number;
  binaryName: string;
  root: string;
  criuPath: string;
  systemdCgroup: boolean;
}

export interface GenericOptionsWire {
  typeUrl: string;
  configPath: string;
  configBody: Uint8Array;
}

export interface BootstrapParamsWire {
  instanceId: string;
  namespace: string;
  logLevel: number;
  containerdTtrpcAddress: string;
  containerdGrpcAddress: string;
  containerdBinary: string;
  extensions: AnyWire[];
  socketDir: string;
}

/** Calls onField for each field; unknown fields are skipped. Throws on malformed input. */
function eachField(bytes: Uint8Array, onField: (no: number, type: WireType, r: BinaryReader) => boolean) {
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, type] = r.tag();
    if (!onField(no, type, r)) r.skip(type, no);
  }
}

export function readAny(bytes: Uint8Array): AnyWire {
  const out: AnyWire = { typeUrl: "", value: new Uint8Array() };
  eachField(bytes, (no, type, r) => {
    if (no === 1 && type === WireType.LengthDelimited) out.typeUrl = r.string();
    else if (no === 2 && type === WireType.LengthDelimited) out.value = r.bytes();
    else return false;
    return true;
  });
  return out;
}

export function readRuncOptions(bytes: Uint8Array): RuncOptionsWire {
  const o: RuncOptionsWire = { noPivotRoot: false, noNewKeyring: false, shimCgroup: "", ioUid: 0, ioGid: 0, binaryName: "", root: "", criuPath: "", systemdCgroup: false };
  eachField(bytes, (no, type, r) => {
    const varint = type === WireType.Varint;
    const text = type === WireType.LengthDelimited;
    if (no === 1 && varint) o.noPivotRoot = r.bool();
    else if (no === 2 && varint) o.noNewKeyring = r.bool();
    else if (no === 3 && text) o.shimCgroup = r.string();
    else if (no === 4 && varint) o.ioUid = r.uint32();
    else if (no === 5 && varint) o.ioGid = r.uint32();
    else if (no === 6 && text) o.binaryName = r.string();
    else if (no === 7 && text) o.root = r.string();
    else if (no === 8 && text) o.criuPath = r.string();
    else if (no === 9 && varint) o.systemdCgroup = r.bool();
    else return false;
    return true;
  });
  return o;
}

export function readGenericOptions(bytes: Uint8Array): GenericOptionsWire {
  const o: GenericOptionsWire = { typeUrl: "", configPath: "", configBody: new Uint8Array() };
  eachField(bytes, (no, type, r) => {
    if (type !== WireType.LengthDelimited) return false;
    if (no === 1) o.typeUrl = r.string();
    else if (no === 2) o.configPath = r.string();
    else if (no === 3) o.configBody = r.bytes();
    else return false;
    return true;
  });
  return o;
}

export function readBootstrapParams(bytes: Uint8Array): BootstrapParamsWire {
  const p: BootstrapParamsWire = { instanceId: "", namespace: "", logLevel: 0, containerdTtrpcAddress: "", containerdGrpcAddress: "", containerdBinary: "", extensions: [], socketDir: "" };
  eachField(bytes, (no, type, r) => {
    if (no === 3 && type === WireType.Varint) {
      p.logLevel = r.int32();
      return true;
    }
    if (type !== WireType.LengthDelimited) return false;
    switch (no) {
      case 1: p.instanceId = r.string(); break;
      case 2: p.namespace = r.string(); break;
      case 4: r.string(); break;
      case 5: p.containerdTtrpcAddress = r.string(); break;
      case 6: p.containerdGrpcAddress = r.string(); break;
      case 7: p.containerdBinary = r.string(); break;
      case 8: {
        // Extension { google.protobuf.Any value = 1; }
        let any: AnyWire | undefined;
        eachField(r.bytes(), (eno, etype, er) => {
          if (eno !== 1 || etype !== WireType.LengthDelimited) return false;
          any = readAny(er.bytes());
          return true;
        });
        if (any) p.extensions.push(any);
        break;
      }
      case 9: p.socketDir = r.string(); break;
      default: return false;
    }
    return true;
  });
  return p;
}

/** BootstrapResult { int32 version = 1; string address = 2; string protocol = 3; } */
export function writeBootstrapResult(version: number, address: string, protocol: string): Uint8Array {
  return new BinaryWriter()
    .tag(1, WireType.Varint).int32(version)
    .tag(2, WireType.LengthDelimited).string(address)
    .tag(3, WireType.LengthDelimited).string(protocol)
    .finish();
}
