"""Where the backend list comes from: static configuration now, DNS and Consul later."""
