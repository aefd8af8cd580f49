from feast import Entity, ValueType

task = Entity(
    name="task",
    join_keys=["task_id"],
    value_type=ValueType.STRING,
    description="A laundry task: one washed-linen photo judged by the AI and confirmed by a branch manager.",
)

member = Entity(
    name="member",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A member or helper who enters by face.",
)
