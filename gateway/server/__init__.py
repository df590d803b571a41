"""The gRPC face of the gateway: servicers, the error interceptor, server assembly."""
