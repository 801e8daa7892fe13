import dv4d.ba
import dv4d.flows
import dv4d.models
import dv4d.pipeline


def test_namespace_maps_top_level_folders() -> None:
    for mod, folder in [
        (dv4d.ba, "ba"),
        (dv4d.models, "models"),
        (dv4d.pipeline, "pipeline"),
        (dv4d.flows, "flows"),
    ]:
        assert mod.__file__ is not None
        assert mod.__file__.replace("\\", "/").endswith(f"/{folder}/__init__.py")
