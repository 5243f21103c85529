"""cv-gateway: an S3-compatible object storage service for a cluster of servers."""

__version__ = "0.1.0"
