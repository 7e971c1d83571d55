/**
 * A test certificate authority and a server certificate for localhost/127.0.0.1, made once
 * per test process with openssl.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface TestCerts {
  dir: string;
  caFile: string;
  keyFile: string;
  certFile: string;
}

let certs: Promise<TestCerts> | undefined;

export function testCerts(): Promise<TestCerts> {
  certs ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), "imageio-certs-"));
    const file = (name: string) => join(dir, name);
    const openssl = (...args: string[]) => run("openssl", args);
    await openssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      file("ca.key"),
      "-out",
      file("ca.pem"),
      "-days",
      "2",
      "-subj",
      "/CN=imageio test CA",
    );
    await openssl(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      file("server.key"),
      "-out",
      file("server.csr"),
      "-subj",
      "/CN=localhost",
    );
    await writeFile(file("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n");
    await openssl(
      "x509",
      "-req",
      "-in",
      file("server.csr"),
      "-CA",
      file("ca.pem"),
      "-CAkey",
      file("ca.key"),
      "-CAcreateserial",
      "-out",
      file("server.pem"),
      "-days",
      "2",
      "-extfile",
      file("ext.cnf"),
    );
    if (!existsSync(file("server.pem"))) throw new Error("openssl did not create the server certificate");
    return { dir, caFile: file("ca.pem"), keyFile: file("server.key"), certFile: file("server.pem") };
  })();
  return certs;
}
