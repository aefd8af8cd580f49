import dagster as dg


def build_face_nightly_schedule(face_nightly_job) -> dg.ScheduleDefinition:
    """03:00 gym time, for the gym day that just ended (the job's partitions are gym days)."""
    return dg.build_schedule_from_partitioned_job(
        face_nightly_job, hour_of_day=3, minute_of_hour=0, name="face_nightly_schedule",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
