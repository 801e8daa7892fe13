"""ModelSuite per preset, weights resolution (weights-dir, HF cache, missing), registry laziness."""

import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

from dv4d.models.errors import MissingWeightsError, ModelsError, UnknownModelError
from dv4d.models.presets import PRESETS, list_models, preset_specs
from dv4d.models.registry import ADAPTERS, adapter_class
from dv4d.models.suite import ModelSuite
from dv4d.models.weights import WeightsSpec, find_weights, resolve_all


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def fake_copy(root: Path, spec: WeightsSpec) -> None:
    for pattern in spec.files:
        path = root / pattern.replace("*", "00001-of-00002")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_smoke_suite_end_to_end() -> None:
    suite = ModelSuite("smoke", "cpu")
    video = np.random.default_rng(0).integers(0, 256, (5, 36, 48, 3), dtype=np.uint8)
    depth = suite.depth(video)
    assert depth.depth.shape == (5, 36, 48) and depth.depth.dtype == np.float32
    assert depth.focal_px is not None and depth.focal_px.shape == (5,) and not depth.metric
    names = suite.dynamic_objects(list(video)).names
    assert 1 <= len(names) <= 3
    detections = suite.detect(video, names)
    assert len(detections.frames) == 5
    boxes = np.array([[4, 4, 30, 30]], np.float32)
    masks = suite.segment(video[0], boxes)
    assert masks.masks.shape == (1, 36, 48)
    crop, mask = video[0][4:30, 4:30], masks.masks[0][4:30, 4:30]
    captions = suite.caption_objects([(crop, mask), (video[1][4:30, 4:30], mask), (crop, ~mask)])
    assert len(captions) == 3 and all(text.strip() for text in captions)
    assert suite.caption_scene(list(video)).strip()
    assert suite.rephrase_camera("pan left 35°").text
    components = suite.components()
    assert set(components) == {"depth", "detector", "segmenter", "vlm"}
    for entry in components.values():
        assert entry["weights"] == "random-init" and entry["device"] == "cpu" and entry["dtype"] == "float32"
        assert isinstance(entry["seconds"], float) and entry["seconds"] > 0


def test_classical_has_no_models() -> None:
    suite = ModelSuite("classical")
    assert suite.roles == () and suite.components() == {}
    with pytest.raises(ModelsError, match="classical uses no learned models"):
        suite.depth(np.zeros((1, 8, 8, 3), np.uint8))


def test_unknown_preset_and_device() -> None:
    with pytest.raises(UnknownModelError, match="default"):
        ModelSuite("bogus")
    with pytest.raises(ModelsError, match="device"):
        ModelSuite("smoke", "tpu")


@pytest.mark.parametrize("preset", ["default", "fast"])
def test_missing_weights_names_every_model(preset: str, tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        ModelSuite(preset, weights_dir=tmp_path / "weights")
    message = str(info.value)
    for spec in preset_specs(preset):
        assert spec.repo_id in message and spec.revision[:12] in message
    assert f"dv4d models download --preset {preset}" in message and "--weights-dir" in message


def test_missing_weights_lists_only_what_is_missing(tmp_path: Path) -> None:
    specs = preset_specs("default")
    for spec in specs[:3]:
        fake_copy(spec.local_dir(tmp_path), spec)
    with pytest.raises(MissingWeightsError) as info:
        ModelSuite("default", weights_dir=tmp_path)
    message = str(info.value)
    assert "1 model checkpoint" in message and specs[3].repo_id in message
    assert all(spec.repo_id not in message for spec in specs[:3])


def test_weights_dir_copy_resolves(tmp_path: Path) -> None:
    specs = {f"role{i}": spec for i, spec in enumerate(preset_specs("default"))}
    for spec in specs.values():
        fake_copy(spec.local_dir(tmp_path), spec)
    resolved = resolve_all(specs, tmp_path, "default")
    for role, spec in specs.items():
        assert resolved[role].source == "weights-dir" and resolved[role].path == tmp_path / spec.repo_id


def test_incomplete_weights_dir_copy_is_missing(tmp_path: Path) -> None:
    spec = preset_specs("default")[0]
    fake_copy(spec.local_dir(tmp_path), spec)
    (spec.local_dir(tmp_path) / "model.safetensors").unlink()
    assert find_weights(spec, tmp_path) is None


def test_hf_cache_snapshot_resolves_offline(empty_hf_cache: Path) -> None:
    spec = preset_specs("default")[1]
    owner, name = spec.repo_id.split("/")
    snapshot = empty_hf_cache / f"models--{owner}--{name}" / "snapshots" / spec.revision
    fake_copy(snapshot, spec)
    found = find_weights(spec, None)
    assert found is not None and found.source == "hf-cache" and found.path == snapshot


def test_models_list_rows(tmp_path: Path) -> None:
    spec = preset_specs("default")[0]
    fake_copy(spec.local_dir(tmp_path), spec)
    rows = list_models(tmp_path)
    assert {(r.preset, r.role) for r in rows} == {
        (p.name, c.role) for p in PRESETS.values() for c in p.models
    }
    present = {(r.preset, r.weights): r.present for r in rows}
    assert present[("default", spec.weights_id)] == "yes"
    assert present[("default", preset_specs("default")[1].weights_id)] == "no"
    assert all(r.present == "n/a" and r.weights == "random-init" for r in rows if r.preset == "smoke")


def test_registry_is_lazy_and_models_never_import_pipeline() -> None:
    code = (
        "import sys\n"
        "import dv4d.models.suite, dv4d.models.presets, dv4d.models.registry as r\n"
        "assert 'transformers' not in sys.modules, 'transformers imported eagerly'\n"
        "assert 'segment_anything' not in sys.modules\n"
        "assert 'dv4d.models.segment' not in sys.modules\n"
        "r.adapter_class('sam')\n"
        "assert 'dv4d.models.segment' in sys.modules and 'dv4d.models.vlm' not in sys.modules\n"
        "for name in r.ADAPTERS: r.adapter_class(name)\n"
        "assert not [m for m in sys.modules if m.startswith(('dv4d.pipeline', 'dv4d.ba', 'dv4d.flows'))]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(UnknownModelError, match="known"):
        adapter_class("nope")
    assert set(ADAPTERS) >= {c.model for p in PRESETS.values() for c in p.models}
