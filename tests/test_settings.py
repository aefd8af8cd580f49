"""The settings tree: one reader of GYMOPS_*, typed values with bounds, no side effects on reading,
and a round trip through a child process's environment."""
from pathlib import Path

import pytest

from gymops.settings import (PROJECT_ROOT, ConfigError, GateSettings, RetrainSettings, Settings, ensure_tokens)


def test_defaults_are_the_designs():
    s = Settings.from_env({})
    assert s.profile == "embedded" and s.home == (PROJECT_ROOT / "var").resolve()
    assert s.gates == GateSettings() and s.gates.val_accuracy == 0.90 and s.gates.holdout_accuracy == 0.88
    assert s.retrain == RetrainSettings(100, 7.0, 300)
    assert s.partitions.start == "2026-11-01"
    assert (s.serving.http_port, s.serving.grpc_port, s.serving.metrics_port) == (8000, 8001, 8002)
    assert s.database_url.startswith("sqlite:///") and s.batch_size == 500


def test_every_group_is_read_from_its_variables(tmp_path):
    s = Settings.from_env({
        "GYMOPS_PROFILE": "services", "GYMOPS_HOME": str(tmp_path), "GYMOPS_PG_DATABASE": "db1",
        "GYMOPS_BATCH_SIZE": "7", "GYMOPS_GATE_CLASS_ACCURACY": "0.5", "GYMOPS_GATE_MIN_CLASS_FRACTION": "0.2",
        "GYMOPS_RETRAIN_MIN_CORRECTIONS": "15", "GYMOPS_RETRAIN_URGENT_CORRECTIONS": "20",
        "GYMOPS_RETRAIN_MIN_DAYS": "0.5", "GYMOPS_PARTITIONS_START": "2026-10-01",
        "GYMOPS_TRITON_GRPC_PORT": "18001", "GYMOPS_TRITON_REPOSITORY": str(tmp_path / "repo"),
    })
    assert s.services and s.home == tmp_path.resolve() and s.database_url.endswith("/db1")
    assert s.batch_size == 7 and s.gates.class_accuracy == 0.5 and s.gates.min_class_fraction == 0.2
    assert s.retrain == RetrainSettings(15, 0.5, 20)
    assert s.partitions.start == "2026-10-01"
    assert s.serving.grpc_port == 18001 and s.serving.repository == (tmp_path / "repo").resolve()
    assert s.serving.home == s.home  # the serving tree lives under the same home


@pytest.mark.parametrize("var, raw, reason", [
    ("GYMOPS_PROFILE", "cloud", "one of embedded, services"),
    ("GYMOPS_BATCH_SIZE", "abc", "must be an integer"),
    ("GYMOPS_BATCH_SIZE", "0", "between 1"),
    ("GYMOPS_INGEST_PORT", "70000", "between 1 and 65535"),
    ("GYMOPS_GATE_VAL_ACCURACY", "high", "must be a number"),
    ("GYMOPS_GATE_HOLDOUT_ACCURACY", "1.5", "between 0 and 1"),
    ("GYMOPS_GATE_MEMORY_MB", "nan", "finite"),
    ("GYMOPS_RETRAIN_MIN_DAYS", "-1", "between 0"),
])
def test_a_bad_value_names_the_variable_and_the_reason(var, raw, reason):
    with pytest.raises(ConfigError, match=var) as err:
        Settings.from_env({var: raw})
    assert reason in str(err.value)


def test_urgent_below_minimum_is_refused():
    with pytest.raises(ConfigError, match="GYMOPS_RETRAIN_URGENT_CORRECTIONS"):
        Settings.from_env({"GYMOPS_RETRAIN_MIN_CORRECTIONS": "50", "GYMOPS_RETRAIN_URGENT_CORRECTIONS": "10"})


def test_reading_has_no_side_effect(tmp_path):
    home = tmp_path / "home"
    s = Settings.from_env({"GYMOPS_HOME": str(home)})
    assert s.ingest_token == "" and s.serving.deploy_token == ""
    assert not home.exists()  # no folder, no token file
    made = ensure_tokens(s)
    assert made.ingest_token and made.serving.deploy_token and made.ingest_token != made.serving.deploy_token
    assert sorted(p.name for p in home.iterdir()) == ["deploy.token", "ingest.token"]
    again = Settings.from_env({"GYMOPS_HOME": str(home)})  # an existing file is read back
    assert (again.ingest_token, again.serving.deploy_token) == (made.ingest_token, made.serving.deploy_token)


