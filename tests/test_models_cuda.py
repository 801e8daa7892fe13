"""The smoke suite on CUDA in bfloat16 (skipped without a GPU)."""

import numpy as np
import pytest
import torch

from dv4d.models.bench import BenchConfig, bench_models
from dv4d.models.depth import DepthAnythingMetricAdapter
from dv4d.models.suite import ModelSuite

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_smoke_suite_bf16_on_cuda() -> None:
    suite = ModelSuite("smoke", "cuda")
    video = np.random.default_rng(0).integers(0, 256, (9, 36, 48, 3), dtype=np.uint8)
    depth = suite.depth(video)
    assert depth.depth.shape == (9, 36, 48) and depth.depth.dtype == np.float32
    assert depth.focal_px is not None and depth.focal_px.dtype == np.float64
    names = suite.dynamic_objects(list(video)).names
    assert len(suite.detect(video, names).frames) == 9
    masks = suite.segment(video[0], np.array([[4, 4, 30, 30]], np.float32))
    assert masks.masks.shape == (1, 36, 48) and masks.masks.dtype == bool
    assert suite.caption_scene(list(video)).strip()
    assert all(c["dtype"] == "bfloat16" and c["device"] == "cuda" for c in suite.components().values())


def test_depth_anything_bf16_on_cuda() -> None:
    adapter = DepthAnythingMetricAdapter(None)
    adapter.load("cuda", torch.bfloat16)
    out = adapter.predict(np.zeros((2, 28, 42, 3), np.uint8))
    assert out.depth.shape == (2, 28, 42) and out.depth.dtype == np.float32


def test_bench_models_on_cuda_reports_bf16_and_gpu_memory() -> None:
    report = bench_models(BenchConfig("smoke", "cuda", frames=3, resolution=128, objects=2))
    assert report["dtype"] == "bfloat16" and report["threads"] is None
    assert [s["stage"] for s in report["stages"]] == [
        "depth",
        "detect",
        "segment",
        "vlm_names",
        "vlm_captions",
    ]
    for stage in report["stages"]:
        assert stage["weights"] == "random-init" and stage["seconds"] > 0
        assert 0 < stage["peak_memory_mb"] < torch.cuda.get_device_properties(0).total_memory / 2**20
