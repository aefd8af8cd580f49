"""Dagster sensors and schedules: correction counts (laundry retraining) and the nightly face batch."""
