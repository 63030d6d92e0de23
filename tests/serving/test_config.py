"""serving/config.py: config.properties as TorchServe reads it, and the archives it loads."""
from serving import config as serving


def test_archives_to_load_skips_the_missing_ones(tmp_path):
    (tmp_path / "digits.mar").write_bytes(b"")
    present, missing = serving.archives_to_load({"load_models": "digits.mar, digits_v2.mar"}, tmp_path)
    assert present == ["digits.mar"] and missing == ["digits_v2.mar"]
    assert serving.archives_to_load({"load_models": "all"}, tmp_path) == (["all"], [])
    assert serving.archives_to_load({}, tmp_path) == ([], [])


def test_config_lists_version_one_first():
    """The first archive loaded is the default version: 1.0 must come first."""
    present, _ = serving.archives_to_load(serving.load_properties(serving.DEFAULT_CONFIG), serving.ROOT / "nowhere")
    names = serving.load_properties(serving.DEFAULT_CONFIG)["load_models"].split(",")
    assert names == ["digits.mar", "digits_v2.mar"] and present == []
