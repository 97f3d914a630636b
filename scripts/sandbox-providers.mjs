// Stand-in providers for `bash scripts/dev.sh --sandbox`: the same fake servers the
// end-to-end tests use, answering with the providers' real shapes, on a free loopback
// port. Prints one line of JSON, the base-URL vars that point the vault at them, then
// serves until it is stopped (SIGTERM or SIGINT).
//
// What a key does is in its name, for every provider: sk_valid_… works, sk_invalid_… is
// refused, sk_longwait_… is rate limited for a minute, sk_quota_… has no quota left.
import { startFakeProviders } from '../tests/e2e/fake-providers.mjs';

const fake = await startFakeProviders();
process.stdout.write(`${JSON.stringify(fake.vars())}\n`);
const stop = async () => {
  await fake.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
