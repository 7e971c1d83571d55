/**
 * The only module that talks to libc through koffi. It supplies what Node's fs lacks for
 * direct I/O: page-aligned memory, fallocate, SEEK_DATA/SEEK_HOLE and block-device ioctls.
 *
 * Every call is synchronous so that errno can be read immediately after it (koffi's
 * asynchronous calls run on another thread and lose errno). Those that can take long run so
 * on a worker thread this module owns (native-worker.ts), never on the main thread. Failures
 * become Node-style errors with `code`, `errno` and `syscall`, like the ones fs throws.
 */
import { constants as osConstants } from "node:os";
import { loadKoffi } from "./koffi-loader.js";
import { nativeThreads } from "./native-threads.js";
import type { NativeCallResult, SparseMapResult } from "./native-worker.js";

// The installed package, or the addon embedded in the single executable (see koffi-loader.ts).
const koffi = loadKoffi();

const libc = koffi.load("libc.so.6");

const libcIoctl = libc.func("int ioctl(int fd, unsigned long request, ...)");
const libcStrerror = libc.func("const char *strerror(int errnum)");
const libcSocket = libc.func("int socket(int domain, int type, int protocol)");
const libcSendto = libc.func(
  "intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)",
);
const libcClose = libc.func("int close(int fd)");
const libcFcntl = libc.func("int fcntl(int fd, int cmd, int arg)");
const libcBind = libc.func("int bind(int fd, const void *addr, uint32_t addrlen)");
const libcConnect = libc.func("int connect(int fd, const void *addr, uint32_t addrlen)");
const libcGetrlimit = libc.func("int getrlimit(int resource, _Out_ void *rlim)");
const libcMadvise = libc.func("int madvise(void *addr, size_t length, int advice)");
const libcMallopt = libc.func("int mallopt(int param, int value)");
const libcLseek = libc.func("int64_t lseek(int fd, int64_t offset, int whence)");

/** lseek(2) whence, from linux/fs.h. */
const SEEK_DATA = 3;

/** fallocate(2) mode bits, from linux/falloc.h. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** Block-device ioctls, from linux/fs.h (x86_64 and aarch64 encodings). */
const BLKSSZGET = 0x1268; // _IO(0x12, 104): logical sector size, int
const BLKGETSIZE64 = 0x80081272; // _IOR(0x12, 114, size_t): size in bytes
const BLKDISCARD = 0x1277; // _IO(0x12, 119): uint64_t range[2]
const BLKZEROOUT = 0x127f; // _IO(0x12, 127): uint64_t range[2]

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));
// 11 has two names; Node's own errors say EAGAIN.
errnoNames.set(osConstants.errno.EAGAIN, "EAGAIN");

/** A failed system call, shaped like the errors Node's fs throws. */
export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

/** Builds a Node-style error for a failed call; `errno` is the positive errno value. */
export function systemError(syscall: string, errno: number, path?: string): SystemError {
  const code = errnoNames.get(errno) ?? `E${errno}`;
  const reason = libcStrerror(errno) as string;
  const where = path === undefined ? "" : ` '${path}'`;
  const error = new Error(`${code}: ${reason.toLowerCase()}, ${syscall}${where}`) as SystemError;
  error.code = code;
  error.errno = -errno;
  error.syscall = syscall;
  if (path !== undefined) error.path = path;
  return error;
}

/** The version of the koffi addon in use (for `imageio version --verbose`). */
export function koffiVersion(): string {
  return String((koffi as { version?: unknown }).version ?? "unknown");
}

function check(result: number | bigint, syscall: string): void {
  if (Number(result) === -1) throw systemError(syscall, koffi.errno());
}

/**
 * The size of a transparent huge page: the unit the kernel maps with one page-table entry
 * (2 MiB on x86-64 and on aarch64 with 4 KiB pages).
 */
export const HUGE_PAGE_SIZE = 2 * 1024 * 1024;
const MADV_HUGEPAGE = 14;

