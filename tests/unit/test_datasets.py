import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ser_worker.datasets import (
    NOT_AUDIO,
    UNRECOGNISED,
    ClipLabel,
    LabelledClip,
    ManifestEntry,
    crema_d_speaker_splits,
    crema_d_split,
    find_audio_files,
    label_for_path,
    load_dataset,
    parse_crema_d,
    parse_ravdess,
    parse_tess,
    random_split,
    read_crema_d_manifest,
    speaker_folds,
    speaker_split,
    verify_crema_d,
)
from ser_worker.labels import EMOTIONS

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
RAVDESS = SHARED_DATA / "ravdess"
TESS = SHARED_DATA / "tess"
needs_real_data = pytest.mark.skipif(
    not (RAVDESS.is_dir() and TESS.is_dir()), reason="real corpora not in ../shared/data"
)


def _clip(emotion: str, speaker: str | None, n: int = 0) -> LabelledClip:
    return LabelledClip(Path(f"{speaker}_{emotion}_{n}.wav"), emotion, speaker, "test")


def _clips(speakers: list[str], per_emotion: int) -> list[LabelledClip]:
    return [
        _clip(emotion, speaker, n)
        for speaker in speakers
        for emotion in EMOTIONS
        for n in range(per_emotion)
    ]


@pytest.fixture(scope="module")
def ravdess():
    return load_dataset(RAVDESS)


@pytest.fixture(scope="module")
def tess():
    return load_dataset(TESS)


def test_module_imports_no_audio_or_ml_libraries():
    code = (
        "import sys, ser_worker.datasets; "
        "print(sorted({'librosa', 'keras', 'soundfile', 'tensorflow', 'soxr'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- name parsers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1001_DFA_ANG_XX.wav", ClipLabel("ANG", "crema-d:1001", "crema-d", None)),
        ("1091_WSI_SAD_LO.flac", ClipLabel("SAD", "crema-d:1091", "crema-d", None)),
        ("1076_MTI_NEU_XX.mp3", ClipLabel("NEU", "crema-d:1076", "crema-d", None)),
    ],
)
def test_crema_d_names(name, expected):
    assert parse_crema_d(name) == expected
    assert label_for_path(Path("any", name)) == expected


@pytest.mark.parametrize(
    "name", ["1001_DFA_CAL_XX.wav", "1001_dfa_ang_xx.wav", "1001_DFA_ANG.wav", "101_DFA_ANG_XX.wav"]
)
def test_crema_d_rejects_near_misses(name):
    assert parse_crema_d(name).emotion is None
    assert parse_crema_d(name).corpus is None


@pytest.mark.parametrize(
    ("name", "emotion"),
    [
        ("03-01-01-01-01-01-01.flac", "NEU"),
        ("03-01-03-02-02-01-07.wav", "HAP"),
        ("03-01-04-01-01-02-20.flac", "SAD"),
        ("03-01-05-02-01-01-12.flac", "ANG"),
        ("03-01-06-01-02-02-24.ogg", "FEA"),
        ("03-01-07-02-01-01-09.flac", "DIS"),
    ],
)
def test_ravdess_names(name, emotion):
    actor = name.split(".")[0][-2:]
    assert parse_ravdess(name) == ClipLabel(emotion, f"ravdess:{actor}", "ravdess", None)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("03-01-02-01-01-01-03.flac", "ravdess label 'calm' has no CREMA-D class"),
        ("03-01-08-02-02-02-03.flac", "ravdess label 'surprised' has no CREMA-D class"),
        ("03-02-05-01-01-01-03.wav", "ravdess song (vocal channel 02), not speech"),
        ("01-01-05-01-01-01-03.wav", "ravdess modality 01 is not audio-only"),
    ],
)
def test_ravdess_skips_keep_the_speaker_and_say_why(name, reason):
    for label in (parse_ravdess(name), label_for_path(Path("angry", name))):
        assert label == ClipLabel(None, "ravdess:03", "ravdess", reason)


