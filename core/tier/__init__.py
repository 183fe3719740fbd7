"""The Redis wing: the shared tier, its breaker, leases, notifier, generations and scripts."""
