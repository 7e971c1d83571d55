/**
 * Subcommands whose issue has not landed yet: they fail clearly instead of pretending.
 * Each is replaced by its real module when its issue is done.
 */
export function notAvailableYet(name: string): () => never {
  return () => {
    process.stderr.write(`imageio ${name}: not available yet in this version\n`);
    process.exit(2);
  };
}
