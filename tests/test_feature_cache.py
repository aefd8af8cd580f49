"""The trunk feature cache: rows by image content, crash-safe packs, bounded size."""
from __future__ import annotations

import numpy as np
import pytest

from gymops.ml.feature_cache import FeatureCache, digests


class Trunk:
    """Stands in for the frozen CNN (the real one is covered by test_ml_train): two 'layers'
    computed from the pixels, and a count of the images it was asked for."""

    def __init__(self):
        self.seen = 0

    def __call__(self, images, progress=None):
        self.seen += len(images)
        x = images.astype(np.float32)
        if progress:
            progress(len(images), len(images))
        return x.mean(axis=(1, 2)), x[:, ::4, ::4, 0]


def images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def direct(imgs):
    return Trunk()(imgs)


def test_second_lookup_reads_the_cache_and_equals_extraction(tmp_path):
    trunk, imgs = Trunk(), images(40, 0)
    cache = FeatureCache(tmp_path, "t", ("a", "b"))
    first = cache.features(imgs, trunk)
    assert trunk.seen == 40 and (cache.hits, cache.misses) == (0, 40)
    again = FeatureCache(tmp_path, "t", ("a", "b"))
    second = again.features(imgs, trunk)
    assert trunk.seen == 40 and (again.hits, again.misses) == (40, 0)
    for a, b, c in zip(first, second, direct(imgs)):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)


def test_a_grown_window_extracts_only_the_new_images_in_any_order(tmp_path):
    trunk, old, new = Trunk(), images(30, 1), images(10, 2)
    FeatureCache(tmp_path, "t", ("a", "b")).features(old, trunk)
    window = np.concatenate([new[:5], old[::-1], new[5:]])
    cache = FeatureCache(tmp_path, "t", ("a", "b"))
    got = cache.features(window, trunk)
    assert trunk.seen == 40 and cache.misses == 10 and cache.hits == 30
    for a, b in zip(got, direct(window)):
        np.testing.assert_array_equal(a, b)


def test_repeated_images_are_extracted_once_and_every_row_is_filled(tmp_path):
    trunk, base = Trunk(), images(5, 3)
    window = np.concatenate([base, base[:3], base[:1]])
    got = FeatureCache(tmp_path, "t", ("a", "b")).features(window, trunk)
    assert trunk.seen == 5
    for a, b in zip(got, direct(window)):
        np.testing.assert_array_equal(a, b)


def test_another_trunk_does_not_share_rows(tmp_path):
    trunk, imgs = Trunk(), images(10, 4)
    FeatureCache(tmp_path, "resnet", ("a", "b")).features(imgs, trunk)
    FeatureCache(tmp_path, "lite0", ("a", "b")).features(imgs, trunk)
    assert trunk.seen == 20


def test_a_crashed_or_damaged_pack_is_never_read(tmp_path):
    trunk, imgs = Trunk(), images(12, 5)
    cache = FeatureCache(tmp_path, "t", ("a", "b"))
    cache.features(imgs, trunk)
    (pack,) = [p for p in cache.dir.iterdir()]
    # a writer killed before its rename leaves a .part directory: not a pack
    part = cache.dir / "x.part"
    part.mkdir()
    np.save(part / "digests.npy", digests(images(3, 6)))
    # a damaged layer file: the lookup falls back to the trunk rather than failing or lying
    (pack / "b.npy").write_bytes(b"\x93NUMPY garbage")
    again = FeatureCache(tmp_path, "t", ("a", "b"))
    got = again.features(imgs, trunk)
    assert again.misses == 12 and trunk.seen == 24
    for a, b in zip(got, direct(imgs)):
        np.testing.assert_array_equal(a, b)


def test_packs_beyond_the_size_bound_are_evicted_oldest_first(tmp_path):
    import os
    import time

    trunk = Trunk()
    one_pack, seen = None, set()
    for i in range(4):
        cache = FeatureCache(tmp_path, "t", ("a", "b"), max_bytes=10**9)
        cache.features(images(20, 10 + i), trunk)
        (pack,) = set(cache.dir.iterdir()) - seen
        seen.add(pack)
        one_pack = one_pack or sum(f.stat().st_size for f in pack.iterdir())
        os.utime(pack, (time.time() + i, time.time() + i))  # ages apart, whatever the clock's resolution
    small = FeatureCache(tmp_path, "t", ("a", "b"), max_bytes=int(2.5 * one_pack))
    small.features(images(20, 13), trunk)  # the newest pack: a hit, then eviction
    left = list(small.dir.iterdir())
    assert len(left) == 2
    assert FeatureCache(tmp_path, "t", ("a", "b")).features(images(20, 13), trunk) is not None
    assert trunk.seen == 80  # the newest images are still cached


def test_no_images_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        FeatureCache(tmp_path, "t", ("a",)).features(images(0, 0), Trunk())
