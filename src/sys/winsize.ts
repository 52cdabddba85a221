// Terminal size of a pty (the shim's ResizePty).
import { check, libc } from "./libc.js";

const TIOCSWINSZ = 0x5414;

export function setWinsize(fd: number, rows: number, cols: number): void {
  // struct winsize { unsigned short ws_row, ws_col, ws_xpixel, ws_ypixel; }
  const ws = Buffer.alloc(8);
  ws.writeUInt16LE(rows, 0);
  ws.writeUInt16LE(cols, 2);
  check(libc().ioctlPtr(fd, TIOCSWINSZ, ws), "ioctl(TIOCSWINSZ)", `fd ${fd}`);
}
