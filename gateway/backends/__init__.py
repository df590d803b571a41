"""Where requests run: Triton servers reached over gRPC."""
