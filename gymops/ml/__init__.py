"""The laundry model's plain-Python ML core (no Dagster): preprocessing, augmentation, datasets,
backbones, head training, ONNX export, evaluation and the pictures of it (``plots``).

Stages, in order: ``dataset.fetch_photos`` -> ``dataset.Holdout.freeze_or_load(...).grow(...)`` (a
new holdout version from the newly confirmed tasks) -> ``dataset.build_dataset`` -> ``train.train``
-> ``export.export_onnx`` -> ``evaluate.evaluate_onnx`` / ``evaluate.judge_on_holdout`` (against the
active model, paired, on the current holdout version).
"""
