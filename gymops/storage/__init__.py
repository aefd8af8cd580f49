"""The photo store (local folder or S3-compatible) and the S3 server the services profile runs."""
