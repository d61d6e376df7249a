"""Export a trained network as a small fp16 state_dict that `load_weights` (and `teacher.checkpoint=`) reads.

    python scripts/export_teacher.py <run>/checkpoints/best-....ckpt resnet32x4 100 weights/cifar100/resnet32x4.pth

Prints the file's size and sha256 (write both into the README beside the weights).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from sdd_lightning.models import build_model, load_weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a .ckpt of a distill=none run (or any file load_weights reads)")
    parser.add_argument("arch", help="registered architecture name, e.g. resnet32x4")
    parser.add_argument("num_classes", type=int)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    model = load_weights(build_model(args.arch, args.num_classes), args.checkpoint)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    # the fp16 file must load back into the fp32 network unchanged up to fp16 rounding
    check = load_weights(build_model(args.arch, args.num_classes), args.out)
    for key, value in check.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key].to(value.dtype), rtol=1e-3, atol=1e-3)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB, sha256 {digest}")


if __name__ == "__main__":
    main()
