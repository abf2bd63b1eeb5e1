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


# ---- the papers' pretraining sets, in their official formats ----
AUDIOSET_CSV = '''# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
--ZhevVpy1s, 50.000, 60.000, "/m/012xff"
--aE2O5G5WE, 0.000, 10.000, "/m/03fwl,/m/04rlf,/m/09x0r"
-0BIyqJj9ZU, 30.000, 40.000, "/m/07rgt08"
'''


def test_audioset_builder_reads_the_released_segments_csv(tmp_path):
    from cmacc.data.manifest import from_audioset
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "--PJHxphWEs_30_40.mp4").write_bytes(b"x")  # a trimmed clip
    (tmp_path / "v" / "Y--ZhevVpy1s.wav").write_bytes(b"x")  # PANNs' naming
    (tmp_path / "v" / "--aE2O5G5WE.mkv").write_bytes(b"x")  # a whole video: the segment is kept
    csv_path = tmp_path / "balanced_train_segments.csv"
    csv_path.write_text(AUDIOSET_CSV)
    m, missing = from_audioset(csv_path, tmp_path / "v")
    got = {r.path.name: (r.label, r.split, r.start, r.end) for r in m.rows}
    assert got == {"--PJHxphWEs_30_40.mp4": ("/m/09x0r", "balanced_train_segments", None, None),
                   "Y--ZhevVpy1s.wav": ("/m/012xff", "balanced_train_segments", 50.0, 60.0),
                   "--aE2O5G5WE.mkv": ("/m/03fwl", "balanced_train_segments", 0.0, 10.0)}
    assert missing == [{"line": 7, "youtube_id": "-0BIyqJj9ZU", "start": 30.0, "end": 40.0, "labels": "/m/07rgt08",
                        "split": "balanced_train_segments"}]
    csv_path.write_text(AUDIOSET_CSV.replace('40.000, "/m/07rgt08"', '40.000'))
    with pytest.raises(ManifestError, match="line 7: expected YTID, start_seconds, end_seconds"):
        from_audioset(csv_path, tmp_path / "v")


def test_vggsound_builder_reads_the_released_csv(tmp_path):
    from cmacc.data.manifest import from_vggsound
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "---g-f_I2yQ_000001.mp4").write_bytes(b"x")
    (tmp_path / "v" / "--0PQM4-hqg.mp4").write_bytes(b"x")
    csv_path = tmp_path / "vggsound.csv"
    csv_path.write_text("---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,30,waterfall burbling,train\n"
                        "--56QUhyDQM,185,playing tennis,train\n")
    m, missing = from_vggsound(csv_path, tmp_path / "v")
    assert [(r.path.name, r.label, r.split, r.start, r.end) for r in m.rows] == [
        ("---g-f_I2yQ_000001.mp4", "people marching", "test", None, None),
        ("--0PQM4-hqg.mp4", "waterfall burbling", "train", 30.0, 40.0)]
    assert missing == [{"line": 3, "youtube_id": "--56QUhyDQM", "start": 185, "label": "playing tennis",
                        "split": "train"}]


KINETICS700_CSV = ("label,youtube_id,time_start,time_end,split\n"
                   "playing bagpipes,aaaaaaaaaaa,10,20,train\n"
                   "stomping grapes,bbbbbbbbbbb,0,10,train\n"
                   "abseiling,ccccccccccc,5,15,train\n"
                   "tap dancing,ddddddddddd,1,11,validate\n")


def test_kinetics700_and_kinetics_sound_builders(tmp_path):
    from cmacc.data.manifest import from_kinetics_sound, kinetics_sound_classes
    (tmp_path / "v").mkdir()
    for stem in ("aaaaaaaaaaa_000010_000020", "bbbbbbbbbbb_000000_000010", "ccccccccccc_000005_000015"):
        (tmp_path / "v" / f"{stem}.mp4").write_bytes(b"x")
    csv_path = tmp_path / "kinetics_700_train.csv"
    csv_path.write_text(KINETICS700_CSV)
    m, missing = from_kinetics(csv_path, tmp_path / "v")
    assert sorted(r.label for r in m.rows) == ["abseiling", "playing bagpipes", "stomping grapes"]
    assert [x["youtube_id"] for x in missing] == ["ddddddddddd"]
    names, source = kinetics_sound_classes()
    assert len(names) == 34 == len(set(names)) and "Look, Listen and Learn" in " ".join(source["notes"])
    ks, ks_missing, report = from_kinetics_sound(csv_path, tmp_path / "v")
    assert sorted(r.label for r in ks.rows) == ["playing bagpipes", "stomping grapes"]  # "stomping", renamed
    assert [x["label"] for x in ks_missing] == ["tap dancing"]
    assert report["classes"] == 34 and report["in_annotations"] == 3 and "typing" in report["absent"]


