"""The model registry on both profiles (SQLite and PostgreSQL): version numbering, Triton version
folders, activation, transitions, rollback, archiving and concurrent registrations."""
import threading

import pytest
import sqlalchemy as sa

from gymops.db import engine_for
from gymops.lifecycle.outbox import outbox
from gymops.lifecycle.registry import (IllegalTransition, ModelRegistry, RegistryError, VersionNotFound, model_versions,
                             next_version)

LITE = "efficientnet_lite0"
RESNET = "resnet50"


@pytest.fixture
def engine(profile):
    """The profile's registry database, emptied for this test."""
    engine = engine_for(profile)
    with engine.begin() as conn:
        conn.execute(outbox.delete())
        conn.execute(model_versions.delete())
    return engine


@pytest.fixture
def registry(engine):
    return ModelRegistry(engine)


def register(registry, architecture=LITE, bump="minor", model_type="laundry", parent=None, acc=0.93):
    return registry.register_candidate(model_type, architecture, {"holdout": {"accuracy": acc}}, "DS-1", "run-1",
                                       f"file:///models/{model_type}/{architecture}.onnx", parent_version=parent,
                                       bump=bump)


def test_next_version_rules():
    assert next_version([], LITE) == (1, 0, 0)
    existing = [(LITE, 1, 0, 0), (LITE, 1, 1, 0), (RESNET, 2, 0, 0)]
    assert next_version(existing, LITE) == (1, 2, 0)
    assert next_version(existing, RESNET) == (2, 1, 0)
    assert next_version(existing, "vit") == (3, 0, 0)
    assert next_version(existing, LITE, "major") == (3, 0, 0)
    assert next_version(existing, LITE, "patch") == (1, 1, 1)
    assert next_version(existing, LITE, "patch", parent_version="1.0.0") == (1, 0, 1)
    assert next_version(existing + [(LITE, 1, 9, 0)], LITE) == (1, 10, 0)  # numeric, not string order
    with pytest.raises(ValueError, match="bump"):
        next_version(existing, LITE, "retrain")


def test_version_numbering_and_triton_versions(registry):
    first = register(registry)
    assert (first.version, first.triton_version, first.status) == ("1.0.0", 1, "candidate")
    assert first.metrics == {"holdout": {"accuracy": 0.93}} and first.trained_at.tzinfo is not None
    assert [register(registry).version for _ in range(2)] == ["1.1.0", "1.2.0"]
    new_arch = register(registry, RESNET)
    assert (new_arch.version, new_arch.triton_version) == ("2.0.0", 4)
    assert register(registry, RESNET, bump="patch").version == "2.0.1"
    assert register(registry, LITE).version == "1.3.0"  # a retrain of the older architecture
    tuned = register(registry, LITE, bump="patch", parent="1.1.0")
    assert (tuned.version, tuned.parent_version) == ("1.1.1", "1.1.0")
    assert register(registry, LITE, bump="major").version == "3.0.0"
    assert [v.triton_version for v in registry.history("laundry")] == list(range(8, 0, -1))
    face = register(registry, "mobilefacenet", model_type="face")
    assert (face.version, face.triton_version) == ("1.0.0", 1)  # per model type
    assert registry.get("laundry", "2.0.1").architecture == RESNET
    assert registry.newest("laundry", LITE).version == "3.0.0"
    with pytest.raises(VersionNotFound, match="9.9.9"):
        registry.get("laundry", "9.9.9")
    with pytest.raises(VersionNotFound):
        register(registry, parent="7.0.0")
    with pytest.raises(ValueError, match="model_type"):
        register(registry, model_type="shoes")