@pytest.mark.parametrize(
    "name", ["03-01-09-01-01-01-01.wav", "03-01-05-01-01-01-25.wav", "03-01-05-01-01-01.wav"]
)
def test_ravdess_rejects_out_of_range_fields(name):
    assert parse_ravdess(name).corpus is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("OAF_angry/OAF_back_angry.flac", ClipLabel("ANG", "tess:OAF", "tess", None)),
        ("OAF_Fear/OAF_bar_fear.flac", ClipLabel("FEA", "tess:OAF", "tess", None)),
        ("OAF_neutral/OA_bite_neutral.flac", ClipLabel("NEU", "tess:OAF", "tess", None)),
        ("YAF_disgust/YAF_dog_Disgust.wav", ClipLabel("DIS", "tess:YAF", "tess", None)),
        ("x/YAF_back_HAPPY.mp3", ClipLabel("HAP", "tess:YAF", "tess", None)),
        ("OAF_Sad/OAF_back_sad.flac", ClipLabel("SAD", "tess:OAF", "tess", None)),
    ],
)
def test_tess_names(path, expected):
    assert parse_tess(path) == expected
    assert label_for_path(path) == expected


@pytest.mark.parametrize(
    ("path", "speaker"),
    [
        ("OAF_Pleasant_surprise/OAF_back_ps.flac", "tess:OAF"),
        ("YAF_pleasant_surprised/YAF_bar_ps.flac", "tess:YAF"),
    ],
)
def test_tess_pleasant_surprise_is_skipped(path, speaker):
    reason = "tess label 'ps' (pleasant surprise) has no CREMA-D class"
    assert label_for_path(path) == ClipLabel(None, speaker, "tess", reason)


@pytest.mark.parametrize("name", ["ZAF_back_angry.wav", "OAF_angry.wav", "OAF_back_calm.wav"])
def test_tess_rejects_other_names(name):
    assert parse_tess(name).corpus is None


@pytest.mark.parametrize(
    ("folder", "emotion"),
    [
        ("angry", "ANG"),
        ("Anger", "ANG"),
        ("ANG", "ANG"),
        ("disgust", "DIS"),
        ("dis", "DIS"),
        ("Fear", "FEA"),
        ("fearful", "FEA"),
        ("fea", "FEA"),
        ("happy", "HAP"),
        ("Happiness", "HAP"),
        ("hap", "HAP"),
        ("neutral", "NEU"),
        ("NEU", "NEU"),
        ("sad", "SAD"),
        ("SADNESS", "SAD"),
    ],
)
def test_folder_names(folder, emotion):
    expected = ClipLabel(emotion, None, "folder", None)
    assert label_for_path(Path("data", folder, "take 1.wav"), "folder") == expected
    assert label_for_path(Path("data", folder, "take 1.wav")) == expected


@pytest.mark.parametrize("folder", ["calm", "Surprise", "pleasant surprise", "boredom"])
def test_folder_emotions_without_a_crema_d_class_are_skipped(folder):
    label = label_for_path(Path("data", folder, "a.wav"))
    assert label.emotion is None
    assert label.skip_reason is not None and "has no CREMA-D class" in label.skip_reason


def test_auto_never_guesses():
    assert label_for_path("clips/my_recording.wav") == ClipLabel(None, None, None, UNRECOGNISED)
    assert label_for_path("Actor_01/03-01-05-01-01-01.wav").emotion is None
    folder = label_for_path("clips/my_recording.wav", "folder")
    assert folder == ClipLabel(None, None, None, "folder label 'clips' is not an emotion")


def test_explicit_scheme_uses_only_its_parser():
    assert label_for_path("happy/1001_DFA_ANG_XX.wav", "folder").emotion == "HAP"
    assert label_for_path("happy/1001_DFA_ANG_XX.wav", "ravdess").emotion is None
    assert label_for_path("happy/1001_DFA_ANG_XX.wav", "crema-d").emotion == "ANG"


def test_none_scheme_and_non_audio_and_bad_schemes():
    assert label_for_path("angry/1001_DFA_ANG_XX.wav", "none") == ClipLabel(None, None, None, None)
    assert label_for_path("angry/1001_DFA_ANG_XX.txt") == ClipLabel(None, None, None, NOT_AUDIO)
    assert label_for_path("angry/1001_DFA_ANG_XX.WAV").emotion == "ANG"
    with pytest.raises(ValueError, match="unknown labelling scheme"):
        label_for_path("a.wav", "emodb")
    with pytest.raises(ValueError, match="load_dataset"):
        label_for_path("a.wav", "csv")


# --- real corpora ---------------------------------------------------------------------------