def test_environment_round_trips_every_setting(tmp_path):
    s = Settings(profile="services", home=tmp_path, pg_database="x", batch_wait_ms=0, ingest_token="s3cr3t-ingest",
                 database_url_override="sqlite:///elsewhere.db").replace(
        gates={"val_accuracy": 0.75, "perf_requests": 10}, retrain={"min_days": 1.5},
        partitions={"start": "2026-09-09"}, serving={"http_port": 18000, "deploy_token": "s3cr3t-deploy"})
    back = Settings.from_env(s.environment())
    assert back == s
    # the JSON form Dagster shows and stores leaves the secrets out; they come back from the
    # process's own variables or token files
    shown = s.to_dict()
    assert not {"GYMOPS_INGEST_TOKEN", "GYMOPS_DEPLOY_TOKEN", "GYMOPS_PG_PASSWORD", "GYMOPS_S3_SECRET_KEY",
                "GYMOPS_DATABASE_URL", "GYMOPS_RABBITMQ_URL"} & set(shown)
    assert "s3cr3t" not in str(shown)
    rebuilt = Settings.from_dict(shown)
    assert rebuilt.replace(ingest_token="s3cr3t-ingest", serving={"deploy_token": "s3cr3t-deploy"},
                           database_url_override="sqlite:///elsewhere.db") == s
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in repr(s.serving)


def test_replace_changes_one_field_of_a_group():
    s = Settings().replace(gates={"noninferiority_margin": 0.04})
    assert s.gates.noninferiority_margin == 0.04 and s.gates.val_accuracy == 0.90
    assert isinstance(s.home, Path)


def test_nothing_outside_the_settings_module_reads_the_environment():
    """Child processes' environments may be built from os.environ; nothing else reads it."""
    allowed = {"gymops/settings.py": "the reader", "gymops/processes.py": "child_env",
               "gymops/serving/server.py": "server_env", "gymops/lifecycle/sandbox.py": "sandbox child env"}
    offenders = []
    for root in ("gymops", "assets", "resources", "sensors", "feature_repo"):
        for path in sorted((PROJECT_ROOT / root).rglob("*.py")):
            rel = path.relative_to(PROJECT_ROOT).as_posix()
            text = path.read_text()
            if ("os.environ" in text or "os.getenv" in text) and rel not in allowed:
                offenders.append(rel)
    assert offenders == []


def _documented_variables() -> set[str]:
    """GYMOPS_* names in the README, with its shorthand rows expanded (`GYMOPS_PG_HOST`, `_PORT`)."""
    import re

    from gymops.settings import _flatten

    known = set(_flatten(Settings()))
    found = set()
    for line in (PROJECT_ROOT / "README.md").read_text().splitlines():
        names = re.findall(r"`(GYMOPS_[A-Z0-9_]+|_[A-Z0-9_]+)`", line)
        first = None
        for name in names:
            if name.startswith("GYMOPS_"):
                first = name
                found.add(name)
            elif first:  # a suffix: the first name's prefix that makes a known variable
                parts = first.split("_")
                candidates = ["_".join(parts[:i]) + name for i in range(len(parts) - 1, 1, -1)]
                found.add(next((c for c in candidates if c in known), candidates[0]))
    return found


def test_every_documented_setting_exists_and_every_setting_is_documented():
    from gymops.settings import _flatten

    known = set(_flatten(Settings())) | {"GYMOPS_REDIS_CONNECTION", "GYMOPS_DAGSTER_PG_URL"}  # derived, for config files
    documented = _documented_variables()
    assert documented - known == set(), "documented in the README but read nowhere"
    internal = {"GYMOPS_DEPLOY_HEADER", "GYMOPS_TRITON_HOST", "GYMOPS_REDIS_CONNECTION", "GYMOPS_DAGSTER_PG_URL"}
    assert known - internal - documented == set(), "read by gymops/settings.py but not in the README"


def test_feast_sees_exactly_the_variables_its_config_expands():
    import re

    from gymops.settings import FEAST_VARIABLES

    used = set()
    for yaml in (PROJECT_ROOT / "feature_repo").glob("feature_store.*.yaml"):
        used |= set(re.findall(r"\$\{(GYMOPS_[A-Z_]+)\}", yaml.read_text()))
    assert used == FEAST_VARIABLES
