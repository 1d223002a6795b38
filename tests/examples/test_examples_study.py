"""The long-horizon study (examples/study.py) on its tiny preset, and its measures."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

import study
import trees
from clockwork import data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    study.main(["all", "--dir", str(root), "--preset", "tiny"])
    return root


def test_study_runs_every_stage_and_reports(tiny):
    summary = json.loads((tiny / "study.json").read_text())
    assert summary["preset"] == "tiny" and summary["horizon"] == 32
    assert set(summary["table"]) == {"cwvae3", "cwvae2", "rssm", "copy_last"}
    assert list(summary["table"]["rssm"]["psnr"]) == ["1-16", "17-32"]
    # The models differ as MODELS says: levels, and the tiny preset's cell sizes.
    configs = {name: study.Study(tiny, study.PRESETS["tiny"]).config(name) for name in study.MODELS}
    assert [configs[n].model.levels for n in ("cwvae3", "cwvae2", "rssm")] == [3, 2, 1]
    assert summary["parameters"]["cwvae3"] == study.parameter_count(configs["cwvae3"])
    for name in study.MODELS:
        curves = np.load(tiny / "eval" / name / "metrics.npz")["psnr"]
        assert curves.shape == (3, 1, 32)
        window = summary["table"][name]["psnr"]["1-16"]
        assert window["mean"] == pytest.approx(float(curves[:, 0, :16].mean()), rel=1e-6)
        result = summary["ablation"][name]
        assert (result["pairs"], result["frames"]) == (3, 8)
        assert len(result["swapped"]["digit_is_b_per_frame"]) == 8
    assert set(summary["times_s"]) == {"train", "classifier", "evaluate", "ablation"}
    tables = (tiny / "tables.md").read_text()
    assert "| CW-VAE, 3 levels | " + f"{summary['parameters']['cwvae3']:,}" in tables
    assert "| copy last frame |  | " in tables
    image = (tiny / "study_curves.png").read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_rerun_redoes_nothing_done(tiny):
    before = {p: p.stat().st_mtime_ns for p in (tiny / "classifier.npz", tiny / "ablation.json",
                                                  tiny / "eval" / "rssm" / "summary.json")}
    s = study.Study(tiny, study.PRESETS["tiny"], "tiny")
    for stage in ("train", "classifier", "evaluate", "ablation"):
        s.run_stage(stage)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_study_folder_of_other_sizes_is_refused(tiny):
    with pytest.raises(ValueError, match="holds a study of other sizes"):
        study.Study(tiny, study.PRESETS["full"])


def test_study_folder_of_other_sizes_is_one_usage_line(tiny, capsys):
    with pytest.raises(SystemExit) as stopped:
        study.main(["train", "--dir", str(tiny)])
    assert stopped.value.code == 2
    assert "holds a study of other sizes" in capsys.readouterr().err.splitlines()[-1]


def test_study_stopped_by_a_signal_is_one_line_and_its_exit_code(tmp_path, monkeypatch, capsys):
    import interrupts

    def stopped_stage(self, stage, **_):
        raise interrupts.Interrupted(15, "SIGTERM: stopped at step 7 of 10; checkpoint written")

    monkeypatch.setattr(study.Study, "run_stage", stopped_stage)
    with pytest.raises(SystemExit) as stopped:
        study.main(["train", "--dir", str(tmp_path), "--preset", "tiny"])
    assert stopped.value.code == 143
    assert capsys.readouterr().err == "SIGTERM: stopped at step 7 of 10; checkpoint written\n"


def test_study_swap_changes_only_the_top_level(tiny):
    s = study.Study(tiny, study.PRESETS["tiny"], "tiny")
    videos, labels = s.test_set(s.config("cwvae3"), 24)
    frames = np.asarray(data.to_float(videos))
    key = jax.random.key(3)
    for name in study.MODELS:
        graphdef, params = nnx.split(study.load_model(tiny / name, s.config(name)))
        own, same = study._swapped_rollouts(graphdef, params, frames[:2, :16], frames[:2, :16], 8, key)
        np.testing.assert_array_equal(np.asarray(own), np.asarray(same))  # B = A: no change
        own, swapped = study._swapped_rollouts(graphdef, params, frames[:2, :16], frames[1:3, :16], 8, key)
        assert not np.allclose(np.asarray(own), np.asarray(swapped))
        if name == "rssm":  # one level: the swap takes all of B's state
            donor_own, _ = study._swapped_rollouts(graphdef, params, frames[1:3, :16], frames[:2, :16], 8, key)
            np.testing.assert_array_equal(np.asarray(swapped), np.asarray(donor_own))


def test_study_donors_take_the_next_video_of_another_digit():
    np.testing.assert_array_equal(study.donors(np.array([1, 1, 2, 3, 3])), [2, 2, 3, 0, 0])
    np.testing.assert_array_equal(study.donors(np.array([4, 4])), [0, 1])  # none other: itself


def test_study_centroids_and_confidence_intervals_by_hand():
    frames = np.zeros((2, 8, 10, 1), np.float32)
    frames[0, 2, 2] = frames[0, 4, 6] = 1.0
    frames[1, 7, 1] = 0.5
    np.testing.assert_allclose(study.centroids(frames), [[3.0, 4.0], [7.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(study.centroids(np.zeros((8, 10, 1))), [3.5, 4.5])  # blank: centre
    ci = study.mean_and_ci(np.array([[1.0, 3.0], [3.0, 5.0], [5.0, 7.0]]))
    assert ci["mean"] == 4.0 and ci["ci95"] == pytest.approx(1.96 * 2.0 / np.sqrt(3.0))
    assert study.horizon_windows(512) == [(0, 16), (16, 128), (128, 512)]
    assert study.horizon_windows(32) == [(0, 16), (16, 32)]
    assert study.horizon_windows(10) == [(0, 10)]


def test_study_classifier_round_trips_and_names_a_wrong_file(tiny, tmp_path):
    path = tiny / "classifier.npz"
    classify = study.load_classifier(path, (32, 32))
    frames, _ = study.digit_frames(5, "test", (32, 32), seed=7)
    batch = np.asarray(data.to_float(frames))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: study.DigitClassifier((32, 32), rngs=nnx.Rngs(0))))
    params = trees.load(path, abstract)
    direct = np.argmax(np.asarray(nnx.merge(graphdef, params)(batch)), axis=-1)
    np.testing.assert_array_equal(classify(batch[None])[0], direct)  # (1, 5) in, (1, 5) out
    with pytest.raises(ValueError, match=r"classifier.npz does not hold .* \(saved from another model\?\)"):
        study.load_classifier(path, (64, 64))
