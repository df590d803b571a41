"""System shared memory for clients on the gateway's host."""
