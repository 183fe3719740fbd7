"""In-process cache levels (live objects, then bytes) and the memory budget they share."""