@needs_real_data
def test_real_ravdess(ravdess):
    summary = ravdess.summary()
    assert summary["clips"] == 880
    assert summary["emotions"] == {
        "ANG": 160,
        "DIS": 160,
        "FEA": 160,
        "HAP": 160,
        "NEU": 80,
        "SAD": 160,
    }
    assert summary["corpora"] == {"ravdess": 880}
    assert summary["speakers"] == {f"ravdess:{n:02d}": 44 for n in range(1, 21)}
    assert ravdess.skipped == Counter(
        {
            "ravdess label 'calm' has no CREMA-D class": 160,
            "ravdess label 'surprised' has no CREMA-D class": 160,
        }
    )
    # The actor in the name must agree with the folder the corpus filed it under.
    assert all(clip.path.parent.name[-2:] == clip.speaker[-2:] for clip in ravdess.clips)


@needs_real_data
def test_real_tess(tess):
    summary = tess.summary()
    assert summary["clips"] == 2400
    assert summary["emotions"] == dict.fromkeys(EMOTIONS, 400)
    assert summary["speakers"] == {"tess:OAF": 1200, "tess:YAF": 1200}
    assert tess.skipped == Counter(
        {"tess label 'ps' (pleasant surprise) has no CREMA-D class": 400}
    )
    names = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral"}
    for clip in tess.clips:
        folder = clip.path.parent.name.lower()
        assert folder.startswith(clip.speaker.removeprefix("tess:").lower())
        assert folder.endswith(names.get(clip.emotion, "sad"))


# --- walking and layouts --------------------------------------------------------------------


def _touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_find_audio_files(tmp_path):
    wanted = [
        _touch(tmp_path / "a" / "b" / "one.WAV"),
        _touch(tmp_path / "a" / "two.flac"),
        _touch(tmp_path / "three.mp3"),
        _touch(tmp_path / "z" / "four.ogg"),
    ]
    others = [_touch(tmp_path / "a" / "notes.txt"), _touch(tmp_path / "a" / "._two.flac")]
    _touch(tmp_path / ".git" / "objects" / "x.wav")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    audio, skipped = find_audio_files(tmp_path)
    assert audio == sorted(wanted)
    assert skipped == sorted(others)
    assert find_audio_files(wanted[0]) == ([wanted[0]], [])
    assert find_audio_files(others[0]) == ([], [others[0]])
    with pytest.raises(FileNotFoundError):
        find_audio_files(tmp_path / "absent")


def test_folder_layout(tmp_path):
    for i in range(3):
        _touch(tmp_path / "Angry" / f"a{i}.wav")
        _touch(tmp_path / "calm" / f"c{i}.wav")
    _touch(tmp_path / "sad" / "s.flac")
    _touch(tmp_path / "misc" / "m.wav")
    _touch(tmp_path / "sad" / "readme.txt")
    dataset = load_dataset(tmp_path, "folder")
    assert Counter(clip.emotion for clip in dataset.clips) == {"ANG": 3, "SAD": 1}
    assert {(clip.speaker, clip.corpus) for clip in dataset.clips} == {(None, "folder")}
    assert dataset.skipped == Counter(
        {
            "folder label 'calm' has no CREMA-D class": 3,
            "folder label 'misc' is not an emotion": 1,
            NOT_AUDIO: 1,
        }
    )
    auto = load_dataset(tmp_path)
    assert auto.clips == dataset.clips
    assert auto.skipped[UNRECOGNISED] == 1


def _write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    return path


def test_csv_layout(tmp_path):
    a = _touch(tmp_path / "audio" / "a.wav")
    b = _touch(tmp_path / "audio" / "b.flac")
    _touch(tmp_path / "audio" / "c.wav")
    _touch(tmp_path / "audio" / "d.wav")
    table = _write_csv(
        tmp_path / "labels.csv",
        [
            "Path, Label ,speaker",
            "audio/a.wav,Angry,spk1",
            "audio/b.flac,sad,",
            "",
            "audio/c.wav,calm,spk2",
            "audio/d.wav,sleepy,spk2",
            "audio/missing.wav,happy,spk3",
            "audio/a.wav,angry,spk1",
            "notes.txt,happy,spk1",
        ],
    )
    _write_csv(tmp_path / "summaryTable.csv", ["FileName,VoiceVote", "x,ANG"])
    (tmp_path / "latin1.csv").write_bytes("path,label\nJos\xe9.wav,happy\n".encode("latin-1"))
    expected = [LabelledClip(a, "ANG", "spk1", "csv"), LabelledClip(b, "SAD", None, "csv")]
    skipped = Counter(
        {
            "csv label 'calm' has no CREMA-D class": 1,
            "csv label 'sleepy' is not an emotion": 1,
            "file listed in CSV is missing": 1,
            "duplicate CSV row": 1,
            NOT_AUDIO: 1,
        }
    )
    for dataset in (load_dataset(tmp_path), load_dataset(tmp_path, "csv"), load_dataset(table)):
        assert dataset.clips == expected
        assert dataset.skipped == skipped
    # An explicit name scheme ignores the CSV and labels from names instead.
    assert load_dataset(tmp_path, "folder").clips == []