/**
 * Allocates `size` bytes whose address is a multiple of `alignment` (a power of two), for
 * O_DIRECT. The memory is V8's own (an aligned slice of a slightly larger unpooled Buffer), so
 * V8 accounts for it and frees it like any Buffer; native memory freed only by a finalizer
 * would stay resident long after its last use.
 *
 * A buffer of a huge page or more starts on a huge-page boundary and asks the kernel for
 * transparent huge pages (madvise MADV_HUGEPAGE, honoured where the host's THP mode is
 * `madvise` or `always`). Measured on a 2-core VM with 8 MiB buffers: O_DIRECT reads into them
 * went from about 1000 to 1900 MiB/s (a request spans 2 MiB pages, not 4 KiB ones), and
 * the kernel's and OpenSSL's copies in and out of them cost about 20 % less CPU (fewer TLB
 * misses). Only address space is spent on the wider alignment: the pages outside the
 * buffer are never touched. A kernel without THP refuses the advice; the buffer then keeps
 * ordinary pages.
 * @throws RangeError for a size that is not a positive safe integer.
 */
export function allocAligned(size: number, alignment = 4096): Buffer {
  if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`Invalid aligned buffer size: ${size}`);
  const huge = size >= HUGE_PAGE_SIZE;
  const boundary = huge ? Math.max(alignment, HUGE_PAGE_SIZE) : alignment;
  const backing = Buffer.allocUnsafeSlow(size + boundary);
  const skew = Number(bufferAddress(backing) % BigInt(boundary));
  const start = skew === 0 ? 0 : boundary - skew;
  const buffer = backing.subarray(start, start + size);
  // Best effort: EINVAL from a kernel built without THP leaves ordinary pages.
  if (huge) libcMadvise(buffer, size - (size % HUGE_PAGE_SIZE), MADV_HUGEPAGE);
  return buffer;
}

const PAGE_SIZE = 4096;

/** Bytes of `buf` in whole pages, which madvise can act on; 0 when `buf` does not start on a page. */
function wholePagesOf(buf: Buffer): number {
  return isAligned(buf, PAGE_SIZE) ? buf.length - (buf.length % PAGE_SIZE) : 0;
}

/**
 * Makes the pages of a page-aligned buffer resident (madvise MADV_POPULATE_WRITE) on a native
 * thread, before anyone writes into it. A huge page faulted in by a first write may make the
 * kernel compact memory first, which can take milliseconds: done here, that wait is never on
 * the event loop (an upload's first bytes would otherwise fault the pages in from a socket
 * read). `buf` must stay referenced until the promise settles. Best effort: a kernel without
 * MADV_POPULATE_WRITE (before 5.14) or short of memory leaves the pages to fault in on first
 * use, as any memory does.
 *
 * Never behind a zeroing or fallocate, which blocks for as long as its device does (seconds, or
 * for ever on a dead path): the caller would wait with it. Behind other populates only.
 * The populate call changes no byte, so a writer racing it loses nothing.
 * While no native thread is up, it starts one and returns at once.
 * @returns whether the pages were faulted in (false: they fault in on first use).
 */
export async function populatePages(buf: Buffer): Promise<boolean> {
  const length = wholePagesOf(buf);
  if (length === 0) return false;
  if (nativeThreads.readyThreads === 0) {
    // No thread is up (they end after a few idle seconds): booting one takes about 40 ms, more
    // than the faults it would move off this thread. Start it for the buffers that follow.
    nativeThreads.warm();
    return false;
  }
  const populating = nativeThreads.runUnlessBlocked(
    { op: "populate", address: bufferAddress(buf), length },
    (other) => other.op === "populate",
  );
  if (populating === undefined) return false;
  return (await populating).errno === 0;
}

const MADV_DONTNEED = 4;

/**
 * Gives the memory of an idle page-aligned buffer back to the kernel (madvise MADV_DONTNEED)
 * while the buffer stays valid: it leaves the resident set at once, without waiting for V8 to
 * collect anything, and reads as zeros until written again. Only whole pages inside `buf` are
 * given back, so no neighbouring memory is touched; an unaligned buffer is left as it is.
 * About 0.1 ms per MiB: callers give back one buffer per turn of the event loop.
 * @throws SystemError when the kernel refuses.
 */
