"""The embedded default: a redis-server of our own and the file a running fleet leaves."""
