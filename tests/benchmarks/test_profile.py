"""benchmarks/profile.py: py-spy's frames counted per function."""
from benchmarks.profile import function_of


def test_profile_frames_are_counted_per_function():
    assert function_of("decode_image (/work/main/model/preprocessing.py:84)") == "decode_image (preprocessing.py)"
    assert function_of("decode_image (preprocessing.py:87)") == "decode_image (preprocessing.py)"
    assert function_of("<module> (ts/model_service_worker.py:301)") == "<module> (model_service_worker.py)"
