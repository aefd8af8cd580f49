"""A training that does not learn is retried with a lower learning rate, up to 3 times, then the
step fails clearly. Real (tiny) trainings: a learning rate of 1e12 makes the head diverge."""
import dagster as dg
import pytest

from assets.trained_checkpoint import trained_checkpoint
from resources.pipeline import PipelineStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from bench.stages import records_from_traffic
    from gymops.ml.dataset import build_dataset
    from gymops.ml.records import fetch_photos
    from gymops.storage.photos import LocalPhotoStore

    work = tmp_path_factory.mktemp("retries")
    store = LocalPhotoStore(work / "photos")
    fetched, _ = fetch_photos(records_from_traffic(store, 60, 0), store.get)
    return build_dataset(fetched, None, work / "dataset", copies=2, seed=0)


def run(manifest, tmp_path, **config):
    @dg.asset(name="training_dataset")
    def given_dataset():
        return manifest

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [given_dataset, trained_checkpoint], instance=instance, raise_on_error=False,
            resources={"pipeline": PipelineStore(root=str(tmp_path))},
            run_config={"ops": {"trained_checkpoint": {"config": {"max_epochs": 12, "patience": 4, **config}}}})
        attempts = [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]
        failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        return result, len(attempts) + 1, failure


def test_a_diverging_training_is_retried_three_times_then_fails_clearly(manifest, tmp_path):
    result, attempts, [failure] = run(manifest, tmp_path, lr=1e12)
    assert not result.success
    assert attempts == 4
    message = failure.event_specific_data.error.message
    assert "training failed after 4 attempts" in message and "never beat a coin toss" in message


def test_a_retry_with_the_adjusted_learning_rate_succeeds(manifest, tmp_path):
    result, attempts, failures = run(manifest, tmp_path, lr=1e12, lr_factor_on_retry=1e-15)
    assert result.success and attempts == 2 and not failures
    meta = result.asset_materializations_for_node("trained_checkpoint")[0].metadata
    assert meta["attempt"].value == 2 and meta["lr"].value == pytest.approx(1e-3)
    assert meta["val_accuracy"].value > 0.6
