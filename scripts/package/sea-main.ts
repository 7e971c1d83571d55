/**
 * Entry point of the single executable (scripts/package/build-sea.mjs bundles from here): what
 * bin/imageio does for dist/, without the dynamic import of a file that is not there.
 */
import { main } from "../../src/cli.js";

main(process.argv).catch((error: unknown) => {
  process.stderr.write(`imageio: ${error instanceof Error && error.stack ? error.stack : String(error)}\n`);
  process.exit(1);
});
