import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration tests start real processes and bind loopback ports; the machine has 2 cores.
    fileParallelism: true,
    maxWorkers: 2,
    reporters: ['default'],
  },
});
