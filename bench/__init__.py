"""holdmount's benchmark harness: `bench/run [--quick]` (see bench/README.md)."""
