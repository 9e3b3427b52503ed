"""What the worker keeps on disk: durable file replacement, the checkpoint, the lock."""
