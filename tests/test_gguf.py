"""GGUF files as a model source: the errors a user meets before any conversion starts. (The conversion
itself runs on the real SmolLM2 file in test_real_model.py.)"""

import sys

import pytest

from grpokit.errors import GrpokitError
from grpokit.gguf import convert_gguf, is_gguf, resolve_model_source


def test_only_gguf_paths_are_converted(tmp_path):
    assert is_gguf("a/model.Q4_K_M.gguf") and is_gguf("M.GGUF") and not is_gguf("a/model")
    assert resolve_model_source(str(tmp_path)) == str(tmp_path)  # a folder is used as it is


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(GrpokitError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nope.gguf"))


def test_a_missing_gguf_package_says_how_to_install_it(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(GrpokitError, match="pip install gguf"):
        convert_gguf(f, tmp_path / "out")


def test_a_file_that_is_not_gguf_is_named(tmp_path):
    pytest.importorskip("gguf")
    f = tmp_path / "notes.gguf"
    f.write_text("just some text, not a model\n" * 10)
    with pytest.raises(GrpokitError, match="not a readable GGUF file"):
        convert_gguf(f, tmp_path / "out")


def test_an_unsupported_architecture_is_named(tmp_path):
    gguf = pytest.importorskip("gguf")
    f = tmp_path / "mamba2.gguf"
    writer = gguf.GGUFWriter(str(f), "mamba2")  # a header-only file: the architecture is all that is read
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GrpokitError, match="'mamba2' model, which transformers cannot read from GGUF; supported "
                                           "architectures: llama"):
        convert_gguf(f, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(GrpokitError, match="already exists"):
        convert_gguf(f, out)
    assert (out / "keep.txt").read_text() == "mine"
