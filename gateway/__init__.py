"""Triton Gateway: model-aware gRPC routing in front of a fleet of Triton Inference Servers."""

__version__ = "0.1.0"