export function releasePages(buf: Buffer): void {
  const length = wholePagesOf(buf);
  if (length === 0) return;
  check(libcMadvise(buf, length, MADV_DONTNEED) as number, "madvise");
}

/** mallopt(3) parameters, from malloc.h. */
const M_TRIM_THRESHOLD = -1;
const M_TOP_PAD = -2;

/** Free memory at the top of the heap kept for reuse instead of being given back at once. */
export const HEAP_TRIM_THRESHOLD = 64 * 1024 * 1024;
/** Extra memory asked of the kernel whenever the heap grows, and kept when it shrinks. */
export const HEAP_TOP_PAD = 16 * 1024 * 1024;

/** The environment variables through which glibc lets an administrator set the same. */
const HEAP_TUNING_VARIABLES = ["MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"];

/**
 * Keeps freed heap memory for reuse (mallopt M_TRIM_THRESHOLD and M_TOP_PAD). A transfer
 * allocates a read buffer (64 KiB) and an HTTP body chunk for every read of its socket, and
 * frees them in batches when V8 collects: with glibc's defaults each batch shrinks the heap
 * and the next reads fault the same pages in again, ten times the page faults
 * and up to a fifth of the CPU of an upload over the local socket (measured on Node 20).
 * The memory kept is bounded by the thresholds, not by the transfers.
 * @returns "environment" when the administrator set one of glibc's MALLOC_* variables (they
 *   win, nothing is changed), else "applied".
 * @throws SystemError when glibc refuses a parameter.
 */
export function keepFreedHeapMemory(env: NodeJS.ProcessEnv = process.env): "applied" | "environment" {
  if (HEAP_TUNING_VARIABLES.some((name) => env[name] !== undefined)) return "environment";
  // mallopt returns 1 on success and 0 on error, without setting errno.
  if ((libcMallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD) as number) !== 1)
    throw systemError("mallopt(M_TRIM_THRESHOLD)", osConstants.errno.EINVAL);
  if ((libcMallopt(M_TOP_PAD, HEAP_TOP_PAD) as number) !== 1)
    throw systemError("mallopt(M_TOP_PAD)", osConstants.errno.EINVAL);
  return "applied";
}

/**
 * True when `buf`'s first byte lies at an address that is a multiple of `alignment` (a power
 * of two), so it can be handed to an O_DIRECT read or write as it is.
 */
export function isAligned(buf: Buffer, alignment: number): boolean {
  if (buf.length === 0) return true;
  return bufferAddress(buf) % BigInt(alignment) === 0n;
}

/** The address of a buffer's first byte: lets tests and diagnostics verify alignment. */
export function bufferAddress(buf: Buffer): bigint {
  return koffi.address(buf) as bigint;
}

/**
 * fallocate(2), run on a native worker thread (it may write the zeros itself for seconds).
 * `fd` must stay open until the promise settles: the caller holds its handle for the call.
 * @throws SystemError (EOPNOTSUPP when the filesystem or device lacks `mode`).
 */
export async function fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
  checkOutcome(await nativeThreads.run({ op: "fallocate", fd, mode, offset, length }));
}

/** Data and holes of a file from `start`, as found by one bounded run of lseek calls. */
export interface SparseMap {
  extents: { start: number; length: number; data: boolean }[];
  /** Where the next run starts; `end` when the range is mapped. */
  next: number;
}

/**
 * Maps data and holes of `[start, end)` with lseek(SEEK_DATA/SEEK_HOLE) on a native worker
 * thread, stopping after `maxSeeks` calls so that a fragmented file is walked in runs (the
 * caller holds `fd` open for each run only). A failure after some extents keeps them: the
 * next run starts where it failed and throws.
 * @throws SystemError (EINVAL or EOPNOTSUPP where the filesystem cannot tell).
 */
