"""Dagster sensors and schedules (correction counts, nightly face batch): see the training issue."""
