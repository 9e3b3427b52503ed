"""What the worker reports: structured logs, the telemetry port, metrics over HTTP, the progress
line."""
