"""The `mmfm` console script.

    mmfm serve runs/gpt_shakespeare/model runs/clip/model --host 127.0.0.1 --port 8000
    mmfm export runs/clip/model --format onnx --out runs/clip/onnx
"""
from __future__ import annotations

import argparse
import logging
import sys


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmfm", description="mmfm: serve or export saved model folders")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP API and a web page over model folders",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("folders", nargs="+", metavar="MODEL_DIR", help="saved GPT, CLIP or DiT folders")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=_positive_int, default=32,
                   help="sequences decoded together (1: one request at a time); texts/images per CLIP forward")
    s.add_argument("--max-body-mb", type=_positive_float, default=8.0, help="larger request bodies get a 413")
    s.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads (default: torch's)")
    e = sub.add_parser("export", help="the GPT forward, the ViT/CLIP image tower and the CLIP text tower as ONNX "
                                      "or torch.export programs", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("folder", metavar="MODEL_DIR")
    e.add_argument("--format", choices=("onnx", "torch-export"), default="onnx")
    e.add_argument("--out", required=True, help="folder for the exported files (created)")
    e.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="run each ONNX file in onnxruntime and compare with PyTorch")
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.command == "serve":
        import torch

        from .serve import serve

        if a.threads:
            torch.set_num_threads(a.threads)
        serve(a.folders, a.host, a.port, a.max_batch, a.max_body_mb)
        return 0
    from .serve.export import export

    for path in export(a.folder, a.format, a.out, check=a.check):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
