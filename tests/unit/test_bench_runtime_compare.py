"""``python -m bench.runtime_compare`` imports, and reports an engine as not installed,
without the optional runtimes' packages."""

from __future__ import annotations

import sys

import pytest

from tests.binaries import required_module


def test_runtime_compare_imports_without_the_runtimes(monkeypatch):
    """The measurement tool imports, and reports an engine as not installed, without them."""
    required_module("tensorflow")
    from inference import runtimes

    for name in ("onnxruntime", "tf2onnx", "openvino"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError
    import bench.runtime_compare  # noqa: F401

    with pytest.raises(runtimes.EngineUnavailable, match="requirements/runtime-openvino.txt"):
        runtimes.openvino_predict(None, 32)
    with pytest.raises(runtimes.EngineUnavailable, match="requirements/runtime-onnxruntime.txt"):
        runtimes.onnxruntime_predict(None, 32)
