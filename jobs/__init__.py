"""Queue mode: S3 buckets and SQS queues between a web tier and workers that classify (see docs/queue-mode.md)."""
