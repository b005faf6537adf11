"""``fastmde synth``: render the synthetic NYU-like dataset into a real NYU file layout."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True,
                        help="output folder: new or empty (a folder holding files is refused, see --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the dataset an earlier fastmde synth wrote in --out (only once the new one is "
                             "complete; a folder holding other files is still refused)")
    parser.add_argument("--train", type=int, default=1000, help="training frames (default 1000)")
    parser.add_argument("--val", type=int, default=100, help="validation frames, from separate scenes (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--layout", choices=("frames", "labeled"), default="frames",
                        help="frames: train/<scene>/NNNNN.h5 + val/official/NNNNN.h5, read by fastmde train "
                             "--data-format frames --data OUT; labeled: nyu_depth_v2_labeled.mat + test_indices.txt, "
                             "read by --data-format labeled --data OUT (default: %(default)s)")
    parser.add_argument("--size", default="480x640", help="frame size HxW (default 480x640)")
    parser.add_argument("--frames-per-scene", type=int, default=4, help="views per training room (default 4)")
    parser.add_argument("--val-frames-per-scene", type=int, default=1,
                        help="views per held-out room (default 1: every validation frame is its own room)")
    parser.add_argument("--noise", action="store_true", help="Kinect-like depth noise and holes")


def run(args) -> int:
    import time

    from .._outputs import check_output_folder
    from .._text import parse_size
    from .synthetic import write_synthetic_dataset

    h, w = parse_size(args.size, what="--size", minimum=8)     # a ValueError: one line, exit 2
    for flag, value in (("--train", args.train), ("--val", args.val), ("--frames-per-scene", args.frames_per_scene),
                        ("--val-frames-per-scene", args.val_frames_per_scene)):
        if value < 1:     # fastmde train reads both splits; a split of no frame is not written
            raise ValueError(f"{flag} must be a positive number of frames, got {value}")
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {args.seed}")
    check_output_folder(args.out, "--out", "the dataset's folder")
    start = time.perf_counter()
    write_synthetic_dataset(args.out, train=args.train, val=args.val, seed=args.seed, layout=args.layout,
                            size=(h, w), frames_per_scene=args.frames_per_scene, noise=args.noise, progress=True,
                            val_frames_per_scene=args.val_frames_per_scene, overwrite=args.overwrite)
    n = args.train + args.val
    dt = time.perf_counter() - start
    print(f"wrote {n} frames ({args.layout} layout) to {args.out} in {dt:.1f} s ({n / max(dt, 1e-9):.1f} frames/s)")
    return 0
