"""Keys and codecs: canonical cache keys, the Redis key layout, value envelopes and codecs."""
