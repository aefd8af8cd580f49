"""The laundry model's plain-Python ML core (no Dagster): preprocessing, augmentation, datasets,
backbones, head training, ONNX export and evaluation.

Stages, in order: ``dataset.fetch_photos`` -> ``dataset.Holdout.freeze_or_load`` ->
``dataset.build_dataset`` -> ``train.train`` -> ``export.export_onnx`` -> ``evaluate.evaluate_onnx``.
"""