export async function sparseMap(fd: number, start: number, end: number, maxSeeks: number): Promise<SparseMap> {
  const result = (await nativeThreads.run({ op: "sparseMap", fd, start, end, maxSeeks })) as SparseMapResult;
  const extents: SparseMap["extents"] = [];
  for (let at = 0; at + 2 < result.extents.length; at += 3) {
    extents.push({
      start: result.extents[at] as number,
      length: result.extents[at + 1] as number,
      data: result.extents[at + 2] === 1,
    });
  }
  if (extents.length === 0) checkOutcome(result);
  return { extents, next: result.next };
}

/**
 * True when the regular file `fd` holds no data from `offset` to its end: one
 * lseek(SEEK_DATA) answers ENXIO. It runs on the calling thread, so callers ask it only of a
 * file the kernel reports without allocated blocks (st_blocks 0), where the filesystem
 * answers from the inode: an empty image's copy then needs no native thread at all. The
 * answer alone is trusted, never st_blocks: some filesystems (FUSE ones, inline data) report
 * 0 blocks for files that hold data.
 * @returns false when data follows, and when the call fails (a filesystem without
 *   SEEK_DATA): callers then map the file on a native thread, which reports real failures.
 */
export function noDataFrom(fd: number, offset: number): boolean {
  if (Number(libcLseek(fd, offset, SEEK_DATA)) !== -1) return false;
  return koffi.errno() === osConstants.errno.ENXIO;
}

/** Size of a block device in bytes (BLKGETSIZE64); fstat reports 0 for devices. */
export function blockDeviceSize(fd: number): number {
  const out = Buffer.alloc(8);
  check(libcIoctl(fd, BLKGETSIZE64, "void *", out) as number, "ioctl(BLKGETSIZE64)");
  return Number(out.readBigUInt64LE());
}

/** Logical sector size of a block device (BLKSSZGET): the alignment O_DIRECT needs. */
export function blockDeviceSectorSize(fd: number): number {
  const out = Buffer.alloc(4);
  check(libcIoctl(fd, BLKSSZGET, "void *", out) as number, "ioctl(BLKSSZGET)");
  return out.readInt32LE();
}

/**
 * Zeroes a byte range of a block device (BLKZEROOUT) on a native worker thread: without
 * write-zeroes offload the kernel writes the zeros, about 5 s per GiB at 200 MB/s. Offset and
 * length must be sector aligned; `fd` must stay open until the promise settles.
 */
export async function blockDeviceZeroOut(fd: number, offset: number, length: number): Promise<void> {
  checkOutcome(await nativeThreads.run({ op: "rangeIoctl", fd, request: BLKZEROOUT, offset, length }), "BLKZEROOUT");
}

/** Discards a byte range of a block device (BLKDISCARD) on a native worker thread. */
export async function blockDeviceDiscard(fd: number, offset: number, length: number): Promise<void> {
  checkOutcome(await nativeThreads.run({ op: "rangeIoctl", fd, request: BLKDISCARD, offset, length }), "BLKDISCARD");
}

/** Throws the SystemError a worker's call reported; `request` names an ioctl. */
function checkOutcome(result: NativeCallResult, request?: string): void {
  if (result.errno !== 0) throw systemError(request ? `${result.syscall}(${request})` : result.syscall, result.errno);
}

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SUN_PATH_MAX = 108;
const RLIMIT_NOFILE = 7;

/**
 * A sockaddr_un for `socketPath` (abstract when it starts with "@" or NUL) and its exact
 * length. Abstract names count every byte of the address, so the length must be the name's
 * own: Node pads them to 108 bytes, which no other client (Python, curl) can reach.
 */
function unixAddress(socketPath: string, syscall: string): { address: Buffer; length: number } {
  const abstract = socketPath.startsWith("@") || socketPath.startsWith("\0");
  const pathBytes = Buffer.from(abstract ? `\0${socketPath.slice(1)}` : socketPath, "utf8");
  if (pathBytes.length >= SUN_PATH_MAX) throw systemError(syscall, osConstants.errno.ENAMETOOLONG, shown(socketPath));
  const address = Buffer.alloc(2 + SUN_PATH_MAX);
  address.writeUInt16LE(AF_UNIX, 0);
  pathBytes.copy(address, 2);
  return { address, length: 2 + pathBytes.length + (abstract ? 0 : 1) };
}

