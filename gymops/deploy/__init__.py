"""Putting a registered version into Triton and taking it out again: deploy, rollback, reconcile."""