def test_csv_errors(tmp_path):
    _touch(tmp_path / "a.wav")
    with pytest.raises(ValueError, match="no CSV"):
        load_dataset(tmp_path, "csv")
    _write_csv(tmp_path / "one.csv", ["path,label", "a.wav,angry"])
    _write_csv(tmp_path / "two.csv", ["path,label", "a.wav,sad"])
    with pytest.raises(ValueError, match="several label CSVs"):
        load_dataset(tmp_path)
    with pytest.raises(ValueError, match="scheme 'none'"):
        load_dataset(tmp_path, "none")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "absent")


# --- splits ---------------------------------------------------------------------------------


def _assert_partition(split, n: int) -> None:
    parts = [set(split.train), set(split.val), set(split.test)]
    assert sum(map(len, parts)) == n
    assert set().union(*parts) == set(range(n))


def _speakers_of(clips, indices) -> set:
    return {clips[i].speaker for i in indices}


def test_random_split_is_stratified_and_deterministic():
    clips = _clips(["s1", "s2"], 25)[:-10]  # SAD is smaller than the other classes
    split = random_split(clips, seed=3)
    _assert_partition(split, len(clips))
    for emotion in EMOTIONS:
        members = {i for i, clip in enumerate(clips) if clip.emotion == emotion}
        assert len(members & set(split.test)) == round(len(members) * 0.2)
        assert len(members & set(split.val)) == round(len(members) * 0.1)
    assert random_split(clips, seed=3) == split
    assert random_split(clips, seed=4).test != split.test
    assert split.protocol == "random"
    json.dumps(split.to_dict())
    with pytest.raises(ValueError):
        random_split(clips, test_fraction=0.6, val_fraction=0.5)
    with pytest.raises(ValueError):
        random_split([])


def test_speaker_split_holds_out_speakers():
    speakers = [f"p{n:02d}" for n in range(20)]
    clips = _clips(speakers, 2)
    split = speaker_split(clips, seed=1)
    _assert_partition(split, len(clips))
    train, val, test = (_speakers_of(clips, part) for part in (split.train, split.val, split.test))
    assert len(test) == 4 and len(val) == 2 and len(train) == 14
    assert not (train & val or train & test or val & test)
    assert set(split.test_speakers) == test and set(split.val_speakers) == val
    assert set(split.train_speakers) == train
    assert split.to_dict()["test_speakers"] == sorted(test)
    assert speaker_split(clips, seed=1) == split
    assert speaker_split(clips, seed=2).test_speakers != split.test_speakers


def test_speaker_split_with_chosen_test_speakers():
    clips = _clips(["a", "b", "c", "d", "e"], 3)
    split = speaker_split(clips, test_speakers=["c"])
    assert split.test_speakers == ("c",)
    assert _speakers_of(clips, split.test) == {"c"}
    assert len(split.val_speakers) == 1 and "c" not in split.train_speakers
    with pytest.raises(ValueError, match="not in the clips"):
        speaker_split(clips, test_speakers=["z"])
    with pytest.raises(ValueError, match="not all"):
        speaker_split(clips, test_speakers=["a", "b", "c", "d", "e"])


@needs_real_data
def test_tess_speaker_split_carves_validation_from_clips(tess):
    clips = tess.clips
    split = speaker_split(clips)
    _assert_partition(split, len(clips))
    assert len(split.test_speakers) == 1
    assert _speakers_of(clips, split.test) == set(split.test_speakers)
    train_speaker = _speakers_of(clips, split.train)
    assert train_speaker == _speakers_of(clips, split.val) == set(split.train_speakers)
    assert split.val_speakers == ()
    assert "clip-level carve" in split.description
    per_emotion = Counter(clips[i].emotion for i in split.val)
    assert per_emotion == dict.fromkeys(EMOTIONS, 40)  # 10% of 2400 clips, from one speaker


def test_speaker_split_needs_known_speakers():
    with pytest.raises(ValueError, match="have none"):
        speaker_split(_clips(["a", "b"], 2) + [_clip("ANG", None)])
    with pytest.raises(ValueError, match="at least 2 speakers"):
        speaker_split(_clips(["a"], 5))