def test_cli_builders_report_counts_write_missing_rows_and_subsets(tmp_path, capsys):
    from cmacc.cli import main
    from cmacc.data.scan import ScanRecord, write_report
    (tmp_path / "v").mkdir()
    for i in range(6):
        (tmp_path / "v" / f"vid{i:08d}x_{i:06d}.mp4").write_bytes(b"x" * (i + 1))
    csv_path = tmp_path / "vggsound.csv"
    csv_path.write_text("".join(f"vid{i:08d}x,{i},class {i % 2},train\n" for i in range(8)))
    out = tmp_path / "vgg.csv"
    assert main(["manifest", "vggsound", str(tmp_path / "v"), "--annotations", str(csv_path), "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert "vggsound: 8 annotated, 6 found, 2 missing" in text and "data fingerprint " in text
    lines = (tmp_path / "vgg.missing.csv").read_text().splitlines()
    assert lines[0] == "line,youtube_id,start,label,split" and len(lines) == 3
    # a reproducible subset, of the files a scan found with audio
    records = [ScanRecord(path=str(tmp_path / "v" / f"vid{i:08d}x_{i:06d}.mp4"),
                          problems=[] if i % 3 else ["no-audio"], usable=bool(i % 3)) for i in range(6)]
    write_report(records, tmp_path / "scan.json")
    sub = tmp_path / "sub.csv"
    args = ["manifest", "vggsound", str(tmp_path / "v"), "--annotations", str(csv_path), "--out", str(sub),
            "--subset", "3", "--seed", "4", "--with-audio", str(tmp_path / "scan.json")]
    main(args)
    first = sub.read_text()
    main(args)
    assert sub.read_text() == first and len(read_manifest(sub)) == 3
    assert not {r.path.name for r in read_manifest(sub).rows} & {"vid00000000x_000000.mp4", "vid00000003x_000003.mp4"}
    capsys.readouterr()
    assert main(["manifest", "vggsound", str(tmp_path / "v"), "--annotations", str(csv_path), "--out", str(sub),
                 "--subset", "9"]) == 2
    assert "--subset 9: only 6 rows" in capsys.readouterr().err


def test_fingerprint_follows_content_not_location(tmp_path):
    import shutil
    from cmacc.data.fingerprint import manifest_digest
    for place in ("a", "b"):
        (tmp_path / place / "v").mkdir(parents=True)
        (tmp_path / place / "v" / "x.mp4").write_bytes(b"xx")
        (tmp_path / place / "v" / "y.mp4").write_bytes(b"yyy")
        (tmp_path / place / "m.csv").write_text("path,label,split\nv/y.mp4,dog,train\nv/x.mp4,cat,train\n")
    a, b = (manifest_digest(read_manifest(tmp_path / p / "m.csv")) for p in ("a", "b"))
    assert a == b and a["rows"] == 2 and a["classes"] == 2 and len(a["digest"]) == 64
    (tmp_path / "b" / "m.csv").write_text("path,label,split\nv/x.mp4,cat,train\nv/y.mp4,dog,train\n")
    assert manifest_digest(read_manifest(tmp_path / "b" / "m.csv")) == a  # row order is not content
    (tmp_path / "b" / "v" / "x.mp4").write_bytes(b"x")  # re-encoded: another size
    assert manifest_digest(read_manifest(tmp_path / "b" / "m.csv"))["digest"] != a["digest"]
    shutil.rmtree(tmp_path / "b" / "v")
    assert manifest_digest(read_manifest(tmp_path / "b" / "m.csv"))["digest"] != a["digest"]  # missing files
