"""`make demo`: the replication part, then the whole loop."""
