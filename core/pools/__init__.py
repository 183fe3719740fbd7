"""Optional infrastructure: bounded pools of connections and reusable objects."""
