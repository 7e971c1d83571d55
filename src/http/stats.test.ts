import { describe, expect, it } from "vitest";
import { ConnectionStats, operationName } from "./stats.js";

describe("connection statistics", () => {
  it("13: CLOSE fields count requests, time, bytes and rate per operation", () => {
    let now = 1000;
    const stats = new ConnectionStats(() => now);
    stats.record("write", 1.5, 1024 ** 3, false);
    stats.record("write", 0.5, 1024 ** 3, false);
    stats.record("flush", 0.0204, 0, false);
    stats.record("read", 0.001, 0, true);
    now += 2521.5;
    expect(stats.fields()).toEqual({
      seconds: "2.522",
      requests: 4,
      errors: 1,
      write: "2 ops, 2.000 s, 2.00 GiB, 1.00 GiB/s",
      flush: "1 ops, 0.020 s",
      read: "1 ops, 0.001 s",
    });
  });

  it("review 17: a rate below 1 KiB/s is whole bytes per second", () => {
    const stats = new ConnectionStats(() => 0);
    stats.record("read", 0.039_899, 4, false);
    expect(stats.fields().read).toBe("1 ops, 0.040 s, 4 bytes, 100 bytes/s");
  });

  it("13: operations are named by method and route", () => {
    expect(operationName("PUT", "/images/{id}")).toBe("write");
    expect(operationName("DELETE", "/tickets/{id}")).toBe("remove");
    expect(operationName("POST", "/images/{id}")).toBe("invalid");
    expect(operationName("GET", undefined)).toBe("invalid");
  });
});
