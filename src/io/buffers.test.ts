import { describe, expect, it } from "vitest";
import { isZero, zeroBuffer } from "./buffers.js";

describe("isZero", () => {
  it("finds a single non-zero byte anywhere", () => {
    const buf = Buffer.alloc(200_000);
    expect(isZero(buf)).toBe(true);
    for (const at of [0, 65_535, 65_536, 199_999]) {
      buf[at] = 1;
      expect(isZero(buf)).toBe(false);
      buf[at] = 0;
    }
    expect(isZero(Buffer.alloc(0))).toBe(true);
    expect(isZero(zeroBuffer())).toBe(true);
  });
});
