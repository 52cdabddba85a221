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

const TIOCGPTPEER = 0x5441;
const O_RDWR = 2;
const O_NOCTTY = 0x100;
const O_CLOEXEC = 0x80000;

/** An fd for the slave side of a pty master, without needing its path (which may live in another
 *  mount namespace). Holding it keeps reads on the master from failing with EIO while no process
 *  has the slave open yet. */
export function openPtyPeer(masterFd: number): number {
  return check(libc().ioctlInt(masterFd, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC), "ioctl(TIOCGPTPEER)", `fd ${masterFd}`);
}
