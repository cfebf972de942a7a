"""Workers on separate hosts (benchmarks/hosts.py): three Linux network namespaces on a private
test network, Redis and PostgreSQL in one, a worker in each of the other two, each with its own
data folder, the CLI submitting from the root namespace. Both hosts share the work, and when
one host's link is cut in the middle of a task every clip still ends done exactly once, after
the visibility timeout. Skipped, with the reason, where namespaces cannot be made."""

from pathlib import Path

import pytest

from benchmarks import hosts
from ser_worker.bundle import shipped_bundle_bytes

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "corpus"


@pytest.fixture(scope="module")
def clips() -> list[Path]:
    found = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".wav", ".flac"))
    assert len(found) >= 24, "tests/corpus should hold the committed clips"
    return found[:24]


def test_two_hosts_share_the_work_and_a_cut_link_loses_nothing(clips, tmp_path):
    reason = hosts.unavailable()
    if reason:
        pytest.skip(reason)
    result = hosts.measure(
        tmp_path, shipped_bundle_bytes(), clips, repeats=1, batch=4, visibility_timeout_s=3
    )
    assert all(n > 0 for n in result["hosts_2"]["tasks_per_host"]), result["hosts_2"]
    cut = result["link_cut"]
    assert cut["h2_in_flight_at_cut"] >= 1, cut  # the cut host held a task when it went
    assert cut["done"] == len(clips), cut
    assert cut["lost"] == 0 and cut["duplicated"] == 0, cut
    # The shipped bundle carries ONNX exports: a worker runs without TensorFlow.
    assert result["worker_rss_mb"] < 1000, result["worker_rss_mb"]
