"""Ingestion: the event contract, the replicator (validate, de-duplicate, push into Feast), its
three paths (RabbitMQ consumer, HTTP endpoint, JSONL) and the dead-letter store."""