def test_speaker_folds_cover_every_speaker_once():
    speakers = [f"ravdess:{n:02d}" for n in range(1, 21)]
    clips = _clips(speakers, 2)
    folds = speaker_folds(clips, 5, seed=7)
    assert len(folds) == 5
    tested = Counter(speaker for fold in folds for speaker in fold.test_speakers)
    assert tested == dict.fromkeys(speakers, 1)
    for fold in folds:
        _assert_partition(fold, len(clips))
        assert len(fold.test_speakers) == 4
        train, val, test = (_speakers_of(clips, part) for part in (fold.train, fold.val, fold.test))
        assert not (train & val or train & test or val & test)
        assert fold.protocol == "speaker-fold"
    assert speaker_folds(clips, 5, seed=7) == folds
    with pytest.raises(ValueError, match="n_folds"):
        speaker_folds(clips, 21)


# --- CREMA-D --------------------------------------------------------------------------------


def test_shipped_crema_d_metadata():
    manifest = read_crema_d_manifest()
    assert len(manifest) == 7442
    labels = [parse_crema_d(name) for name in manifest]
    assert all(label.emotion in EMOTIONS for label in labels)
    assert all(len(entry.sha256) == 64 and entry.size_bytes > 0 for entry in manifest.values())
    parts = crema_d_speaker_splits()
    assert {part: len(actors) for part, actors in parts.items()} == {
        "train": 56,
        "val": 18,
        "test": 17,
    }
    assert set().union(*parts.values()) == {label.speaker for label in labels}


def test_crema_d_split_follows_the_shipped_actor_lists():
    clips = [
        LabelledClip(Path(name), label.emotion, label.speaker, "crema-d")
        for name in read_crema_d_manifest()
        for label in [parse_crema_d(name)]
    ]
    split = crema_d_split(clips)
    _assert_partition(split, len(clips))
    parts = crema_d_speaker_splits()
    for side, indices in (("train", split.train), ("val", split.val), ("test", split.test)):
        assert _speakers_of(clips, indices) == set(parts[side])
    assert split.to_dict()["test_speakers"] == sorted(parts["test"])
    with pytest.raises(ValueError, match="CREMA-D clips only"):
        crema_d_split(clips + [_clip("ANG", "ravdess:01")])


def test_verify_crema_d(tmp_path):
    good, bad = b"RIFF good clip", b"RIFF bad  clip"
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(
        "filename\tsha256\tsize_bytes\n"
        f"1001_DFA_ANG_XX.wav\t{hashlib.sha256(good).hexdigest()}\t{len(good)}\n"
        f"1001_DFA_DIS_XX.wav\t{hashlib.sha256(good).hexdigest()}\t{len(good)}\n"
        f"1001_DFA_FEA_XX.wav\t{hashlib.sha256(good).hexdigest()}\t{len(good) + 1}\n"
        f"1002_DFA_ANG_XX.wav\t{hashlib.sha256(good).hexdigest()}\t{len(good)}\n"
    )
    root = tmp_path / "AudioWAV"
    _touch(root / "1001_DFA_ANG_XX.wav", good)
    _touch(root / "1001_DFA_DIS_XX.wav", bad)  # same size, different bytes
    _touch(root / "1001_DFA_FEA_XX.wav", good)  # wrong size
    _touch(root / "1092_DFA_ANG_XX.wav", good)
    _touch(root / "copy" / "1001_DFA_ANG_XX.wav", good)
    _touch(root / "README.txt", b"not audio, not checked")
    report = verify_crema_d(root, manifest)
    assert report.missing == ["1002_DFA_ANG_XX.wav"]
    assert report.corrupted == ["1001_DFA_DIS_XX.wav", "1001_DFA_FEA_XX.wav"]
    assert report.extra == ["1092_DFA_ANG_XX.wav", "copy/1001_DFA_ANG_XX.wav"]
    assert report.checked == 3
    assert not report.ok

    entry = ManifestEntry(hashlib.sha256(good).hexdigest(), len(good))
    clean = verify_crema_d(root / "1001_DFA_ANG_XX.wav", {"1001_DFA_ANG_XX.wav": entry})
    assert clean.ok and clean.checked == 1


def test_verify_crema_d_against_the_shipped_manifest_reports_everything_missing(tmp_path):
    report = verify_crema_d(tmp_path)
    assert len(report.missing) == 7442 and report.checked == 0 and not report.ok
