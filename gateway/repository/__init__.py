"""The canonical model repository on disk: reading and validating its models."""
