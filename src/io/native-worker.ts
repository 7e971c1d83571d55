/**
 * The thread where native.ts runs system calls that can take long: fallocate, the block
 * device zero and discard ioctls, runs of lseek(SEEK_DATA/SEEK_HOLE), and faulting in the
 * pages of fresh I/O buffers (which may wait for the kernel to compact memory). Each call is
 * synchronous here, so errno is read right after it, and the main thread's event loop keeps
 * running meanwhile. Owned by native.ts: nothing else posts to it.
 *
 * A descriptor number arrives with each task and is used only during that task: the caller
 * holds the file open until the answer is back (FileBackend counts its calls in flight).
 */
import { constants as osConstants } from "node:os";
import { loadKoffi } from "./koffi-loader.js";
import { serveTasks } from "./worker-pool.js";

export type NativeTask =
  | { op: "fallocate"; fd: number; mode: number; offset: number; length: number }
  | { op: "rangeIoctl"; fd: number; request: number; offset: number; length: number }
  | { op: "sparseMap"; fd: number; start: number; end: number; maxSeeks: number }
  /** The caller keeps the buffer at `address` referenced until the answer is back. */
  | { op: "populate"; address: bigint; length: number };

/** errno 0 when the call succeeded, else the failed call's errno and name. */
export interface NativeCallResult {
  errno: number;
  syscall: string;
}

/**
 * The data and holes found from `start`: flat triples (start, length, 1 for data / 0 for a
 * hole), the offset where the walk stopped (`end` when done), and the failure that stopped it.
 */
export interface SparseMapResult extends NativeCallResult {
  extents: number[];
  next: number;
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;

const koffi = loadKoffi();
const libc = koffi.load("libc.so.6");
const libcLseek = libc.func("int64_t lseek(int fd, int64_t offset, int whence)");
const libcFallocate = libc.func("int fallocate(int fd, int mode, int64_t offset, int64_t len)");
const libcIoctl = libc.func("int ioctl(int fd, unsigned long request, ...)");
const libcMadvise = libc.func("int madvise(uintptr_t addr, size_t length, int advice)");

/** madvise(2) advice, from linux/mman.h (Linux 5.14). */
const MADV_POPULATE_WRITE = 23;

function outcome(result: number | bigint, syscall: string): NativeCallResult {
  return { errno: Number(result) === -1 ? koffi.errno() : 0, syscall };
}

function rangeIoctl(fd: number, request: number, offset: number, length: number): NativeCallResult {
  const range = Buffer.alloc(16);
  range.writeBigUInt64LE(BigInt(offset), 0);
  range.writeBigUInt64LE(BigInt(length), 8);
  return outcome(libcIoctl(fd, request, "void *", range) as number, "ioctl");
}

/** lseek for sparse files: the offset, null at ENXIO (nothing more of that kind), or errno. */
function seek(fd: number, offset: number, whence: number): number | null | { errno: number } {
  const result = Number(libcLseek(fd, offset, whence));
  if (result !== -1) return result;
  const errno = koffi.errno();
  return errno === osConstants.errno.ENXIO ? null : { errno };
}

function sparseMap(fd: number, start: number, end: number, maxSeeks: number): SparseMapResult {
  const extents: number[] = [];
  let position = start;
  for (let seeks = 0; position < end && seeks < maxSeeks; seeks += 2) {
    const data = seek(fd, position, SEEK_DATA);
    if (typeof data === "object" && data !== null) {
      return { extents, next: position, errno: data.errno, syscall: "lseek(SEEK_DATA)" };
    }
    const dataStart = Math.min(data ?? end, end);
    if (dataStart > position) extents.push(position, dataStart - position, 0);
    if (dataStart >= end) return { extents, next: end, errno: 0, syscall: "lseek" };
    const hole = seek(fd, dataStart, SEEK_HOLE);
    if (typeof hole === "object" && hole !== null) {
      return { extents, next: dataStart, errno: hole.errno, syscall: "lseek(SEEK_HOLE)" };
    }
    const dataEnd = Math.min(hole ?? end, end);
    extents.push(dataStart, dataEnd - dataStart, 1);
    position = dataEnd;
  }
  return { extents, next: position, errno: 0, syscall: "lseek" };
}

serveTasks((task: NativeTask) => {
  switch (task.op) {
    case "fallocate":
      return { value: outcome(libcFallocate(task.fd, task.mode, task.offset, task.length) as number, "fallocate") };
    case "rangeIoctl":
      return { value: rangeIoctl(task.fd, task.request, task.offset, task.length) };
    case "sparseMap":
      return { value: sparseMap(task.fd, task.start, task.end, task.maxSeeks) };
    case "populate":
      return { value: outcome(libcMadvise(task.address, task.length, MADV_POPULATE_WRITE) as number, "madvise") };
  }
});
