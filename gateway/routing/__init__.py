"""Which backends may serve a (model name, model version): immutable snapshots and lookups."""
