"""Serving path: router, shadow scoring and parity, serving logs and metric ingestion batches."""
