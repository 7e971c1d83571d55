/** Byte units (powers of two, as the spec uses them) and their parsing and printing. */
import { InvalidArgumentError } from "./errors.js";

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

const suffixes: Record<string, number> = {
  "": 1,
  b: 1,
  k: KiB,
  kib: KiB,
  m: MiB,
  mib: MiB,
  g: GiB,
  gib: GiB,
  t: TiB,
  tib: TiB,
};

/**
 * Parses a size such as `4096`, `8M`, `8MiB` or `1g` (powers of two) into bytes.
 * @throws InvalidArgumentError for anything else, or a size beyond 2^53 - 1.
 */
export function parseSize(text: string): number {
  const match = /^\s*(\d+)\s*([a-z]*)\s*$/i.exec(text);
  const multiplier = match ? suffixes[(match[2] ?? "").toLowerCase()] : undefined;
  if (!match || multiplier === undefined) {
    throw new InvalidArgumentError(`Invalid size: '${text}' (expected bytes, or a number with K, M, G or T)`);
  }
  const bytes = Number(match[1]) * multiplier;
  if (!Number.isSafeInteger(bytes)) throw new InvalidArgumentError(`Size too large: '${text}'`);
  return bytes;
}

/** Formats bytes for people: `1.50 GiB`, `512 bytes`. */
export function formatSize(bytes: number): string {
  const units: [number, string][] = [
    [TiB, "TiB"],
    [GiB, "GiB"],
    [MiB, "MiB"],
    [KiB, "KiB"],
  ];
  for (const [size, name] of units) {
    if (Math.abs(bytes) >= size) return `${(bytes / size).toFixed(2)} ${name}`;
  }
  return `${bytes} bytes`;
}
