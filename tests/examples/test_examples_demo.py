"""examples/demo.py: trains the demo preset, scores it against two baselines, draws it."""

import json

import numpy as np
from examples_testlib import cli, demo_tiny
from PIL import Image

import demo


def test_demo_writes_the_three_pairs_and_the_picture(tmp_path, capsys):
    run, picture = tmp_path / "run", tmp_path / "picture.png"
    settings = demo_tiny(num_steps=2, log_every=1, ckpt_every=2, video_every=0)
    demo.main(["--logdir", str(run), "--picture", str(picture), "--num-examples", "3",
               "--open-loop-ctx", "2", "--predict", "4", *cli(settings)])
    result = json.loads((run / "demo_summary.json").read_text())
    assert (result["step"], result["sequences"], result["context_frames"],
            result["predicted_frames"]) == (2, 3, 2, 4)
    summary = json.loads((run / "eval" / "demo" / "summary.json").read_text())
    assert result["model"] == {"psnr": summary["psnr"], "ssim": summary["ssim"]}
    # The blank baseline by hand: PSNR of black frames is 10 log10(1 / mean(truth^2)).
    truths = [np.load(run / "eval" / "demo" / "examples" / f"ex{i:04d}.npz")["truth"] / 255.0
              for i in range(3)]
    blank = np.mean([10 * np.log10(1 / np.mean(t[k] ** 2)) for t in truths for k in range(4)])
    np.testing.assert_allclose(result["blank_frame"]["psnr"], blank, rtol=1e-5)
    assert set(result["copy_last_frame"]) == {"psnr", "ssim"}

    out = capsys.readouterr().out
    table = out[out.index("open-loop prediction after 2 steps"):].splitlines()
    assert table[0] == ("open-loop prediction after 2 steps: the first 4 predicted frames of "
                        "3 validation sequences (2 context frames)")
    assert table[2].split() == ["model", f"{summary['psnr']:.2f}", f"{summary['ssim']:.4f}"]
    assert table[3].split()[:3] == ["copy", "last", "frame"]
    beats = all(result["model"][m] > result[b][m] for m in ("psnr", "ssim")
                for b in ("copy_last_frame", "blank_frame"))
    assert table[5].strip().startswith("the model beats" if beats else "the model does not")
    # Two rows (truth, model) per sequence, 6 frames each, each frame 64 + 2 * 2 border
    # pixels, drawn at twice the size.
    assert Image.open(picture).size == (6 * 68 * 2, 3 * 2 * 68 * 2)
