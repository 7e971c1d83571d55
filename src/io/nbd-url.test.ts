import { describe, expect, it } from "vitest";
import { describeAddress, parseNbdUrl } from "./nbd-url.js";

describe("NBD URLs", () => {
  it("11.1: nbd:unix: with and without an export name, as Vdsm writes them", () => {
    expect(parseNbdUrl("nbd:unix:/run/vdsm/nbd/1f2e.sock")).toEqual({
      address: { path: "/run/vdsm/nbd/1f2e.sock" },
      exportName: "",
    });
    expect(parseNbdUrl("nbd:unix:/run/x.sock:exportname=sda")).toEqual({
      address: { path: "/run/x.sock" },
      exportName: "sda",
    });
    expect(parseNbdUrl("nbd:unix:/run/x.sock:exportname=")).toEqual({
      address: { path: "/run/x.sock" },
      exportName: "",
    });
  });

  it("11.1: nbd:HOST:PORT and nbd://HOST:PORT/NAME, IPv6 included", () => {
    expect(parseNbdUrl("nbd:localhost:10809")).toEqual({ address: { host: "localhost", port: 10809 }, exportName: "" });
    expect(parseNbdUrl("nbd:10.0.0.1:2000:exportname=disk 1")).toEqual({
      address: { host: "10.0.0.1", port: 2000 },
      exportName: "disk 1",
    });
    expect(parseNbdUrl("nbd:[::1]:10809:exportname=x")).toEqual({
      address: { host: "::1", port: 10809 },
      exportName: "x",
    });
    expect(parseNbdUrl("nbd://example.com:3000/sda")).toEqual({
      address: { host: "example.com", port: 3000 },
      exportName: "sda",
    });
    expect(parseNbdUrl("nbd://[::1]/a%20b")).toEqual({ address: { host: "::1", port: 10809 }, exportName: "a b" });
    expect(describeAddress({ host: "::1", port: 1 })).toBe("[::1]:1");
    expect(describeAddress({ path: "/s" })).toBe("unix:/s");
  });

  it("11.1: nbds and malformed URLs are refused with a message naming the URL", () => {
    const refused = (url: string) => {
      try {
        parseNbdUrl(url);
      } catch (error) {
        return error as Error & { code: string };
      }
      throw new Error(`accepted ${url}`);
    };
    expect(refused("nbds:unix:/x.sock").message).toContain("TLS is not supported");
    expect(refused("nbds://host/x").message).toContain("TLS is not supported");
    expect(refused("nbds+unix:///x?socket=/s").message).toContain("TLS is not supported");
    for (const url of [
      "nbd:unix:relative.sock",
      "nbd:unix:/dir/",
      "nbd:host",
      "nbd:host:0",
      "nbd:host:70000",
      "nbd:host:port",
      "nbd://host:1/x?y=1",
      "nbd://user@host/x",
      "nbd://host/%zz",
      "file:///x",
    ]) {
      const error = refused(url);
      expect(error.code).toBe("IMAGEIO_ERR_UNSUPPORTED_URL");
      expect(error.message).toContain(url);
    }
  });
});
