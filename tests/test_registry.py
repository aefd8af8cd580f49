"""The model registry on both profiles (SQLite and PostgreSQL): version numbering, Triton version
folders, activation, transitions, rollback, archiving and concurrent registrations."""
import hashlib
import threading

import pytest
import sqlalchemy as sa

from gymops.db import engine_for
from gymops.lifecycle.outbox import outbox
from gymops.lifecycle.registry import (IllegalTransition, ModelRegistry, RegistryError, VersionNotFound,
                                      artifact_digest, model_versions, next_version)

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


def register(registry, architecture=LITE, bump="minor", model_type="laundry", parent=None, acc=0.93, **kw):
    return registry.register_candidate(model_type, architecture, {"holdout": {"accuracy": acc}}, "DS-1", "run-1",
                                       f"file:///models/{model_type}/{architecture}.onnx", parent_version=parent,
                                       bump=bump, **kw)


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


def in_threads(work, threads: int, each: int = 1) -> list:
    """``work()`` called ``each`` times in each of ``threads`` threads at once; its results (the
    first exception, if any, is raised)."""
    results, errors = [], []

    def worker():
        try:
            for _ in range(each):
                results.append(work())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    running = [threading.Thread(target=worker) for _ in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    assert not errors, errors
    return results


def test_concurrent_registrations_get_distinct_versions(registry):
    results = in_threads(lambda: register(registry), threads=8, each=3)
    assert sorted(r.triton_version for r in results) == list(range(1, 25))
    assert {r.version for r in results} == {f"1.{i}.0" for i in range(24)}


# -- one version per trained artifact ----------------------------------------------------------------

def onnx_file(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_an_artifact_is_registered_once(registry, tmp_path):
    model = onnx_file(tmp_path, "model.onnx", b"onnx weights A")
    first = registry.register_candidate("laundry", LITE, {"holdout": {"accuracy": 0.90}}, "DS-1", "run-1", str(model))
    assert first.artifact_sha256 == hashlib.sha256(b"onnx weights A").hexdigest()
    # a re-evaluation (another run, other gate settings; the file under another name or as a URI)
    copy = onnx_file(tmp_path, "copy.onnx", b"onnx weights A")
    again = registry.register_candidate("laundry", LITE, {"holdout": {"accuracy": 0.91}}, "DS-1", "run-2",
                                        f"file://{copy}")
    assert (again.version, again.triton_version, again.status) == (first.version, first.triton_version, "candidate")
    assert again.metrics == {"holdout": {"accuracy": 0.91}}  # the newer evaluation's figures
    assert (again.run_id, again.dataset_id, again.artifact_uri) == ("run-1", "DS-1", str(model))  # lineage stays
    assert [v.version for v in registry.history("laundry")] == ["1.0.0"]
    other = registry.register_candidate("laundry", LITE, {}, "DS-2", "run-3", str(onnx_file(tmp_path, "b.onnx", b"B")))
    assert other.version == "1.1.0"
    assert registry.find_artifact("laundry", copy).version == "1.0.0"
    assert registry.find_artifact("laundry", first.artifact_sha256).version == "1.0.0"
    assert registry.find_artifact("laundry", tmp_path / "missing.onnx") is None
    assert registry.find_artifact("face", model) is None  # per model type
    face = registry.register_candidate("face", "mobilefacenet", {}, None, None, str(model))
    assert (face.model_type, face.version) == ("face", "1.0.0")


def test_a_rejected_artifact_registered_again_is_re_evaluated(registry, tmp_path):
    model = onnx_file(tmp_path, "model.onnx", b"weights")
    v = registry.register_candidate("laundry", LITE, {"holdout": {"accuracy": 0.80}}, "DS-1", "run-1", str(model))
    registry.reject("laundry", v.version, [{"gate": "accuracy", "check": "holdout", "message": "0.80 < 0.88"}])
    again = registry.register_candidate("laundry", LITE, {"holdout": {"accuracy": 0.80}}, "DS-1", "run-2", str(model))
    assert (again.version, again.status) == (v.version, "candidate") and "re-evaluated" in again.status_reason
    active = registry.activate("laundry", again.version)
    assert active.status == "active"
    served = registry.register_candidate("laundry", LITE, {"holdout": {"accuracy": 0.5}}, "DS-1", "run-3", str(model))
    assert (served.version, served.status, served.metrics) == (v.version, "active", {"holdout": {"accuracy": 0.80}})
    assert [x.version for x in registry.history("laundry")] == [v.version]


def test_artifacts_that_cannot_be_read_are_never_merged(registry, tmp_path):
    remote = [registry.register_candidate("laundry", LITE, {}, "DS", "run", "s3://models/m.onnx") for _ in range(2)]
    missing = [registry.register_candidate("laundry", LITE, {}, "DS", "run", str(tmp_path / "gone.onnx")) for _ in range(2)]
    assert [v.version for v in remote + missing] == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    assert {v.artifact_sha256 for v in remote + missing} == {None}
    given = registry.register_candidate("laundry", LITE, {}, "DS", "run", "s3://models/m.onnx", artifact_sha256="ab" * 32)
    assert registry.register_candidate("laundry", LITE, {}, "DS", "run", "s3://x.onnx",
                                       artifact_sha256="ab" * 32).version == given.version
    with pytest.raises(ValueError, match="sha256"):
        registry.register_candidate("laundry", LITE, {}, "DS", "run", "s3://x.onnx", artifact_sha256="not-a-digest")
    assert artifact_digest(tmp_path) is None  # a folder is not an artifact


def test_concurrent_registrations_of_one_artifact_get_one_version(registry, tmp_path):
    model = onnx_file(tmp_path, "model.onnx", b"the same weights")
    results = in_threads(lambda: registry.register_candidate("laundry", LITE, {}, "DS-1", "run-1", str(model)), threads=6)
    assert [r.version for r in results] == ["1.0.0"] * 6


def test_a_table_from_before_gains_the_artifact_column(tmp_path):
    """An existing model_versions table without artifact_sha256 (created by an older release) is
    migrated in place; its rows stay and are never merged."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    old = sa.MetaData()
    legacy = sa.Table("model_versions", old, *[sa.Column(c.name, c.type, primary_key=c.primary_key,
                                                          nullable=c.nullable)
                                               for c in model_versions.columns if c.name != "artifact_sha256"])
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(legacy.insert().values(
            model_type="laundry", version="1.0.0", major=1, minor=0, patch=0, triton_version=1, architecture=LITE,
            metrics={}, artifact_uri=str(tmp_path / "m.onnx"), trained_at=sa.func.now(), status="candidate",
            updated_at=sa.func.now()))
    (tmp_path / "m.onnx").write_bytes(b"old weights")
    registry = ModelRegistry(engine)
    ModelRegistry(engine)  # a second process starting: nothing left to do
    assert registry.get("laundry", "1.0.0").artifact_sha256 is None
    assert "model_versions_type_artifact" in {i["name"] for i in sa.inspect(engine).get_indexes("model_versions")}
    again = registry.register_candidate("laundry", LITE, {}, None, None, str(tmp_path / "m.onnx"))
    assert again.version == "1.1.0" and again.artifact_sha256 is not None
    assert registry.register_candidate("laundry", LITE, {}, None, None, str(tmp_path / "m.onnx")).version == "1.1.0"


def test_the_artifact_column_is_added_back_on_both_profiles(engine):
    """The same in-place migration on SQLite and PostgreSQL: without the column and its index, a
    registry starting up adds them (rows kept)."""
    registry = ModelRegistry(engine)
    register(registry)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX model_versions_type_artifact")
        conn.exec_driver_sql("ALTER TABLE model_versions DROP COLUMN artifact_sha256")
    assert "artifact_sha256" not in {c["name"] for c in sa.inspect(engine).get_columns("model_versions")}
    registry = ModelRegistry(engine)
    assert registry.get("laundry", "1.0.0").artifact_sha256 is None
    assert register(registry, artifact_sha256="cd" * 32).version == "1.1.0"
    assert register(registry, artifact_sha256="cd" * 32).version == "1.1.0"
