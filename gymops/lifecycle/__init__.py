"""A model version's life between training and serving: the registry's state machine, the outbox
of model events, the verification gates (and their sandbox) and the retraining policy."""
