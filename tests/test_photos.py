"""The photo store: URL checks (the dead-letter reasons), local and S3 round trips, the S3 server."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from fixtures import free_port, skip_or_fail
from gymops.cli import main as cli_main
from gymops.settings import Settings
from gymops.storage import s3server
from gymops.ingest.events import EventValidationError, TaskConfirmedEvent, parse_event
from gymops.storage.photos import LocalPhotoStore, S3PhotoStore, check_key, photo_store_for

JPEG = b"\xff\xd8\xff\xe0 not really a photo \xff\xd9"


@pytest.fixture
def local(tmp_path) -> LocalPhotoStore:
    return LocalPhotoStore(tmp_path / "photos")


def s3_store(bucket: str = "gym-photos") -> S3PhotoStore:
    return S3PhotoStore("http://127.0.0.1:1", bucket, "k", "s")  # check_url never connects


def bad_urls(prefix: str) -> list[tuple[str, str]]:
    """(url, expected words in the reason) for a store whose URLs start with ``prefix``."""
    return [
        (prefix + "a/../../etc/passwd", "traversal"),
        (prefix + "../x.jpg", "traversal"),
        (prefix + "a/%2e%2e/%2E%2E/etc/passwd", "traversal"),
        (prefix + "a/%252e%252e/b.jpg", "traversal"),
        (prefix + "a/./b.jpg", "traversal"),
        (prefix + "a\\..\\b.jpg", "backslash"),
        (prefix + "a%5c..%5cb.jpg", "backslash"),
        (prefix + "a/b\x00.jpg", "NUL"),
        (prefix + "a/b%00.jpg", "NUL"),
        (prefix + "/etc/passwd", "absolute key"),
        (prefix, "empty key"),
        (prefix + "a//b.jpg", "empty path segment"),
        (prefix + "a/b.jpg?versionId=1", "query"),
        (prefix + "a/b.jpg#frag", "fragment"),
        ("", "empty photo URL"),
        ("http://example.com/a.jpg", "scheme 'http'"),
        ("a/b.jpg", "scheme '(none)'"),
    ]


def test_local_rejects_bad_urls(local):
    prefix = local.url_for("x")[:-1]
    cases = bad_urls(prefix) + [
        ("s3://gym-photos/a.jpg", "scheme 's3'"),
        ("file:///etc/passwd", "outside the photo store root"),
        (f"file://{local.root.parent}/other/a.jpg", "outside the photo store root"),
        (f"file://{local.root}-evil/a.jpg", "outside the photo store root"),
        (f"file://otherhost{local.root}/a.jpg", "host 'otherhost'"),
    ]
    for url, reason in cases:
        with pytest.raises(ValueError) as exc:
            local.check_url(url)
        assert reason in str(exc.value), (url, str(exc.value))
    local.check_url(local.url_for("tasks/branch-01/t1.jpg"))
    local.check_url(f"file://localhost{local.root}/tasks/a.jpg")


def test_s3_rejects_bad_urls():
    store = s3_store()
    cases = bad_urls("s3://gym-photos/") + [
        ("s3://other-bucket/a.jpg", "bucket 'other-bucket' is not this store's bucket 'gym-photos'"),
        ("s3://gym-photos", "empty key"),
        ("file:///tmp/a.jpg", "scheme 'file'"),
        ("https://gym-photos.s3.amazonaws.com/a.jpg", "scheme 'https'"),
    ]
    for url, reason in cases:
        with pytest.raises(ValueError) as exc:
            store.check_url(url)
        assert reason in str(exc.value), (url, str(exc.value))
    store.check_url("s3://gym-photos/tasks/branch-01/t1.jpg")
    store.check_url("s3://gym-photos/faces/%EC%82%AC%EC%9A%A9%EC%9E%90/enrol.jpg")


def test_bad_url_becomes_the_dead_letter_reason(local):
    wire = TaskConfirmedEvent(
        event_id="e1", task_id="t1", helper_id="h1", branch_id="b1",
        photo_url=local.url_for("tasks/b1/t1.jpg").replace("tasks/", "tasks/%2e%2e/%2e%2e/"),
        ai_result="good", ai_model_version="none", final_result="good", corrected=False,
        correction_reason=None, timestamp=datetime(2025, 1, 1, tzinfo=timezone.utc),
    ).to_wire()
    with pytest.raises(EventValidationError) as exc:
        parse_event(wire, check_photo_url=local.check_url)
    assert exc.value.field == "photoUrl" and "traversal" in exc.value.reason
    wire["photoUrl"] = local.url_for("tasks/b1/t1.jpg")
    assert parse_event(wire, check_photo_url=local.check_url).photo_url == wire["photoUrl"]


@pytest.mark.parametrize("key, reason", [
    ("", "empty key"), ("/abs.jpg", "absolute key"), ("a/../b", "traversal"), ("a/%2e%2e/b", "traversal"),
    ("a\\b", "backslash"), ("a\x00b", "NUL"), ("a\nb", "control"), ("a\x7fb", "control"),
    ("a//b", "empty path segment"),
    ("x" * 1025, "longer than 1024"),
])
def test_put_rejects_bad_keys(local, key, reason):
    with pytest.raises(ValueError, match=reason):
        check_key(key)
    with pytest.raises(ValueError, match=reason):
        local.put(key, JPEG)


def test_local_round_trip(local):
    url = local.put("tasks/branch-01/t1.jpg", JPEG)
    assert url == f"file://{local.root}/tasks/branch-01/t1.jpg"
    assert local.get(url) == JPEG
    assert (local.root / "tasks/branch-01/t1.jpg").read_bytes() == JPEG
    assert local.put("tasks/branch-01/t1.jpg", b"second") == url  # overwrite in place
    assert local.get(url) == b"second"
    korean = local.put("faces/회원 1/enrol.jpg", JPEG)
    assert "%" in korean and local.get(korean) == JPEG
    assert not [p for p in local.root.rglob("*") if p.name.startswith(".tmp-")]  # no temp files left
    with pytest.raises(FileNotFoundError):
        local.get(local.url_for("tasks/missing.jpg"))


def test_local_get_refuses_symlink_escape(local, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"secret")
    (local.root / "tasks").mkdir(parents=True)
    (local.root / "tasks" / "link.jpg").symlink_to(outside)
    with pytest.raises(ValueError, match="symlink"):
        local.get(local.url_for("tasks/link.jpg"))


def test_photo_store_for_profile(tmp_path):
    embedded = photo_store_for(Settings(profile="embedded", home=tmp_path))
    assert isinstance(embedded, LocalPhotoStore) and embedded.root == tmp_path / "photos"
    services = photo_store_for(Settings(profile="services", home=tmp_path, s3_bucket="b1"))
    assert isinstance(services, S3PhotoStore) and services.bucket == "b1"


# --- against the real S3 server (SeaweedFS) ---------------------------------------------------

def _need_weed() -> None:
    try:
        s3server.weed_binary()
    except s3server.S3ServerError as exc:
        skip_or_fail(str(exc))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    _need_weed()
    home = tmp_path_factory.mktemp("s3home")
    settings = Settings(profile="services", home=home, s3_endpoint=f"http://127.0.0.1:{free_port()}",
                             s3_bucket="test-photos", s3_access_key="test-key", s3_secret_key="test-secret")
    server = s3server.start(settings, home / "s3")
    try:
        yield settings, server
    finally:
        s3server.stop(server)


def test_s3_round_trip(s3):
    settings, _ = s3
    store = photo_store_for(settings)
    assert isinstance(store, S3PhotoStore)
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    url = store.put("tasks/branch-01/t1.jpg", JPEG)
    assert url == "s3://test-photos/tasks/branch-01/t1.jpg"
    assert store.get(url) == JPEG
    korean = store.put("faces/회원 1/enrol.jpg", JPEG)
    store.check_url(korean)
    assert store.get(korean) == JPEG
    with pytest.raises(FileNotFoundError):
        store.get("s3://test-photos/tasks/missing.jpg")
    with pytest.raises(ValueError, match="bucket"):
        store.get("s3://other/tasks/branch-01/t1.jpg")


def test_s3_server_enforces_credentials(s3):
    from botocore.exceptions import ClientError

    settings, _ = s3
    photo_store_for(settings).ensure_bucket()
    for access, secret in [(settings.s3_access_key, "wrong-secret"), ("nobody", "x")]:
        intruder = S3PhotoStore(settings.s3_endpoint, settings.s3_bucket, access, secret)
        with pytest.raises(ClientError) as exc:
            intruder.put("tasks/evil.jpg", JPEG)
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_s3_server_start_refuses_a_busy_port(s3, tmp_path):
    settings, _ = s3
    with pytest.raises(s3server.S3ServerError, match="already in use"):
        s3server.start(settings, tmp_path / "other")


def test_s3server_cli_start_status_stop_keeps_data(tmp_path, monkeypatch, capsys):
    _need_weed()
    monkeypatch.setenv("GYMOPS_PROFILE", "services")
    monkeypatch.setenv("GYMOPS_HOME", str(tmp_path))
    monkeypatch.setenv("GYMOPS_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    settings = Settings.from_env()
    pid_file = tmp_path / "run" / "s3server.pid"
    pids = []
    try:
        for round_ in range(2):
            assert cli_main(["s3", "start"]) == 0
            pids.append(int(pid_file.read_text()))
            assert cli_main(["s3", "status"]) == 0
            store = photo_store_for(settings)
            if round_ == 0:
                assert cli_main(["s3", "start"]) == 0  # already running: no second server
                assert int(pid_file.read_text()) == pids[0]
                assert "already running" in capsys.readouterr().out
                store.ensure_bucket()
                url = store.put("tasks/b1/kept.jpg", JPEG)
            else:
                assert store.get(url) == JPEG  # survived the restart
            assert cli_main(["s3", "stop"]) == 0
            assert not pid_file.exists()
            assert cli_main(["s3", "status"]) == 3
    finally:
        cli_main(["s3", "stop"])
    for pid in pids:
        assert not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()
