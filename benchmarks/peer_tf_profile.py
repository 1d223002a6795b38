"""Per-op time of one training step of the official TensorFlow CW-VAE; run by hand, in the
TensorFlow environment that ``../shared/peers/README.md`` sets up, from the root of a
checkout of the official code (github.com/vaibhavsaxena11/cwvae):

    cd $PEERS/cwvae && TF_ENABLE_ONEDNN_OPTS=1 TF_USE_LEGACY_KERAS=1 \\
        $PEERS/tfvenv/bin/python <clockwork>/benchmarks/peer_tf_profile.py --batch 8

Builds the step as ``../shared/peers/tf_cwvae_train_step.py`` does (the official
``build_model`` and ``train.train_setup`` on random frames), runs warm-up steps, then one
step with a full trace, and sums each executed kernel's wall time by op type (the
``step_stats`` of the session's run metadata: ``Conv2DBackpropFilter``, ``_MklMatMul``, ...).
Kernels on the two inter-op threads overlap, so the sums can exceed the step's wall
time. The last line is a JSON object: the step's seconds and the seconds per op type.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import types

for name in ["imageio", "skimage", "skimage.metrics", "matplotlib", "matplotlib.pyplot",
             "tensorflow_datasets"]:
    module = types.ModuleType(name)  # plotting and eval imports the step never uses
    module.peak_signal_noise_ratio = module.structural_similarity = None
    sys.modules[name] = module
sys.modules["skimage"].metrics = sys.modules["skimage.metrics"]
sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402
import yaml  # noqa: E402

_yaml_load = yaml.load
yaml.load = lambda stream, Loader=yaml.SafeLoader: _yaml_load(stream, Loader=Loader)
sys.path.insert(0, os.getcwd())


def main() -> None:
    import tools
    import train
    from cwvae import build_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--config", default="configs/mmnist.yml")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()

    tf.disable_v2_behavior()
    scratch = tempfile.mkdtemp()
    cfg = tools.read_configs(args.config, "configs/base_config.yml", datadir=scratch,
                             logdir=scratch)
    cfg.batch_size, cfg.seq_len = args.batch, args.seq_len
    tf.set_random_seed(0)
    comps = build_model(cfg, open_loop=False)
    apply_grads, _, session, _ = train.train_setup(cfg, comps["meta"]["model"].loss)
    session.run(tf.global_variables_initializer())
    frames = np.random.default_rng(0).integers(
        0, 256, (args.batch, args.seq_len, 64, 64, cfg.channels), dtype=np.uint8) / 255.0
    feed = {comps["training"]["obs"]: frames.astype(np.float32)}
    for _ in range(args.warmup):
        session.run(apply_grads, feed_dict=feed)
    t0 = time.perf_counter()
    session.run(apply_grads, feed_dict=feed)
    plain_s = time.perf_counter() - t0

    options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE)
    meta = tf.RunMetadata()
    t0 = time.perf_counter()
    session.run(apply_grads, feed_dict=feed, options=options, run_metadata=meta)
    traced_s = time.perf_counter() - t0

    by_op: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for dev in meta.step_stats.dev_stats:
        for node in dev.node_stats:
            op = node.timeline_label.split("(")[0].split(" = ")[-1].strip() or node.node_name
            by_op[op] += node.all_end_rel_micros / 1e6
            count[op] += 1
    total = sum(by_op.values())
    print(f"TF {tf.__version__} batch {args.batch} x {args.seq_len}: step {plain_s:.3f} s "
          f"(traced {traced_s:.3f} s), kernel seconds summed {total:.3f}")
    for op, s in by_op.most_common(args.top):
        print(f"  {op:40s} {s:8.3f} s {s / total:6.1%}  ({count[op]} kernels)")
    print(json.dumps({"tf": tf.__version__, "config": args.config, "batch": args.batch,
                      "seq_len": args.seq_len, "step_s": round(plain_s, 4),
                      "traced_step_s": round(traced_s, 4), "kernel_s_sum": round(total, 4),
                      "by_op_s": {k: round(v, 4) for k, v in by_op.most_common()}}))


if __name__ == "__main__":
    main()
