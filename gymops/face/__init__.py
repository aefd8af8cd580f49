"""Face entry: dlib's 128-d face descriptor ported to PyTorch (model.py), its offline weights
(assets.py), verification and identification against a per-version gallery (matching.py, gallery.py).

Nothing here imports Dagster; settings arrive as arguments (gymops.settings.FaceSettings).
"""