/**
 * Sends one datagram to a unix socket (path, or abstract when it starts with "@" or NUL).
 * Node's dgram module has no unix datagram sockets; systemd's sd_notify protocol needs one.
 * @throws SystemError when the socket cannot be created or the message not sent.
 */
export function sendUnixDatagram(socketPath: string, message: string): void {
  const { address, length } = unixAddress(socketPath, "sendto");
  const fd = libcSocket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
  if (fd === -1) throw systemError("socket", koffi.errno());
  try {
    const data = Buffer.from(message, "utf8");
    const sent = Number(libcSendto(fd, data, data.length, 0, address, length));
    if (sent === -1) throw systemError("sendto", koffi.errno(), socketPath);
  } finally {
    libcClose(fd);
  }
}

/** A socket path as messages show it: an abstract name as "@name", never with its NUL. */
function shown(socketPath: string): string {
  return socketPath.startsWith("\0") ? `@${socketPath.slice(1)}` : socketPath;
}

/** A new non-blocking, close-on-exec unix stream socket. @throws SystemError. */
function unixStreamSocket(): number {
  const fd = libcSocket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
  if (fd === -1) throw systemError("socket", koffi.errno());
  return fd;
}

/**
 * A unix stream socket bound to `socketPath` with the address's exact length (see
 * unixAddress), not yet listening. The caller owns the descriptor: hand it to
 * `server.listen({ fd })`, which listens and closes it with the server.
 * @throws SystemError (EADDRINUSE, EACCES…) when it cannot be bound.
 */
export function bindUnixStream(socketPath: string): number {
  const { address, length } = unixAddress(socketPath, "bind");
  const fd = unixStreamSocket();
  if ((libcBind(fd, address, length) as number) === -1) {
    const errno = koffi.errno();
    libcClose(fd);
    throw systemError("bind", errno, shown(socketPath));
  }
  return fd;
}

/**
 * A unix stream socket connected to `socketPath` with the address's exact length. A unix
 * connect completes at once or fails (EAGAIN when the listener's backlog is full), so this
 * never blocks. The caller owns the descriptor: hand it to `new net.Socket({ fd })`.
 * @throws SystemError (ECONNREFUSED, ENOENT, EAGAIN…) when it cannot connect.
 */
export function connectUnixStream(socketPath: string): number {
  const { address, length } = unixAddress(socketPath, "connect");
  const fd = unixStreamSocket();
  if ((libcConnect(fd, address, length) as number) === -1) {
    const errno = koffi.errno();
    libcClose(fd);
    throw systemError("connect", errno, shown(socketPath));
  }
  return fd;
}

/** fcntl(2) command: the lowest free descriptor >= arg, sharing the open socket, close-on-exec. */
const F_DUPFD_CLOEXEC = 1030;

/**
 * A second descriptor for the open file or socket behind `fd` (close-on-exec, so a child
 * process never inherits it). Accepted sockets cross to data-plane threads this way: the
 * accepting thread then closes its own descriptor, and the connection lives on in the copy.
 * The caller owns the copy and must close it (`fs.closeSync`) if nobody adopts it.
 * @throws SystemError (EMFILE when the descriptor limit is reached, EBADF).
 */
export function duplicateDescriptor(fd: number): number {
  const copy = libcFcntl(fd, F_DUPFD_CLOEXEC, 0) as number;
  check(copy, "fcntl");
  return copy;
}

/** The soft limit on open descriptors (RLIMIT_NOFILE; Node raises it to the hard limit at start). */
export function openFileLimit(): number {
  const limits = Buffer.alloc(16);
  check(libcGetrlimit(RLIMIT_NOFILE, limits) as number, "getrlimit");
  const soft = limits.readBigUInt64LE(0);
  return soft > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(soft);
}
