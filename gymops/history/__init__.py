"""The training history: Feast's stores for this tier (tables, idempotent offline stores, opening
and applying the feature store) and the point-in-time readers the pipeline trains from."""
