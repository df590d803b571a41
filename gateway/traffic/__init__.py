"""Traffic routes: the admin state (splits, sticky keys, shadow), its store, and its edge form."""
