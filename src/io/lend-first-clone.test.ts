import { describe, expect, it, vi } from "vitest";
import { lendFirstClone } from "./lend-first-clone.js";
import { MemoryBackend } from "./memory.js";

describe("lendFirstClone", () => {
  it("11.9: N clones cost N - 1 new handles; the lent one gives the first handle back on close", async () => {
    const inner = MemoryBackend.create({ readonly: false });
    const cloned = vi.spyOn(inner, "clone");
    const closed = vi.spyOn(inner, "close");
    const lender = lendFirstClone(inner);
    const handles = await Promise.all([lender.clone(), lender.clone(), lender.clone()]);
    expect(cloned).toHaveBeenCalledTimes(2);

    // The lent handle reads and writes the lender's image; closing it keeps the lender open.
    const [lent] = handles;
    await lent?.write(Buffer.from("lent"), 100);
    const check = Buffer.alloc(4);
    await lender.read(check, 100);
    expect(check.toString()).toBe("lent");
    await Promise.all(handles.map((handle) => handle.close()));
    expect(closed).not.toHaveBeenCalled();
    await lender.read(check, 100);

    // Given back, it is lent again rather than cloned.
    await (await lender.clone()).close();
    expect(cloned).toHaveBeenCalledTimes(2);
    await lender.close();
    expect(closed).toHaveBeenCalledTimes(1);
  });
});