def test_activate_retires_the_previous_in_one_step(registry):
    v1, v2 = register(registry), register(registry)
    assert registry.active("laundry") is None
    a1 = registry.activate("laundry", v1.version)
    assert (a1.status, a1.previous_version) == ("active", None) and a1.deployed_at is not None
    a2 = registry.activate("laundry", v2.version)
    assert (a2.status, a2.previous_version) == ("active", "1.0.0")
    old = registry.get("laundry", "1.0.0")
    assert old.status == "retired" and "1.1.0" in old.status_reason
    assert registry.active("laundry").version == "1.1.0"
    assert registry.activate("laundry", v2.version) == a2  # re-running a deploy changes nothing
    assert [v.status for v in registry.history("laundry")] == ["active", "retired"]


def test_illegal_transitions_name_from_and_to(registry):
    v1 = register(registry)
    registry.set_status("laundry", v1.version, "rejected", "val accuracy 0.85")
    assert registry.get("laundry", v1.version).status_reason == "val accuracy 0.85"
    with pytest.raises(IllegalTransition, match="from rejected to active") as info:
        registry.activate("laundry", v1.version)
    assert (info.value.from_status, info.value.to_status) == ("rejected", "active")
    v2 = register(registry)
    with pytest.raises(IllegalTransition, match="from candidate to retired"):
        registry.set_status("laundry", v2.version, "retired")
    with pytest.raises(ValueError, match="unknown status"):
        registry.set_status("laundry", v2.version, "deleted")
    registry.set_status("laundry", v2.version, "canary")
    registry.set_status("laundry", v2.version, "active")
    assert registry.active("laundry").version == v2.version
    with pytest.raises(IllegalTransition, match="from active to canary"):
        registry.set_status("laundry", v2.version, "canary")


def test_only_one_active_version_even_by_hand(engine, registry):
    v1, v2 = register(registry), register(registry)
    registry.activate("laundry", v1.version)
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(model_versions.update().where(model_versions.c.version == v2.version)
                         .values(status="active"))


def test_rollback(registry):
    v1, v2 = register(registry), register(registry)
    registry.activate("laundry", v1.version)
    registry.activate("laundry", v2.version)
    back = registry.rollback("laundry", reason="error rate 7%")
    assert (back.version, back.status, back.previous_version) == ("1.0.0", "active", "1.1.0")
    assert registry.get("laundry", "1.1.0").status == "rolled_back"
    with pytest.raises(RegistryError, match="no retired version"):
        registry.rollback("laundry")
    with pytest.raises(IllegalTransition, match="from rolled_back to active"):
        registry.activate("laundry", "1.1.0")


def test_archive_keeps_the_newest_ten_and_never_the_active(registry):
    versions = [register(registry).version for _ in range(14)]  # 1.0.0 .. 1.13.0
    for v in versions[:12]:
        registry.activate("laundry", v)
    registry.set_status("laundry", versions[12], "rejected")
    registry.rollback("laundry", to_version=versions[0], reason="back to the first")  # an old active
    archived = registry.archive_beyond("laundry", keep=10)
    assert archived == ["1.1.0", "1.2.0", "1.3.0"]
    assert registry.get("laundry", "1.0.0").status == "active"
    loadable = [v.version for v in registry.loadable("laundry")]
    assert loadable == [f"1.{i}.0" for i in range(13, 3, -1)] + ["1.0.0"]
    assert registry.archive_beyond("laundry", keep=10) == []
    with pytest.raises(IllegalTransition, match="from archived to active"):
        registry.activate("laundry", "1.1.0")
    statuses = {v.version: v.status for v in registry.history("laundry", limit=100)}
    assert statuses["1.13.0"] == "candidate" and statuses["1.12.0"] == "rejected"
    assert statuses["1.11.0"] == "rolled_back" and statuses["1.4.0"] == "retired"


def test_concurrent_registrations_get_distinct_versions(registry):
    results, errors = [], []

    def worker():
        try:
            for _ in range(3):
                results.append(register(registry))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(r.triton_version for r in results) == list(range(1, 25))
    assert {r.version for r in results} == {f"1.{i}.0" for i in range(24)}
