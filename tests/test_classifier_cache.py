"""The cached feature classifier is verified at every load: weights digest and accuracy on a fixed batch."""
import hashlib
import io
import json

import pytest
import torch

from zoo_core.metrics import classifier


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(classifier.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(classifier, "_LOADED", {})
    extractor = classifier.get_feature_extractor("digits", "dequantized")
    path = classifier.classifier_path("digits", "dequantized")
    return path, path.with_suffix(".json"), extractor


def _reload(monkeypatch):
    monkeypatch.setattr(classifier, "_LOADED", {})
    return classifier.get_feature_extractor("digits", "dequantized")


def test_the_cache_records_a_digest_and_a_check_accuracy(cache, monkeypatch):
    path, meta_path, first = cache
    meta = json.loads(meta_path.read_text())
    assert meta["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["check_accuracy"] > 0.9
    mtime = path.stat().st_mtime_ns
    again = _reload(monkeypatch)
    assert path.stat().st_mtime_ns == mtime  # verified and loaded, not retrained
    assert again.accuracy == first.accuracy


def test_an_all_zero_classifier_with_a_matching_digest_is_retrained(cache, monkeypatch):
    path, meta_path, _ = cache
    zero = {k: torch.zeros_like(v) for k, v in torch.load(path, weights_only=True).items()}
    buffer = io.BytesIO()
    torch.save(zero, buffer)
    path.write_bytes(buffer.getvalue())
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()  # a consistent, loadable, wrong file
    meta_path.write_text(json.dumps(meta))
    extractor = _reload(monkeypatch)
    net_accuracy = classifier.check_accuracy(extractor.net, classifier.check_batch("digits", "dequantized", None))
    assert net_accuracy > 0.9  # trained again: the zero weights were refused by the accuracy check
    assert hashlib.sha256(path.read_bytes()).hexdigest() != meta["weights_sha256"]


def test_tampered_weights_and_a_crafted_shape_are_not_used(cache, monkeypatch):
    path, meta_path, _ = cache
    meta = json.loads(meta_path.read_text())
    meta["event_shape"] = [1, 4000, 4000]  # the network is built for the dataset's own shape, not this
    meta_path.write_text(json.dumps(meta))
    assert _reload(monkeypatch).accuracy == meta["test_accuracy"]  # still verified and used as is
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # digest no longer matches
    _reload(monkeypatch)
    assert json.loads(meta_path.read_text())["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
