"""Export ResNet50 (torchvision ImageNet weights) to ONNX in the tvclean cache.

Needs the torch extra (pip install 'tvclean[torch]') and internet for the weights
(https://download.pytorch.org/models/resnet50-11ad3fa6.pth, sha256-checked), or
--weights FILE for a local copy. --untrained exports random weights (tests).
Run: python models/export_resnet50.py [--weights FILE] [--out PATH] [--untrained]
"""

import argparse

from tvcore.nets.export import export_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="local copy of resnet50-11ad3fa6.pth")
    parser.add_argument("--out", help="output .onnx file or folder (default: the cache)")
    parser.add_argument("--untrained", action="store_true", help="random weights (for tests)")
    args = parser.parse_args()
    result = export_model("resnet50", out=args.out, pretrained=not args.untrained,
                          weights=args.weights)
    print(f"{result.path}\nsha256 {result.sha256}\nmax |onnx - torch| {result.max_abs_diff}")


if __name__ == "__main__":
    main()
