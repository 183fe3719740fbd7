"""The heart: the multi-level cache, memoized functions, freshness and fleet coordination."""
