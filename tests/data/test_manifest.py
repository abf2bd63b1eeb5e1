"""Manifests: the CSV format and the dataset-layout builders."""
import pytest

from cmacc.data.manifest import (ManifestError, from_esc50, from_folder, from_hmdb51, from_kinetics,
                                 from_ucf101, read_manifest)
from conftest import shared_dir


def test_roundtrip_and_relative_paths(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("a.mp4", "b,c.mkv"):
        (tmp_path / "v" / name).write_bytes(b"x")
    f = tmp_path / "m.csv"
    f.write_text('path,label,split,start,end\nv/a.mp4,cat,train,1.5,4\n"v/b,c.mkv",,test,,\n')
    m = read_manifest(f)
    assert [r.path for r in m.rows] == [tmp_path / "v" / "a.mp4", tmp_path / "v" / "b,c.mkv"]
    assert (m.rows[0].label, m.rows[0].start, m.rows[0].end) == ("cat", 1.5, 4.0)
    assert m.rows[1].label is None and m.rows[1].split == "test"
    m.write(tmp_path / "again.csv")
    assert read_manifest(tmp_path / "again.csv").rows == m.rows


@pytest.mark.parametrize("text,match", [
    ("", "empty"),
    ("file,label\nx,y\n", "unknown column.*'file'"),
    ("label\ncat\n", "no 'path' column"),
    ("path,start\nx.mp4,abc\n", "line 2: column 'start' is not a number: 'abc'"),
    ("path,start,end\nx.mp4,5,3\n", "line 2: end 3.0 <= start 5.0"),
    ("path,label\nx.mp4\n", "line 2: 1 fields, header has 2"),
    ("path,label\n,cat\n", "line 2: empty 'path'"),
])
def test_bad_manifest_names_line_and_column(tmp_path, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ManifestError, match=match):
        read_manifest(f)


def test_folder_builder_labels_from_parent(tmp_path):
    for p in ("run/x.mp4", "swim/y.avi", "swim/z.txt", "top.webm"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b"x")
    m = from_folder(tmp_path)
    assert sorted((r.path.name, r.label) for r in m.rows) == [("top.webm", None), ("x.mp4", "run"), ("y.avi", "swim")]


def test_kinetics_builder(tmp_path):
    (tmp_path / "clips" / "train" / "abseiling").mkdir(parents=True)
    (tmp_path / "clips" / "train" / "abseiling" / "AAA_000010_000020.mp4").write_bytes(b"x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "BBB.mkv").write_bytes(b"x")
    ann = tmp_path / "k.csv"
    ann.write_text("label,youtube_id,time_start,time_end,split\nabseiling,AAA,10,20,train\n"
                   "juggling,BBB,30,40,val\nsinging,CCC,0,10,train\n")
    m, missing = from_kinetics(ann, tmp_path)
    assert [(r.path.name, r.label, r.split, r.start, r.end) for r in m.rows] == [
        ("AAA_000010_000020.mp4", "abseiling", "train", None, None), ("BBB.mkv", "juggling", "val", 30.0, 40.0)]
    assert missing == [{"line": 4, "youtube_id": "CCC", "label": "singing", "split": "train"}]


def test_ucf101_builder(tmp_path):
    (tmp_path / "UCF" / "ApplyLipstick").mkdir(parents=True)
    for n in ("v_ApplyLipstick_g01_c01.avi", "v_ApplyLipstick_g08_c01.avi"):
        (tmp_path / "UCF" / "ApplyLipstick" / n).write_bytes(b"x")
    sp = tmp_path / "splits"
    sp.mkdir()
    (sp / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n")
    (sp / "trainlist01.txt").write_text("ApplyLipstick/v_ApplyLipstick_g08_c01.avi 2\n")
    (sp / "testlist01.txt").write_text("ApplyLipstick/v_ApplyLipstick_g01_c01.avi\nApplyEyeMakeup/v_missing.avi\n")
    m, missing = from_ucf101(tmp_path / "UCF", sp, 1)
    assert [(r.path.name, r.label, r.split) for r in m.rows] == [
        ("v_ApplyLipstick_g08_c01.avi", "ApplyLipstick", "train"), ("v_ApplyLipstick_g01_c01.avi", "ApplyLipstick", "test")]
    assert len(missing) == 1 and missing[0]["line"] == 2
    (sp / "trainlist01.txt").write_text("Unknown/v.avi 3\n")
    with pytest.raises(ManifestError, match="trainlist01.txt line 1: class 'Unknown'"):
        from_ucf101(tmp_path / "UCF", sp, 1)


def test_hmdb51_builder(tmp_path):
    (tmp_path / "hmdb" / "brush_hair").mkdir(parents=True)
    for n in ("a.avi", "b.avi", "c.avi"):
        (tmp_path / "hmdb" / "brush_hair" / n).write_bytes(b"x")
    sp = tmp_path / "splits"
    sp.mkdir()
    (sp / "brush_hair_test_split1.txt").write_text("a.avi 1\nb.avi 2\nc.avi 0\n")
    m, missing = from_hmdb51(tmp_path / "hmdb", sp, 1)
    assert [(r.path.name, r.split) for r in m.rows] == [("a.avi", "train"), ("b.avi", "test")] and not missing
    (sp / "brush_hair_test_split1.txt").write_text("a.avi 7\n")
    with pytest.raises(ManifestError, match="line 1"):
        from_hmdb51(tmp_path / "hmdb", sp, 1)


def test_esc50_builder_on_shared_esc10():
    d = shared_dir() / "data" / "esc10"
    if not d.is_dir():
        pytest.skip("../shared/data/esc10 is absent")
    m, missing = from_esc50(d / "esc50.csv", d / "audio")
    assert len(m) == 80 and not missing and len(m.classes) == 10
    assert {r.split for r in m.rows} == {"fold4"}
