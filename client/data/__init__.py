"""A node's data: JSONL records to training texts, and the synthetic institutions of the demo."""
