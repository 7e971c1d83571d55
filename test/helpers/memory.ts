/**
 * What the kernel says of a buffer's memory, read from /proc/self as any tool would: whether
 * its pages are resident, and whether its mapping may use transparent huge pages.
 */
import { readFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { bufferAddress } from "../../src/io/native.js";
import { nativeThreads } from "../../src/io/native-threads.js";

const PAGE = 4096;

/** How many of the buffer's whole pages are resident now (the present bit of /proc/self/pagemap). */
export async function residentPageCount(buf: Buffer): Promise<number> {
  const first = bufferAddress(buf) / BigInt(PAGE);
  const pages = Math.floor(buf.length / PAGE);
  const entries = Buffer.alloc(pages * 8);
  const pagemap = await open("/proc/self/pagemap", "r");
  try {
    await pagemap.read(entries, 0, entries.length, Number(first * 8n));
  } finally {
    await pagemap.close();
  }
  let present = 0;
  for (let at = 0; at < entries.length; at += 8) if (entries.readBigUInt64LE(at) >> 63n === 1n) present++;
  return present;
}

/**
 * The host's transparent huge page mode ("always", "madvise" or "never"), or undefined on a
 * kernel without THP.
 */
export function transparentHugePageMode(): string | undefined {
  try {
    return /\[(\w+)\]/.exec(readFileSync("/sys/kernel/mm/transparent_hugepage/enabled", "utf8"))?.[1];
  } catch {
    return undefined;
  }
}

/** The `THPeligible` flag of the mapping that holds the buffer's first byte (/proc/self/smaps). */
export function hugePageEligible(buf: Buffer): boolean {
  const address = bufferAddress(buf);
  let inside = false;
  for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (range !== null) {
      inside = BigInt(`0x${range[1]}`) <= address && address < BigInt(`0x${range[2]}`);
    } else if (inside && line.startsWith("THPeligible:")) {
      return line.trim().endsWith("1");
    }
  }
  return false;
}

/**
 * Waits until a native thread is up: buffers are faulted in ahead of use only then (while
 * none is, one is started and the pages fault in on first use).
 */
export async function nativeThreadReady(): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (nativeThreads.readyThreads === 0) {
    if (Date.now() > deadline) throw new Error("no native thread came up within 10 s");
    nativeThreads.warm();
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
